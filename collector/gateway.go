package collector

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type gatewayService struct {
	posturev1.UnimplementedGatewayServiceServer
	c *Collector
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
func (c *Collector) resolveDevice(deviceID, spiffeID string) (string, error) {
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
		if td != c.cfg.TrustDomain || role != pki.RoleDevice {
			return "", status.Errorf(codes.InvalidArgument, "%s is not a device of trust domain %s (want spiffe://%s/device/<id>)", spiffeID, c.cfg.TrustDomain, c.cfg.TrustDomain)
		}
		return name, nil
	}
	return "", status.Error(codes.InvalidArgument, "device_id or spiffe_id is required")
}

func (g *gatewayService) CheckAccess(ctx context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	c := g.c
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
	subj, pol, ok := c.fleet.judged(id, &c.policy)
	// Metrics are labelled by the policy's levels only: names a gateway
	// makes up must not add series without bound.
	label := req.GetAccessLevel()
	_, defined := pol.Level(label)
	if !defined {
		label = "undefined"
	}
	if !ok {
		resp.Reasons = []string{fmt.Sprintf("device %s is not enrolled with this collector", id)}
		c.metrics.decision(label, false)
		c.decisions.record(decisionRecord{at: now, device: id, level: req.GetAccessLevel(), undefinedLevel: !defined, reasons: resp.Reasons, caller: callerName(ctx)})
		return resp, nil
	}
	resp.Allowed, resp.Score, resp.Reasons = pol.Decide(&subj, req.GetAccessLevel(), now)
	if req.GetCertificateSerial() != "" {
		if err := c.fleet.currentCert(id, serial); err != nil {
			resp.Allowed = false
			resp.Reasons = append([]string{err.Error()}, resp.Reasons...)
		}
	}
	resp.Assurance, resp.State = subj.Assurance, subj.State
	if subj.Assessment != nil {
		resp.ReportAge = durationpbOf(subj.ReportAge(now))
	}
	c.metrics.decision(label, resp.Allowed)
	if !resp.Allowed {
		resp.FailedChecks = pol.FailedChecks(&subj, now)
	}
	c.decisions.record(decisionRecord{at: now, device: id, level: req.GetAccessLevel(), undefinedLevel: !defined, allowed: resp.Allowed, score: resp.Score, state: subj.State, reasons: resp.Reasons, failed: resp.FailedChecks, caller: callerName(ctx)})
	return resp, nil
}

func (g *gatewayService) GetDevicePosture(ctx context.Context, req *posturev1.GetDevicePostureRequest) (*posturev1.DevicePosture, error) {
	id, err := g.c.resolveDevice(req.GetDeviceId(), req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	return g.c.devicePosture(ctx, id)
}

// devicePosture renders one device with its latest report, from the store.
func (c *Collector) devicePosture(ctx context.Context, id string) (*posturev1.DevicePosture, error) {
	d, err := c.store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector (posture-collector devices list shows those that are)", id)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read device: %v", err)
	}
	var report *posturev1.PostureReport
	if r, err := c.store.LatestReport(ctx, id); err == nil {
		report = decodeReport(r.Body)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.Internal, "read latest report: %v", err)
	}
	return c.posture(d, report, c.cfg.Now()), nil
}

// CheckAccess answers the same decision as the gateway RPC, in-process, for
// the collector's own gateway front ends (HTTP forward-auth, Envoy
// ext_authz). Errors are gRPC statuses.
func (c *Collector) CheckAccess(ctx context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	return c.gateway.CheckAccess(ctx, req)
}

// TrustDomain is the collector's SPIFFE trust domain.
func (c *Collector) TrustDomain() string { return c.cfg.TrustDomain }
