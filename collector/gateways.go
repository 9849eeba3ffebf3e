package collector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// revokedGateways holds the serials (hex) of revoked gateway certificates
// and why: a handful, checked at every call a gateway makes.
type revokedGateways struct {
	mu      sync.RWMutex
	reasons map[string]string
}

func (r *revokedGateways) load(gws []store.Gateway) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = map[string]string{}
	for _, g := range gws {
		if !g.RevokedAt.IsZero() {
			r.reasons[g.Serial] = g.RevokeReason
		}
	}
}

func (r *revokedGateways) add(serials []string, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range serials {
		r.reasons[s] = reason
	}
}

// GatewayRevoked says why the gateway certificate with serial (hex) was
// revoked, or returns nil while it stands.
func (c *Collector) GatewayRevoked(serial string) error {
	c.gateways.mu.RLock()
	reason, revoked := c.gateways.reasons[strings.ToLower(serial)]
	c.gateways.mu.RUnlock()
	if revoked {
		return fmt.Errorf("gateway certificate %s was revoked (%s); issue a new one with posture-collector gateway add", serial, reason)
	}
	return nil
}

func (a *adminService) ListGateways(ctx context.Context, _ *posturev1.ListGatewaysRequest) (*posturev1.ListGatewaysResponse, error) {
	gws, err := a.c.store.Gateways(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	out := &posturev1.ListGatewaysResponse{}
	for _, g := range gws {
		p := &posturev1.Gateway{Name: g.Name, Serial: g.Serial, RevokeReason: g.RevokeReason}
		if !g.IssuedAt.IsZero() && g.IssuedAt.UnixNano() != 0 {
			p.IssuedAt, p.ExpiresAt = timestamppb.New(g.IssuedAt), timestamppb.New(g.ExpiresAt)
		}
		if !g.RevokedAt.IsZero() {
			p.RevokedAt = timestamppb.New(g.RevokedAt)
		}
		out.Gateways = append(out.Gateways, p)
	}
	return out, nil
}

func (a *adminService) RevokeGateway(ctx context.Context, req *posturev1.RevokeGatewayRequest) (*posturev1.RevokeGatewayResponse, error) {
	c := a.c
	name, serial := req.GetName(), strings.ToLower(req.GetSerial())
	switch {
	case (name == "") == (serial == ""):
		return nil, status.Error(codes.InvalidArgument, "give a gateway name or a certificate serial (--serial), not both")
	case strings.TrimSpace(req.GetReason()) == "":
		return nil, status.Error(codes.InvalidArgument, "a reason is required (--reason): it is kept and shown to the gateway")
	case serial != "" && (len(serial) > 64 || strings.Trim(serial, "0123456789abcdef") != ""):
		return nil, status.Errorf(codes.InvalidArgument, "serial %q is not a certificate serial in hex (posture-collector gateway list shows them)", req.GetSerial())
	}
	revoked, err := c.store.RevokeGateways(ctx, name, serial, req.GetReason(), c.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "no gateway certificate was issued to %q (posture-collector gateway list shows them); a certificate issued before the collector kept a list is revoked by --serial", name)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	c.gateways.add(revoked, req.GetReason())
	c.log.Warn("gateway certificates revoked", "gateway", name, "serials", revoked, "reason", req.GetReason())
	return &posturev1.RevokeGatewayResponse{Revoked: uint32(len(revoked))}, nil
}
