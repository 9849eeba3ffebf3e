package collector

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type adminService struct {
	posturev1.UnimplementedAdminServiceServer
	c *Collector
}

const maxTokenTTL = 30 * 24 * time.Hour

func (a *adminService) CreateEnrollmentToken(ctx context.Context, req *posturev1.CreateEnrollmentTokenRequest) (*posturev1.CreateEnrollmentTokenResponse, error) {
	c := a.c
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
	addr, err := c.advertise()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	t, err := token.New(addr, c.CAFingerprint())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := c.cfg.Now()
	rec := store.Token{Hash: token.Hash(t.Secret), Description: req.GetDescription(), CreatedAt: now, ExpiresAt: now.Add(ttl), Uses: uses}
	if err := c.store.CreateToken(ctx, rec); err != nil {
		return nil, status.Errorf(codes.Internal, "store token: %v", err)
	}
	c.log.Info("enrollment token created", "expires_at", rec.ExpiresAt, "uses", uses, "description", rec.Description)
	return &posturev1.CreateEnrollmentTokenResponse{Token: t.String(), ExpiresAt: timestamppb.New(rec.ExpiresAt), Uses: uses}, nil
}

// advertise is the address written into tokens.
func (c *Collector) advertise() (string, error) {
	if c.cfg.Advertise != "" {
		return c.cfg.Advertise, nil
	}
	host, port, err := net.SplitHostPort(c.Addr())
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return "", fmt.Errorf("the collector listens on %s, which agents cannot dial; restart it with --advertise HOST:%s", c.Addr(), port)
	}
	return c.Addr(), nil
}

// Page sizes of ListDevices.
const (
	defaultDevicePage = 500
	maxDevicePage     = 5000
)

func (a *adminService) ListDevices(ctx context.Context, req *posturev1.ListDevicesRequest) (*posturev1.ListDevicesResponse, error) {
	c := a.c
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = defaultDevicePage
	case size > maxDevicePage:
		return nil, status.Errorf(codes.InvalidArgument, "page_size %d is above %d; ask for pages of at most %d devices", size, maxDevicePage, maxDevicePage)
	}
	// One more than asked for tells whether another page follows.
	devs, err := c.store.DevicesAfter(ctx, req.GetPageToken(), size+1)
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
	return a.c.devicePosture(ctx, req.GetDeviceId())
}

func (a *adminService) RevokeDevice(ctx context.Context, req *posturev1.RevokeDeviceRequest) (*posturev1.RevokeDeviceResponse, error) {
	c := a.c
	id := req.GetDeviceId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "device_id is required")
	}
	if req.GetReason() == "" {
		return nil, status.Error(codes.InvalidArgument, "a reason is required (--reason TEXT); it is shown in every later denial")
	}
	err := c.store.SetDeviceState(ctx, id, int32(posturev1.DeviceState_DEVICE_STATE_REVOKED), req.GetReason())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	case errors.Is(err, store.ErrDeviceRevoked):
		return nil, status.Errorf(codes.FailedPrecondition, "device %s is already revoked", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "revoke: %v", err)
	}
	// Memory first, then streams: from here no decision allows the device.
	c.fleet.setState(id, posturev1.DeviceState_DEVICE_STATE_REVOKED, req.GetReason())
	c.publish(id, "revoked", true)
	c.fleet.closeStreams(id, fmt.Errorf("%w: %s", errRevoked, req.GetReason()))
	c.log.Info("device revoked", "device", id, "reason", req.GetReason(), "by", describe(callerFrom(ctx)))
	p, err := c.devicePosture(ctx, id)
	if err != nil {
		return nil, err
	}
	return &posturev1.RevokeDeviceResponse{Device: p.GetDevice()}, nil
}

var gatewayName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func (a *adminService) IssueGatewayCertificate(ctx context.Context, req *posturev1.IssueGatewayCertificateRequest) (*posturev1.IssueGatewayCertificateResponse, error) {
	c := a.c
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
	cert, err := c.ca.IssueClient(csr.PublicKey, id, 365*24*time.Hour)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// Kept for gateway list and gateway revoke.
	if err := c.store.AddGateway(ctx, store.Gateway{Serial: cert.SerialNumber.Text(16), Name: req.GetName(), IssuedAt: c.cfg.Now(), ExpiresAt: cert.NotAfter}); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	c.log.Info("gateway certificate issued", "gateway", req.GetName(), "serial", cert.SerialNumber.Text(16))
	return &posturev1.IssueGatewayCertificateResponse{Certificate: cert.Raw, CaCertificates: [][]byte{c.ca.Cert.Raw}, SpiffeId: id.String()}, nil
}

func (a *adminService) GetStats(context.Context, *posturev1.GetStatsRequest) (*posturev1.Stats, error) {
	s := a.c.stats.snapshot()
	return &posturev1.Stats{
		ReportsAccepted:     s.reportsAccepted,
		ReportsRejected:     s.reportsRejected,
		Enrollments:         s.enrollments,
		EnrollmentsRejected: s.enrollmentsRejected,
		RpcDenied:           s.rpcDenied,
		CertificatesRenewed: s.certsRenewed,
		RenewalsRejected:    s.renewalsRejected,
		Devices:             uint64(len(a.c.fleet.ids())),
		StreamsOpen:         uint64(a.c.fleet.streamCount()),
	}, nil
}

func (a *adminService) ApproveDevice(ctx context.Context, req *posturev1.ApproveDeviceRequest) (*posturev1.ApproveDeviceResponse, error) {
	c := a.c
	id := req.GetDeviceId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "device_id is required")
	}
	dev, err := c.store.ApproveDevice(ctx, id, int32(posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED), "approved by "+describe(callerFrom(ctx)), c.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	case errors.Is(err, store.ErrNotPending):
		return nil, status.Errorf(codes.FailedPrecondition, "device %s is not pending approval", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "approve: %v", err)
	}
	if err := c.fleet.put(dev); err != nil {
		return nil, status.Errorf(codes.Internal, "reload device: %v", err)
	}
	c.publish(id, "approved", true)
	c.log.Info("device approved", "device", id, "ek_sha256", dev.EKSHA256, "by", describe(callerFrom(ctx)))
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
	n, err := a.c.store.PinEKs(ctx, hashes, req.GetDescription(), a.c.cfg.Now())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "pin EKs: %v", err)
	}
	a.c.log.Info("EKs preregistered", "added", n, "given", len(hashes), "by", describe(callerFrom(ctx)))
	return &posturev1.PreregisterEKResponse{Added: uint32(n)}, nil
}
