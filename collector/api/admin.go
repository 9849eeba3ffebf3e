package api

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/decisions"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type adminService struct {
	posturev1.UnimplementedAdminServiceServer
	s *Server
}

const maxTokenTTL = 30 * 24 * time.Hour

func (a *adminService) CreateEnrollmentToken(ctx context.Context, req *posturev1.CreateEnrollmentTokenRequest) (*posturev1.CreateEnrollmentTokenResponse, error) {
	c := a.s
	ttl := time.Hour
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	if ttl <= 0 || ttl > maxTokenTTL {
		return nil, status.Errorf(codes.InvalidArgument, "ttl must be between 1s and %s, got %s", maxTokenTTL, ttl)
	}
	uses := req.GetUses()
	if uses == 0 {
		uses = 1
	}
	addrs, err := c.cfg.Advertise(ctx)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	t, err := token.New(addrs, c.cfg.CA.Fingerprint())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := c.cfg.Now()
	rec := store.Token{Hash: token.Hash(t.Secret), Description: req.GetDescription(), CreatedAt: now, ExpiresAt: now.Add(ttl), Uses: uses}
	if err := c.cfg.Store.CreateToken(ctx, rec); err != nil {
		return nil, status.Errorf(codes.Internal, "store token: %v", err)
	}
	c.cfg.Logger.Info("enrollment token created", "expires_at", rec.ExpiresAt, "uses", uses, "description", rec.Description)
	return &posturev1.CreateEnrollmentTokenResponse{Token: t.String(), ExpiresAt: timestamppb.New(rec.ExpiresAt), Uses: uses}, nil
}

// Page sizes of ListDevices.
const (
	defaultDevicePage = 500
	maxDevicePage     = 5000
)

func (a *adminService) ListDevices(ctx context.Context, req *posturev1.ListDevicesRequest) (*posturev1.ListDevicesResponse, error) {
	c := a.s
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = defaultDevicePage
	case size > maxDevicePage:
		return nil, status.Errorf(codes.InvalidArgument, "page_size %d is above %d; ask for pages of at most %d devices", size, maxDevicePage, maxDevicePage)
	}
	// One more than asked for tells whether another page follows.
	devs, err := c.cfg.Store.DevicesAfter(ctx, req.GetPageToken(), size+1)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list devices: %v", err)
	}
	out := &posturev1.ListDevicesResponse{}
	if len(devs) > size {
		devs = devs[:size]
		out.NextPageToken = devs[size-1].ID
	}
	out.Devices = make([]*posturev1.DevicePosture, 0, len(devs))
	now := c.cfg.Now()
	for _, d := range devs {
		out.Devices = append(out.Devices, c.posture(d, nil, now)) // devices show has the report
	}
	return out, nil
}

func (a *adminService) GetDevice(ctx context.Context, req *posturev1.GetDeviceRequest) (*posturev1.DevicePosture, error) {
	if req.GetDeviceId() == "" {
		return nil, status.Error(codes.InvalidArgument, "device_id is required")
	}
	return a.s.devicePosture(ctx, req.GetDeviceId())
}

func (a *adminService) RevokeDevice(ctx context.Context, req *posturev1.RevokeDeviceRequest) (*posturev1.RevokeDeviceResponse, error) {
	c := a.s
	id := req.GetDeviceId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "device_id is required")
	}
	if req.GetReason() == "" {
		return nil, status.Error(codes.InvalidArgument, "a reason is required (--reason TEXT); it is shown in every later denial")
	}
	ev, err := c.cfg.Store.SetDeviceState(ctx, id, int32(posturev1.DeviceState_DEVICE_STATE_REVOKED), req.GetReason(), c.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	case errors.Is(err, store.ErrDeviceRevoked):
		return nil, status.Errorf(codes.FailedPrecondition, "device %s is already revoked", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "revoke: %v", err)
	}
	// From here no decision allows the device, on this collector and, as
	// soon as they read the event, on every other one.
	c.cfg.Feed.Apply(ev, nil)
	c.cfg.Logger.Info("device revoked", "device", id, "reason", req.GetReason(), "by", describe(callerFrom(ctx)))
	p, err := c.devicePosture(ctx, id)
	if err != nil {
		return nil, err
	}
	return &posturev1.RevokeDeviceResponse{Device: p.GetDevice()}, nil
}

var gatewayName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func (a *adminService) IssueGatewayCertificate(ctx context.Context, req *posturev1.IssueGatewayCertificateRequest) (*posturev1.IssueGatewayCertificateResponse, error) {
	c := a.s
	if !gatewayName.MatchString(req.GetName()) {
		return nil, status.Errorf(codes.InvalidArgument, "gateway name %q must be 1-63 lowercase letters, digits, '.', '_' or '-'", req.GetName())
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "certificate request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "certificate request signature: %v", err)
	}
	id := pki.SPIFFEID(c.cfg.TrustDomain, pki.RoleGateway, req.GetName())
	cert, err := c.cfg.CA.IssueClient(csr.PublicKey, id, 365*24*time.Hour)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// Kept for gateway list and gateway revoke.
	if err := c.cfg.Store.AddGateway(ctx, store.Gateway{Serial: cert.SerialNumber.Text(16), Name: req.GetName(), IssuedAt: c.cfg.Now(), ExpiresAt: cert.NotAfter}); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	c.cfg.Logger.Info("gateway certificate issued", "gateway", req.GetName(), "serial", cert.SerialNumber.Text(16))
	return &posturev1.IssueGatewayCertificateResponse{Certificate: cert.Raw, CaCertificates: [][]byte{c.cfg.CA.Cert.Raw}, SpiffeId: id.String()}, nil
}

func (a *adminService) GetStats(ctx context.Context, _ *posturev1.GetStatsRequest) (*posturev1.Stats, error) {
	s := a.s.cfg.Stats.Snapshot()
	var receivers []*posturev1.ReceiverStatus
	if a.s.cfg.Receivers != nil {
		var err error
		if receivers, err = a.s.cfg.Receivers(ctx); err != nil {
			return nil, status.Errorf(codes.Internal, "read the receivers: %v", err)
		}
	}
	return &posturev1.Stats{
		Receivers:           receivers,
		ReportsAccepted:     s.ReportsAccepted,
		ReportsRejected:     s.ReportsRejected,
		Enrollments:         s.Enrollments,
		EnrollmentsRejected: s.EnrollmentsRejected,
		RpcDenied:           s.RPCDenied,
		CertificatesRenewed: s.CertsRenewed,
		RenewalsRejected:    s.RenewalsRejected,
		Devices:             uint64(a.s.cfg.Fleet.Count()),
		StreamsOpen:         uint64(a.s.cfg.Fleet.StreamCount()),
		StandingLease:       a.s.cfg.StandingLease != nil && a.s.cfg.StandingLease(),
	}, nil
}

func (a *adminService) ApproveDevice(ctx context.Context, req *posturev1.ApproveDeviceRequest) (*posturev1.ApproveDeviceResponse, error) {
	c := a.s
	id := req.GetDeviceId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "device_id is required")
	}
	dev, ev, err := c.cfg.Store.ApproveDevice(ctx, id, int32(posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED), "approved by "+describe(callerFrom(ctx)), c.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	case errors.Is(err, store.ErrNotPending):
		return nil, status.Errorf(codes.FailedPrecondition, "device %s is not pending approval", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "approve: %v", err)
	}
	c.cfg.Feed.Apply(ev, nil)
	c.cfg.Logger.Info("device approved", "device", id, "ek_sha256", dev.EKSHA256, "by", describe(callerFrom(ctx)))
	p, err := c.devicePosture(ctx, id)
	if err != nil {
		return nil, err
	}
	return &posturev1.ApproveDeviceResponse{Device: p.GetDevice()}, nil
}

var ekHashPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (a *adminService) PreregisterEK(ctx context.Context, req *posturev1.PreregisterEKRequest) (*posturev1.PreregisterEKResponse, error) {
	if len(req.GetEkSha256()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "at least one EK hash is required (--ek-sha256 HEX)")
	}
	var hashes []string
	for _, h := range req.GetEkSha256() {
		h = strings.ToLower(strings.TrimSpace(h))
		if !ekHashPattern.MatchString(h) {
			return nil, status.Errorf(codes.InvalidArgument, "%q is not a SHA-256 hex digest (64 hex characters) of an EK public key in PKIX DER form", h)
		}
		hashes = append(hashes, h)
	}
	n, err := a.s.cfg.Store.PinEKs(ctx, hashes, req.GetDescription(), a.s.cfg.Now())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "pin EKs: %v", err)
	}
	a.s.cfg.Logger.Info("EKs preregistered", "added", n, "given", len(hashes), "by", describe(callerFrom(ctx)))
	return &posturev1.PreregisterEKResponse{Added: uint32(n)}, nil
}

// ListDecisions lists this collector's decision log.
func (a *adminService) ListDecisions(_ context.Context, req *posturev1.ListDecisionsRequest) (*posturev1.ListDecisionsResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = 100
	case limit > decisions.MaxListed:
		return nil, status.Errorf(codes.InvalidArgument, "limit %d is above %d; narrow the listing with a device or --since", limit, decisions.MaxListed)
	}
	var since, until time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		until = req.GetUntil().AsTime()
		if until.Before(since) {
			return nil, status.Errorf(codes.InvalidArgument, "until %s is before since %s", until.Format(time.RFC3339), since.Format(time.RFC3339))
		}
	}
	return &posturev1.ListDecisionsResponse{Decisions: a.s.cfg.Decisions.List(req.GetDeviceId(), since, until, limit), Retained: decisions.Size}, nil
}

// ListReplicas lists the collectors sharing the database.
func (a *adminService) ListReplicas(ctx context.Context, _ *posturev1.ListReplicasRequest) (*posturev1.ListReplicasResponse, error) {
	newest, err := a.s.cfg.Store.LastEventID(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read the newest change: %v", err)
	}
	reps, err := a.s.cfg.Store.Replicas(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list replicas: %v", err)
	}
	out := &posturev1.ListReplicasResponse{NewestEvent: newest}
	for _, r := range reps {
		p := &posturev1.Replica{Id: r.ID, Name: r.Name, Advertise: r.Advertise, Version: r.Version, StartedAt: timestamppb.New(r.StartedAt),
			SeenAt: timestamppb.New(r.SeenAt), Applied: r.Applied, Self: r.ID == a.s.cfg.Replica}
		if newest > r.Applied {
			p.Behind = newest - r.Applied
		}
		out.Replicas = append(out.Replicas, p)
	}
	return out, nil
}

// tokenIDLen is how many hex digits of a token's hash name it.
const tokenIDLen = 16

// tokenView is a stored token as the admin API shows it, its state as of
// now.
func tokenView(t store.Token, now time.Time) *posturev1.EnrollmentToken {
	v := &posturev1.EnrollmentToken{Id: hex.EncodeToString(t.Hash)[:min(tokenIDLen, 2*len(t.Hash))], Description: t.Description,
		CreatedAt: timestamppb.New(t.CreatedAt), ExpiresAt: timestamppb.New(t.ExpiresAt), Uses: t.Uses, Used: t.Used,
		State: posturev1.EnrollmentTokenState_ENROLLMENT_TOKEN_STATE_USABLE}
	if !t.RevokedAt.IsZero() {
		v.RevokedAt = timestamppb.New(t.RevokedAt)
	}
	switch store.CheckToken(t, now) {
	case store.ErrTokenRevoked:
		v.State = posturev1.EnrollmentTokenState_ENROLLMENT_TOKEN_STATE_REVOKED
	case store.ErrTokenExpired:
		v.State = posturev1.EnrollmentTokenState_ENROLLMENT_TOKEN_STATE_EXPIRED
	case store.ErrTokenUsedUp:
		v.State = posturev1.EnrollmentTokenState_ENROLLMENT_TOKEN_STATE_USED_UP
	}
	return v
}

func (a *adminService) ListEnrollmentTokens(ctx context.Context, _ *posturev1.ListEnrollmentTokensRequest) (*posturev1.ListEnrollmentTokensResponse, error) {
	toks, err := a.s.cfg.Store.Tokens(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list tokens: %v", err)
	}
	now := a.s.cfg.Now()
	out := &posturev1.ListEnrollmentTokensResponse{Tokens: make([]*posturev1.EnrollmentToken, 0, len(toks))}
	for _, t := range toks {
		out.Tokens = append(out.Tokens, tokenView(t, now))
	}
	return out, nil
}

// tokenIDPrefix is what RevokeEnrollmentToken accepts as a token's id.
var tokenIDPrefix = regexp.MustCompile(`^[0-9a-f]{4,16}$`)

func (a *adminService) RevokeEnrollmentToken(ctx context.Context, req *posturev1.RevokeEnrollmentTokenRequest) (*posturev1.RevokeEnrollmentTokenResponse, error) {
	id := strings.ToLower(strings.TrimSpace(req.GetId()))
	if !tokenIDPrefix.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "token id %q: give a token's id as token list shows it (16 hex digits), or at least its first 4", req.GetId())
	}
	toks, err := a.s.cfg.Store.Tokens(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list tokens: %v", err)
	}
	var match []store.Token
	for _, t := range toks {
		if strings.HasPrefix(hex.EncodeToString(t.Hash), id) {
			match = append(match, t)
		}
	}
	switch {
	case len(match) == 0:
		return nil, status.Errorf(codes.NotFound, "no enrollment token has id %s (posture-collector token list shows them)", id)
	case len(match) > 1:
		return nil, status.Errorf(codes.InvalidArgument, "%d enrollment tokens have ids starting with %s: give more of the id", len(match), id)
	}
	now := a.s.cfg.Now()
	t, err := a.s.cfg.Store.RevokeToken(ctx, match[0].Hash, now)
	switch {
	case errors.Is(err, store.ErrTokenRevoked):
		return nil, status.Errorf(codes.FailedPrecondition, "enrollment token %s was revoked already, at %s", tokenView(t, now).GetId(), t.RevokedAt.UTC().Format(time.RFC3339))
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "no enrollment token has id %s (posture-collector token list shows them)", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "revoke token: %v", err)
	}
	v := tokenView(t, now)
	a.s.cfg.Logger.Info("enrollment token revoked", "token", v.GetId(), "description", t.Description, "used", t.Used, "uses", t.Uses)
	return &posturev1.RevokeEnrollmentTokenResponse{Token: v}, nil
}
