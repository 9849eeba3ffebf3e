// Package gateways holds what a collector knows of gateway certificates
// while it runs: which were revoked and why, and the open streams of each
// so that a revocation ends them at once.
package gateways

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
)

// ErrRevoked is what a revoked gateway certificate is refused with; it is
// wrapped with the serial and the reason.
var ErrRevoked = errors.New("gateway certificate revoked")

// Revocations holds the serials (hex, as pki.SerialHex writes them) of
// revoked gateway certificates and why: a handful, checked at every call a
// gateway makes.
type Revocations struct {
	mu      sync.RWMutex
	reasons map[string]string
	// streams are the open streams of gateways, by certificate serial,
	// ended when it is revoked.
	streams map[string]map[*stream]struct{}
}

type stream struct{ end context.CancelCauseFunc }

// New makes the revocations of the gateway certificates gws as stored.
func New(gws []store.Gateway) *Revocations {
	r := &Revocations{reasons: map[string]string{}, streams: map[string]map[*stream]struct{}{}}
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
	return r
}

// revokedError is the error of a revoked certificate.
func revokedError(serial, reason string) error {
	return fmt.Errorf("%w: certificate %s was revoked (%s); issue a new one with posture-collector gateway add", ErrRevoked, serial, reason)
}

// Check says why the gateway certificate with serial was revoked, or
// returns nil while it stands.
func (r *Revocations) Check(serial string) error {
	r.mu.RLock()
	reason, revoked := r.reasons[serial]
	r.mu.RUnlock()
	if revoked {
		return revokedError(serial, reason)
	}
	return nil
}

// Track returns ctx, ended with the revocation as its cause when the
// certificate with serial is revoked (at once if it already is), and the
// function to call when the stream is over.
func (r *Revocations) Track(ctx context.Context, serial string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	s := &stream{end: cancel}
	r.mu.Lock()
	defer r.mu.Unlock()
	if reason, revoked := r.reasons[serial]; revoked {
		cancel(revokedError(serial, reason))
		return ctx, func() {}
	}
	if r.streams[serial] == nil {
		r.streams[serial] = map[*stream]struct{}{}
	}
	r.streams[serial][s] = struct{}{}
	return ctx, func() {
		r.mu.Lock()
		delete(r.streams[serial], s)
		if len(r.streams[serial]) == 0 {
			delete(r.streams, serial)
		}
		r.mu.Unlock()
		cancel(nil)
	}
}

// Revoke records revoked serials and ends their open streams.
func (r *Revocations) Revoke(serials []string, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range serials {
		r.reasons[s] = reason
		for st := range r.streams[s] {
			st.end(revokedError(s, reason))
		}
	}
}
