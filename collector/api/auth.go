package api

import (
	"context"
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
	posturev1.AdminService_ListDevices_FullMethodName:              {pki.RoleAdmin},
	posturev1.AdminService_GetDevice_FullMethodName:                {pki.RoleAdmin},
	posturev1.AdminService_RevokeDevice_FullMethodName:             {pki.RoleAdmin},
	posturev1.AdminService_IssueGatewayCertificate_FullMethodName:  {pki.RoleAdmin},
	posturev1.AdminService_ApproveDevice_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_PreregisterEK_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_ReloadPolicy_FullMethodName:             {pki.RoleAdmin},
	posturev1.AdminService_DiffPolicy_FullMethodName:               {pki.RoleAdmin},
	posturev1.AdminService_ListDecisions_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_GetStats_FullMethodName:                 {pki.RoleAdmin},
	posturev1.AdminService_ListGateways_FullMethodName:             {pki.RoleAdmin},
	posturev1.AdminService_RevokeGateway_FullMethodName:            {pki.RoleAdmin},
	posturev1.AdminService_ListReplicas_FullMethodName:             {pki.RoleAdmin},
	posturev1.AdminService_BindDeviceUser_FullMethodName:           {pki.RoleAdmin},
	posturev1.AdminService_UnbindDeviceUser_FullMethodName:         {pki.RoleAdmin},
	posturev1.AdminService_AddSSFReceiver_FullMethodName:           {pki.RoleAdmin},
	posturev1.AdminService_ListSSFReceivers_FullMethodName:         {pki.RoleAdmin},
	posturev1.AdminService_RemoveSSFReceiver_FullMethodName:        {pki.RoleAdmin},
	posturev1.AdminService_CreateSSFStream_FullMethodName:          {pki.RoleAdmin},
	posturev1.AdminService_ListSSFStreams_FullMethodName:           {pki.RoleAdmin},
	posturev1.AdminService_DeleteSSFStream_FullMethodName:          {pki.RoleAdmin},
}

// caller is the authenticated party behind an RPC.
type caller struct {
	role string
	name string // device ID, gateway name, admin name; empty for anonymous
	// For devices and gateways: the serial of the certificate (as
	// pki.SerialHex writes it); for devices, whether it is the one the
	// device's last renewal replaced, which may only renew.
	certSerial   string
	replacedCert bool
	// notAfter is when the client certificate's chain expires; zero for
	// callers without a certificate.
	notAfter time.Time
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
		return caller{role: pki.RoleAdmin, name: "local"}, nil
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
		replaced, err := s.cfg.Fleet.CertStanding(name, serial)
		if err != nil {
			return caller{}, status.Error(codes.PermissionDenied, err.Error())
		}
		return caller{role: role, name: name, certSerial: serial, replacedCert: replaced, notAfter: notAfter}, nil
	}
	return caller{role: role, name: name, notAfter: notAfter}, nil
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
	if s.cfg.Fleet.CurrentCert(who.name, who.certSerial) != nil {
		return errStreamCertReplaced
	}
	return nil
}

func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	who, err := s.identify(ctx)
	if err != nil {
		s.cfg.Stats.Denied(method)
		return nil, err
	}
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
	ctx, err := s.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	resp, err := handler(ctx, req)
	return resp, statusOf(err)
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
