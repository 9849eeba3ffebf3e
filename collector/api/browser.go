package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// DefaultBrowserCertTTL is how long a browser certificate lasts: a day, so
// that one copied out of a browser profile is of use for a day at most;
// the agent's per-user step renews it at each login and twice a day.
const DefaultBrowserCertTTL = 24 * time.Hour

// maxBrowserUser bounds the user name a browser certificate is for.
const maxBrowserUser = 64

// validBrowserUser says whether name can name a local account in a
// certificate's common name: short, and letters, digits and ._- only.
func validBrowserUser(name string) error {
	if name == "" || len(name) > maxBrowserUser {
		return fmt.Errorf("user is %d characters long; give 1 to %d", len(name), maxBrowserUser)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
		default:
			return fmt.Errorf("user %q has a character other than letters, digits, '_', '-' and '.'", name)
		}
	}
	return nil
}

// IssueBrowserCertificate issues a browser certificate to a user of the
// calling device, records it (serial and key hash) and applies it, so that
// every collector's gateways accept it as the device.
func (r *reportService) IssueBrowserCertificate(ctx context.Context, req *posturev1.IssueBrowserCertificateRequest) (*posturev1.IssueBrowserCertificateResponse, error) {
	s := r.s
	who := callerFrom(ctx)
	refuse := func(reason string, err error) error {
		s.cfg.Stats.BrowserCertRefused(reason)
		return err
	}
	if err := validBrowserUser(req.GetUser()); err != nil {
		return nil, refuse("malformed", status.Error(codes.InvalidArgument, err.Error()))
	}
	if len(req.GetPublicKey()) > 1024 {
		return nil, refuse("malformed", status.Errorf(codes.InvalidArgument, "public_key is %d bytes; a P-256 key is 91", len(req.GetPublicKey())))
	}
	pub, err := x509.ParsePKIXPublicKey(req.GetPublicKey())
	if err != nil {
		return nil, refuse("malformed", status.Errorf(codes.InvalidArgument, "public_key is not a PKIX DER public key: %v", err))
	}
	if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, refuse("malformed", status.Error(codes.InvalidArgument, "public_key must be an ECDSA P-256 key"))
	}
	if err := s.cfg.Fleet.CheckBrowserCertAllowed(who.name); err != nil {
		return nil, refuse("device_state", status.Errorf(codes.FailedPrecondition, "device %s gets no browser certificate: %v", who.name, err))
	}
	ttl := s.cfg.BrowserCertTTL
	if ttl <= 0 {
		ttl = DefaultBrowserCertTTL
	}
	id := pki.SPIFFEID(s.cfg.TrustDomain, pki.RoleDevice, who.name)
	cert, err := s.cfg.CA.IssueBrowser(pub, id, fmt.Sprintf("Posture device %s (%s)", who.name, req.GetUser()), ttl, who.notAfter)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	bc := store.BrowserCert{DeviceID: who.name, User: req.GetUser(), Serial: pki.SerialHex(cert), KeySHA256: pki.KeySHA256(cert),
		IssuedUnder: who.certSerial, IssuedUnderKeySHA256: who.certKey, IssuedAt: s.cfg.Now(), NotAfter: cert.NotAfter}
	ev, err := s.cfg.Store.AddBrowserCert(ctx, bc)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, refuse("unknown_device", status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", who.name))
	case err != nil:
		return nil, refuse("storage", status.Errorf(codes.Unavailable, "the collector cannot record the browser certificate now; try again: %v", err))
	}
	s.cfg.Feed.Apply(ev, nil)
	s.cfg.Stats.BrowserCertIssued()
	s.cfg.Logger.Info("browser certificate issued", "device", who.name, "user", req.GetUser(), "serial", bc.Serial, "not_after", cert.NotAfter)
	return &posturev1.IssueBrowserCertificateResponse{Certificate: cert.Raw, CaCertificate: s.cfg.CA.Cert.Raw}, nil
}

// RequestMeasurement records a request for a measurement of a device now
// and applies it: the collector holding the device's report stream, this
// one or another, asks its agent. It says whether this collector asked.
func (s *Server) RequestMeasurement(ctx context.Context, deviceID string) (bool, error) {
	ev, err := s.cfg.Store.RequestMeasurement(ctx, deviceID, s.cfg.Now())
	if err != nil {
		return false, err
	}
	held := s.cfg.Fleet.HoldsStream(deviceID)
	s.cfg.Feed.Apply(ev, nil)
	return held, nil
}
