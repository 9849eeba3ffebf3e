package api

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// roleAnonymous is a TLS client without a certificate.
const roleAnonymous = "anonymous"

// methodRoles is the authorization table: every RPC names the roles that may
// call it. A method missing here is denied to everyone.
var methodRoles = map[string][]string{
	healthpb.Health_Check_FullMethodName: {roleAnonymous, pki.RoleDevice, pki.RoleGateway, pki.RoleAdmin},
	healthpb.Health_Watch_FullMethodName: {roleAnonymous, pki.RoleDevice, pki.RoleGateway, pki.RoleAdmin},
	healthpb.Health_List_FullMethodName:  {roleAnonymous, pki.RoleDevice, pki.RoleGateway, pki.RoleAdmin},
	// Reflection lets grpcurl and similar tools discover the API.
	reflectionpb.ServerReflection_ServerReflectionInfo_FullMethodName: {pki.RoleGateway, pki.RoleAdmin},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo":  {pki.RoleGateway, pki.RoleAdmin},
	// The Envoy ext_authz server (collector/gatewayfront) answers gateways.
	"/envoy.service.auth.v3.Authorization/Check":                   {pki.RoleGateway},
	posturev1.EnrollmentService_Enroll_FullMethodName:              {roleAnonymous},
	posturev1.ReportService_StreamReports_FullMethodName:           {pki.RoleDevice},
	posturev1.ReportService_RenewCertificate_FullMethodName:        {pki.RoleDevice},
	posturev1.ReportService_IssueBrowserCertificate_FullMethodName: {pki.RoleDevice},
	posturev1.GatewayService_CheckAccess_FullMethodName:            {pki.RoleGateway, pki.RoleAdmin},
	posturev1.GatewayService_GetDevicePosture_FullMethodName:       {pki.RoleGateway, pki.RoleAdmin},
	posturev1.GatewayService_WatchPosture_FullMethodName:           {pki.RoleGateway, pki.RoleAdmin},
	posturev1.AdminService_CreateEnrollmentToken_FullMethodName:    {pki.RoleAdmin},
	posturev1.AdminService_ListDevices_FullMethodName:              {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_GetDevice_FullMethodName:                {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_RevokeDevice_FullMethodName:             {pki.RoleAdmin},
	posturev1.AdminService_IssueGatewayCertificate_FullMethodName:  {pki.RoleAdmin},
	posturev1.AdminService_ApproveDevice_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_PreregisterEK_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_ReloadPolicy_FullMethodName:             {pki.RoleAdmin},
	posturev1.AdminService_DiffPolicy_FullMethodName:               {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_ListDecisions_FullMethodName:            {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_GetStats_FullMethodName:                 {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_ListGateways_FullMethodName:             {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_RevokeGateway_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_ListReplicas_FullMethodName:             {pki.RoleAdmin, roleViewer},
	posturev1.AdminService_BindDeviceUser_FullMethodName:           {pki.RoleAdmin},
	posturev1.AdminService_UnbindDeviceUser_FullMethodName:         {pki.RoleAdmin},
	posturev1.AdminService_AddSSFReceiver_FullMethodName:           {pki.RoleAdmin},
	posturev1.AdminService_ListSSFReceivers_FullMethodName:         {pki.RoleAdmin},
	posturev1.AdminService_RemoveSSFReceiver_FullMethodName:        {pki.RoleAdmin},
	posturev1.AdminService_CreateSSFStream_FullMethodName:          {pki.RoleAdmin},
	posturev1.AdminService_ListSSFStreams_FullMethodName:           {pki.RoleAdmin},
	posturev1.AdminService_DeleteSSFStream_FullMethodName:          {pki.RoleAdmin},
	// Enrollment tokens are admins' alone, listing included: a viewer has
	// no use for what could let a device in.
	posturev1.AdminService_ListEnrollmentTokens_FullMethodName:  {pki.RoleAdmin},
	posturev1.AdminService_RevokeEnrollmentToken_FullMethodName: {pki.RoleAdmin},
	// The console's people: viewers read, admins act (console.go).
	posturev1.ConsoleService_CreateSignInLink_FullMethodName: {pki.RoleAdmin},
	posturev1.ConsoleService_ListAudit_FullMethodName:        {pki.RoleAdmin, roleViewer},
}

// caller is the authenticated party behind an RPC.
type caller struct {
	role string
	name string // device ID, gateway name, admin name; empty for anonymous
	// For devices and gateways: the serial of the certificate (as
	// pki.SerialHex writes it); for devices, the SHA-256 of its public key
	// (pki.KeySHA256), and whether it is the one the device's last renewal
	// replaced, which may only renew.
	certSerial   string
	certKey      []byte
	replacedCert bool
	// notAfter is when the client certificate's chain expires; zero for
	// callers without a certificate.
	notAfter time.Time
	// via and from say how and from where an admin reached the
	// collector, for the audit log: the admin socket, the console (and
	// the browser's address) or TLS (and the peer's).
	via, from string
}

// replacedCertMethods are what a device may call with the certificate its
// last renewal replaced: renewing again, in case the newest certificate
// never reached it.
var replacedCertMethods = map[string]bool{
	posturev1.ReportService_RenewCertificate_FullMethodName: true,
}

type callerKey struct{}

func callerFrom(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// identify names the peer: a connection on the admin Unix socket is the
// local admin (the socket's 0600 mode is the credential); a TLS client is
// named by the SPIFFE ID of its verified certificate.
func (s *Server) identify(ctx context.Context) (caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return caller{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	if _, isUnix := p.Addr.(*net.UnixAddr); isUnix {
		return caller{role: pki.RoleAdmin, name: "local", via: viaSocket}, nil
	}
	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return caller{}, status.Error(codes.Unauthenticated, "connection is not TLS")
	}
	id, err := pki.VerifiedPeerID(tlsInfo.State)
	if err != nil {
		return caller{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	if id == nil {
		return caller{role: roleAnonymous}, nil
	}
	// The chain was verified at the handshake; a connection can outlive
	// its certificate, so every call checks that it is still valid.
	chain := tlsInfo.State.VerifiedChains[0]
	_, notAfter := pki.ChainValidity(chain)
	if s.cfg.Now().After(notAfter) {
		return caller{}, certExpired(notAfter)
	}
	serial := chain[0].SerialNumber.Text(16)
	td, role, name, err := pki.ParseSPIFFEID(id.String())
	if err != nil {
		return caller{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	if role == roleViewer {
		// Viewers are people signed in to the console, never certificates.
		return caller{}, status.Error(codes.Unauthenticated, "client certificate names the viewer role, which only people signed in to the console hold")
	}
	if td != s.cfg.TrustDomain {
		return caller{}, status.Errorf(codes.Unauthenticated, "client certificate belongs to trust domain %q, not %q", td, s.cfg.TrustDomain)
	}
	switch role {
	case pki.RoleGateway:
		if err := s.cfg.Gateways.Check(serial); err != nil {
			return caller{}, status.Error(codes.Unauthenticated, err.Error())
		}
		return caller{role: role, name: name, certSerial: serial, notAfter: notAfter}, nil
	case pki.RoleDevice:
		if err := s.cfg.Fleet.CheckActive(name); err != nil {
			return caller{}, status.Error(codes.PermissionDenied, err.Error())
		}
		key := pki.KeySHA256(chain[0])
		replaced, unbound, err := s.cfg.Fleet.CertStanding(name, serial, key)
		if err == nil && unbound {
			err = s.bindCertKey(ctx, name, serial, key)
		}
		if err != nil {
			return caller{}, s.certRefusal(ctx, name, serial, key, err)
		}
		return caller{role: role, name: name, certSerial: serial, certKey: key, replacedCert: replaced, notAfter: notAfter}, nil
	}
	return caller{role: role, name: name, notAfter: notAfter, via: "TLS", from: p.Addr.String()}, nil
}

// certExpired is the error of a client certificate (chain) that expired at
// notAfter.
func certExpired(notAfter time.Time) error {
	return status.Errorf(codes.Unauthenticated, "client certificate expired at %s; reconnect with a renewed certificate", notAfter.UTC().Format(time.RFC3339))
}

// errStreamCertReplaced ends a device's report stream whose certificate was
// replaced while it was open. It is not PermissionDenied: the agent holding
// the new certificate reconnects at once and presents it.
var errStreamCertReplaced = status.Error(codes.Unauthenticated, "this stream's device certificate was replaced when the device renewed it or enrolled again; reconnect with the newest certificate (device.crt in the agent's state directory)")

// streamCertCurrent says whether the certificate who opened a report
// stream with still counts: it has not expired by the collector's clock
// (the stream's deadline follows the clock when the stream opened) and is
// still the device's newest. A report stream checks before each report.
func (s *Server) streamCertCurrent(who caller) error {
	if s.cfg.Now().After(who.notAfter) {
		return certExpired(who.notAfter)
	}
	if s.cfg.Fleet.CurrentCert(who.name, who.certSerial, who.certKey) != nil {
		return errStreamCertReplaced
	}
	return nil
}

// bindCertKey records the key of a device certificate issued before the
// collector recorded keys, at the device's first call that presents it
// (store.Store.BindCertKey): from then on only that key counts with its
// serial. Whoever presents the serial first binds it; should that be a
// certificate minted with a stolen CA key, the device's own certificate
// is refused from then on, saying so, which is what an admin must hear.
func (s *Server) bindCertKey(ctx context.Context, id, serial string, key []byte) error {
	_, ev, err := s.cfg.Store.BindCertKey(ctx, id, store.Cert{Serial: serial, KeySHA256: key}, s.cfg.Now())
	switch {
	case errors.Is(err, store.ErrCertKey):
		return errCertKey
	case errors.Is(err, store.ErrCertReplaced):
		return fleet.ErrOldCertificate
	case err != nil:
		s.cfg.Logger.Error("record a device certificate's key", "device", id, "serial", serial, "err", err)
		return status.Errorf(codes.Unavailable, "device %s: the collector could not record its certificate's key (%v); try again", id, err)
	}
	if ev.ID != 0 {
		s.cfg.Feed.Apply(ev, nil)
		s.cfg.Logger.Info("device certificate key recorded", "device", id, "serial", serial)
	}
	return nil
}

// errCertKey refuses a certificate with the serial of one the collector
// issued the device but another public key.
var errCertKey = errors.New("this certificate carries the serial of one the collector issued the device, but not the public key it was issued for: the collector did not issue it")

// certRefusal is the refusal of a device's certificate that did not
// stand (err, from CertStanding or bindCertKey). A certificate with the
// serial of one the collector issued the device, with another key, was
// not made by the collector: whoever made it holds the CA's key. It is
// told apart from a merely replaced certificate by reading the device as
// stored, and logged as an error: an admin must replace the CA.
func (s *Server) certRefusal(ctx context.Context, id, serial string, key []byte, err error) error {
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	forged := func(recordedSerial string, recordedKey []byte) bool {
		return recordedSerial == serial && recordedKey != nil && !bytes.Equal(recordedKey, key)
	}
	if errors.Is(err, fleet.ErrOldCertificate) {
		if d, rerr := s.cfg.Store.Device(ctx, id); rerr == nil && (forged(d.CertSerial, d.CertKeySHA256) || forged(d.PrevCertSerial, d.PrevCertKeySHA256)) {
			err = errCertKey
		}
	}
	if errors.Is(err, errCertKey) {
		s.cfg.Logger.Error("device certificate refused: it carries a serial the collector issued, with another key; whoever made it holds the collector CA's key",
			"device", id, "serial", serial, "key_sha256", hex.EncodeToString(key))
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	who, err := s.identify(ctx)
	if err != nil {
		s.cfg.Stats.Denied(method)
		return nil, err
	}
	return s.authorizeCaller(ctx, who, method)
}

// authorizeCaller authorizes a caller already identified: by its
// connection (authorize), or as a person signed in to the console
// (InProcess).
func (s *Server) authorizeCaller(ctx context.Context, who caller, method string) (context.Context, error) {
	for _, r := range methodRoles[method] {
		if r != who.role {
			continue
		}
		if who.replacedCert && !replacedCertMethods[method] {
			s.cfg.Stats.Denied(method)
			return nil, status.Error(codes.PermissionDenied, fleet.ErrOldCertificate.Error())
		}
		return context.WithValue(ctx, callerKey{}, who), nil
	}
	s.cfg.Stats.Denied(method)
	return nil, status.Errorf(codes.PermissionDenied, "%s may not call %s", describe(who), method)
}

func describe(c caller) string {
	if c.role == roleAnonymous {
		return "a client without a certificate (it may only enroll)"
	}
	return fmt.Sprintf("%s %q", c.role, c.name)
}

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	who, err := s.identify(ctx)
	if err != nil {
		s.cfg.Stats.Denied(info.FullMethod)
		return nil, err
	}
	return s.call(ctx, who, info.FullMethod, req, handler)
}

// call authorizes a unary call by who, runs it, and records it in the
// audit log when it is an admin action: the one road of every unary call,
// over the network or from the console (InProcess).
func (s *Server) call(ctx context.Context, who caller, method string, req any, handler grpc.UnaryHandler) (any, error) {
	authed, err := s.authorizeCaller(ctx, who, method)
	if err != nil {
		s.audit(ctx, who, method, req, err)
		return nil, err
	}
	resp, err := handler(authed, req)
	err = statusOf(err)
	s.audit(ctx, who, method, req, err)
	return resp, err
}

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	who := callerFrom(ctx)
	// A gateway's stream (a watch) ends when its certificate is revoked:
	// checking at the start of a call is not enough for a call that lasts.
	if who.role == pki.RoleGateway {
		var untrack func()
		ctx, untrack = s.cfg.Gateways.Track(ctx, who.certSerial)
		defer untrack()
	}
	// Nor does a stream outlive its certificate: its context ends when the
	// client certificate expires (by the collector's clock as it reads
	// now).
	if !who.notAfter.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, time.Now().Add(who.notAfter.Sub(s.cfg.Now())), certExpired(who.notAfter))
		defer cancel()
	}
	// Either way the stream ends saying why, whatever the handler makes
	// of its context ending.
	err = statusOf(handler(srv, &authedStream{ServerStream: ss, ctx: ctx}))
	if cause := statusOf(context.Cause(ctx)); ctx.Err() != nil && status.Code(cause) == codes.Unauthenticated {
		return cause
	}
	return err
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authedStream) Context() context.Context { return s.ctx }
