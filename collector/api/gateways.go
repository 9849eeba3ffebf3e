package api

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (a *adminService) ListGateways(ctx context.Context, _ *posturev1.ListGatewaysRequest) (*posturev1.ListGatewaysResponse, error) {
	gws, err := a.s.cfg.Store.Gateways(ctx)
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
	c := a.s
	name, serial := req.GetName(), req.GetSerial()
	switch {
	case (name == "") == (serial == ""):
		return nil, status.Error(codes.InvalidArgument, "give a gateway name or a certificate serial (--serial), not both")
	case strings.TrimSpace(req.GetReason()) == "":
		return nil, status.Error(codes.InvalidArgument, "a reason is required (--reason): it is kept and shown to the gateway")
	case len(serial) > 128:
		return nil, status.Errorf(codes.InvalidArgument, "serial is %d bytes long; certificate serials are at most 20 bytes (posture-collector gateway list shows them)", len(serial))
	case serial != "":
		// One spelling per serial: 0A1B… as openssl prints it is the
		// certificate a1b… that gateway list shows.
		var err error
		if serial, err = pki.CanonicalSerial(serial); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%v (posture-collector gateway list shows them)", err)
		}
	}
	revoked, ev, err := c.cfg.Store.RevokeGateways(ctx, name, serial, req.GetReason(), c.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "no gateway certificate was issued to %q (posture-collector gateway list shows them); a certificate issued before the collector kept a list is revoked by --serial", name)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	c.cfg.Feed.Apply(ev, nil)
	c.cfg.Logger.Warn("gateway certificates revoked", "gateway", name, "serials", revoked, "reason", req.GetReason())
	return &posturev1.RevokeGatewayResponse{Revoked: uint32(len(revoked))}, nil
}
