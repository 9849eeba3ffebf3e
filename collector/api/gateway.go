package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/callerid"
	"github.com/posture-project/posture/collector/decisions"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type gatewayService struct {
	posturev1.UnimplementedGatewayServiceServer
	s *Server
}

// Bounds on what a gateway may name in a request: decisions are recorded,
// so a request must not be able to make a record arbitrarily large.
const (
	maxLevelName = 128
	maxDeviceID  = 128
	maxSPIFFEID  = 512
	maxSerial    = 64
)

// resolveDevice accepts a device ID or the SPIFFE ID from its certificate.
func (s *Server) resolveDevice(deviceID, spiffeID string) (string, error) {
	switch {
	case len(deviceID) > maxDeviceID:
		return "", status.Errorf(codes.InvalidArgument, "device_id is %d bytes long; device IDs are at most %d", len(deviceID), maxDeviceID)
	case len(spiffeID) > maxSPIFFEID:
		return "", status.Errorf(codes.InvalidArgument, "spiffe_id is %d bytes long; at most %d", len(spiffeID), maxSPIFFEID)
	case deviceID != "" && spiffeID != "":
		return "", status.Error(codes.InvalidArgument, "set device_id or spiffe_id, not both")
	case deviceID != "":
		return deviceID, nil
	case spiffeID != "":
		td, role, name, err := pki.ParseSPIFFEID(spiffeID)
		if err != nil {
			return "", status.Error(codes.InvalidArgument, err.Error())
		}
		if td != s.cfg.TrustDomain || role != pki.RoleDevice {
			return "", status.Errorf(codes.InvalidArgument, "%s is not a device of trust domain %s (want spiffe://%s/device/<id>)", spiffeID, s.cfg.TrustDomain, s.cfg.TrustDomain)
		}
		return name, nil
	}
	return "", status.Error(codes.InvalidArgument, "device_id or spiffe_id is required")
}

func (g *gatewayService) CheckAccess(ctx context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	c := g.s
	id, err := c.resolveDevice(req.GetDeviceId(), req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	switch level := req.GetAccessLevel(); {
	case level == "":
		return nil, status.Error(codes.InvalidArgument, "access_level is required")
	case len(level) > maxLevelName:
		return nil, status.Errorf(codes.InvalidArgument, "access_level is %d bytes long; level names are at most %d", len(level), maxLevelName)
	case len(req.GetCertificateSerial()) > maxSerial:
		return nil, status.Errorf(codes.InvalidArgument, "certificate_serial is %d bytes long; at most %d", len(req.GetCertificateSerial()), maxSerial)
	case len(req.GetCertificateKeySha256()) != 0 && len(req.GetCertificateKeySha256()) != sha256.Size:
		return nil, status.Errorf(codes.InvalidArgument, "certificate_key_sha256 is %d bytes long; a SHA-256 is %d", len(req.GetCertificateKeySha256()), sha256.Size)
	case len(req.GetCertificateKeySha256()) != 0 && req.GetCertificateSerial() == "":
		return nil, status.Error(codes.InvalidArgument, "certificate_key_sha256 names a certificate with certificate_serial: set both")
	}
	// nginx's $ssl_client_serial is upper case with leading zeros: the same
	// serial, spelled otherwise.
	var serial string
	if s := req.GetCertificateSerial(); s != "" {
		if serial, err = pki.CanonicalSerial(s); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "certificate_serial: %v", err)
		}
	}
	resp := &posturev1.CheckAccessResponse{DeviceId: id, AccessLevel: req.GetAccessLevel()}
	now := c.cfg.Now()
	subj, pol, ok := c.cfg.Fleet.Judged(id)
	// Metrics are labelled by the policy's levels only: names a gateway
	// makes up must not add series without bound.
	label := req.GetAccessLevel()
	_, defined := pol.Level(label)
	if !defined {
		label = "undefined"
	}
	if !ok {
		resp.Reasons = []string{fmt.Sprintf("device %s is not enrolled with this collector", id)}
		c.cfg.Decided(label, false)
		c.cfg.Decisions.Record(decisions.Entry{At: now, Device: id, Level: req.GetAccessLevel(), UndefinedLevel: !defined, Reasons: resp.Reasons, Caller: callerName(ctx)})
		return resp, nil
	}
	v := pol.Judge(&subj, req.GetAccessLevel(), now)
	resp.Allowed, resp.Met, resp.Score, resp.Reasons = v.Allowed, v.Met, v.Score, v.Reasons
	if v.Defined {
		resp.Enforcement = v.Enforce.Proto()
	}
	if req.GetCertificateSerial() != "" {
		key := req.GetCertificateKeySha256()
		if len(key) == 0 {
			key = nil // the serial alone: it matches only a certificate whose key is not recorded
		}
		if err := c.cfg.Fleet.HeldCert(id, serial, key, now); err != nil {
			why := err.Error()
			if key == nil {
				why += "; the gateway named the certificate by its serial alone, which counts only for certificates whose key the collector has not recorded: send certificate_key_sha256 with it"
			}
			// A replaced or minted certificate, device or browser, is the
			// device's identity, not its posture: no enforcement mode lets
			// it through.
			resp.Allowed, resp.Met = false, false
			resp.Reasons = append([]string{why}, resp.Reasons...)
		}
	}
	if resp.Allowed && v.Warned() {
		resp.Warned, resp.Warnings = true, v.Warnings()
	}
	resp.Assurance, resp.State = subj.Assurance, subj.State
	if subj.Assessment != nil {
		resp.ReportAge = durationpbOf(subj.ReportAge(now))
	}
	c.cfg.Decided(label, resp.Allowed)
	if !resp.Met || resp.Warned {
		resp.FailedChecks = pol.FailedChecks(&subj, now)
	}
	c.cfg.Decisions.Record(decisions.Entry{At: now, Device: id, Level: req.GetAccessLevel(), UndefinedLevel: !defined, Allowed: resp.Allowed, Score: resp.Score,
		State: subj.State, Reasons: resp.Reasons, Failed: resp.FailedChecks, Caller: callerName(ctx),
		Enforcement: resp.Enforcement, Met: resp.Met, Warned: resp.Warned, Warnings: resp.Warnings})
	return resp, nil
}

func (g *gatewayService) GetDevicePosture(ctx context.Context, req *posturev1.GetDevicePostureRequest) (*posturev1.DevicePosture, error) {
	id, err := g.s.resolveDevice(req.GetDeviceId(), req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	return g.s.devicePosture(ctx, id)
}

// devicePosture renders one device with its latest report, from the store.
func (s *Server) devicePosture(ctx context.Context, id string) (*posturev1.DevicePosture, error) {
	d, err := s.cfg.Store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector (posture-collector devices list shows those that are)", id)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read device: %v", err)
	}
	var report *posturev1.PostureReport
	if r, err := s.cfg.Store.LatestReport(ctx, id); err == nil {
		report = fleet.DecodeReport(r.Body)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.Internal, "read latest report: %v", err)
	}
	out := s.posture(d, report, s.cfg.Now())
	if u, err := s.cfg.Store.DeviceUser(ctx, id); err == nil {
		out.Device.User = &posturev1.DeviceUser{Email: u.Email, Issuer: u.Issuer, Subject: u.Subject}
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.Internal, "read the device's user: %v", err)
	}
	return out, nil
}

// WatchPosture streams decision changes (watch.Hub).
func (g *gatewayService) WatchPosture(req *posturev1.WatchPostureRequest, stream posturev1.GatewayService_WatchPostureServer) error {
	return statusOf(g.s.cfg.Hub.Serve(stream, req.GetSinceRevision(), req.GetSinceCollector()))
}

// posture renders one device for admins and gateways: d is the device as
// stored, report its latest report when wanted.
func (s *Server) posture(d store.Device, report *posturev1.PostureReport, now time.Time) *posturev1.DevicePosture {
	subj, pol, osLine, boot, ok := s.cfg.Fleet.View(d.ID)
	if !ok {
		// Stored an instant before the fleet heard of it.
		subj = policy.Subject{State: posturev1.DeviceState(d.State), StateReason: d.StateReason, Assurance: posturev1.IdentityAssurance(d.Assurance)}
	}
	checks, levels, score := pol.Explain(&subj, now)
	out := &posturev1.DevicePosture{
		Device:       deviceProto(d, s.cfg.TrustDomain, osLine),
		Score:        score,
		Checks:       checks,
		Levels:       levels,
		MeasuredBoot: boot,
		Report:       report,
	}
	if subj.Assessment != nil {
		out.RawScore = subj.Assessment.RawScore()
		out.ReportAge = durationpbOf(subj.ReportAge(now))
	}
	return out
}

func durationpbOf(d time.Duration) *durationpb.Duration { return durationpb.New(d.Round(time.Second)) }

func deviceProto(d store.Device, trustDomain, osLine string) *posturev1.Device {
	out := &posturev1.Device{
		Id:          d.ID,
		SpiffeId:    pki.SPIFFEID(trustDomain, pki.RoleDevice, d.ID).String(),
		Hostname:    d.Hostname,
		Platform:    d.Platform,
		Assurance:   posturev1.IdentityAssurance(d.Assurance),
		State:       posturev1.DeviceState(d.State),
		StateReason: d.StateReason,
		EnrolledAt:  timestamppb.New(d.EnrolledAt),
		LastSeq:     d.LastSeq,
		EkSha256:    d.EKSHA256,
		Reboots:     d.Reboots,
		Os:          osLine,
	}
	if !d.LastSeen.IsZero() {
		out.LastSeen = timestamppb.New(d.LastSeen)
	}
	return out
}

// callerName names who asked for a decision, for the log.
func callerName(ctx context.Context) string {
	switch c := callerFrom(ctx); {
	case c.role != "" && c.name != "":
		return c.role + " " + c.name
	case c.role != "":
		return c.role
	}
	// Not an RPC: a front end in this process (/check) named its caller.
	if name := callerid.From(ctx); name != "" {
		return name
	}
	return "in process"
}
