package collector

import (
	"context"
	"errors"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// revokedGateways holds the serials (hex) of revoked gateway certificates
// and why: a handful, checked at every call a gateway makes.
type revokedGateways struct {
	mu      sync.RWMutex
	reasons map[string]string
	// streams are the open streams of gateways, by certificate serial,
	// ended when it is revoked.
	streams map[string]map[*gatewayStream]struct{}
}

type gatewayStream struct{ end context.CancelCauseFunc }

// track returns ctx, ended with an Unauthenticated status as its cause
// when the certificate with serial is revoked (at once if it already is),
// and the function to call when the stream is over.
func (r *revokedGateways) track(ctx context.Context, serial string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	gs := &gatewayStream{end: cancel}
	r.mu.Lock()
	defer r.mu.Unlock()
	if reason, revoked := r.reasons[serial]; revoked {
		cancel(revokedError(serial, reason))
		return ctx, func() {}
	}
	if r.streams == nil {
		r.streams = map[string]map[*gatewayStream]struct{}{}
	}
	if r.streams[serial] == nil {
		r.streams[serial] = map[*gatewayStream]struct{}{}
	}
	r.streams[serial][gs] = struct{}{}
	return ctx, func() {
		r.mu.Lock()
		delete(r.streams[serial], gs)
		if len(r.streams[serial]) == 0 {
			delete(r.streams, serial)
		}
		r.mu.Unlock()
		cancel(nil)
	}
}

func revokedError(serial, reason string) error {
	return status.Errorf(codes.Unauthenticated, "gateway certificate %s was revoked (%s); issue a new one with posture-collector gateway add", serial, reason)
}

func (r *revokedGateways) load(gws []store.Gateway) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = map[string]string{}
	for _, g := range gws {
		if !g.RevokedAt.IsZero() {
			// A serial revoked before serials were read in one spelling
			// (0A1B… as openssl prints it) counts as the certificate's.
			serial := g.Serial
			if canon, err := pki.CanonicalSerial(serial); err == nil {
				serial = canon
			}
			r.reasons[serial] = g.RevokeReason
		}
	}
}

// add records revoked serials and ends their open streams.
func (r *revokedGateways) add(serials []string, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range serials {
		r.reasons[s] = reason
		for gs := range r.streams[s] {
			gs.end(revokedError(s, reason))
		}
	}
}

// GatewayRevoked says why the gateway certificate with serial (as
// pki.SerialHex writes it) was revoked, or returns nil while it stands.
func (c *Collector) GatewayRevoked(serial string) error {
	c.gateways.mu.RLock()
	reason, revoked := c.gateways.reasons[serial]
	c.gateways.mu.RUnlock()
	if revoked {
		return errors.New(status.Convert(revokedError(serial, reason)).Message())
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
