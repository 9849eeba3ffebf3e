package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// ErrNotBrowserCert means a certificate is neither the device's own nor a
// browser certificate the device's user holds now.
var ErrNotBrowserCert = errors.New("this certificate is not one the device holds now: its browser certificate was replaced or expired, or the device renewed its certificate or enrolled again since it was issued; run posture-agent browser-cert again")

// browserCert is what the fleet keeps of a browser certificate.
type browserCert struct {
	tag       uint64 // pki.CertTag over serial and key
	underTag  uint64 // CertTag (serial and key) of the device certificate it was issued under
	keySHA256 []byte
	notAfter  time.Time
}

// LoadBrowserCerts takes the recorded browser certificates (at start).
func (f *Fleet) LoadBrowserCerts(certs []store.BrowserCert) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range certs {
		f.putBrowserCert(c)
	}
}

// putBrowserCert records c as its user's browser certificate; f.mu is held.
func (f *Fleet) putBrowserCert(c store.BrowserCert) {
	if f.browser == nil {
		f.browser = map[string]map[string]browserCert{}
	}
	m := f.browser[c.DeviceID]
	if m == nil {
		m = map[string]browserCert{}
		f.browser[c.DeviceID] = m
	}
	m[c.User] = browserCert{tag: pki.CertTag(c.Serial, c.KeySHA256), underTag: CertTag(c.IssuedUnder, c.IssuedUnderKeySHA256),
		keySHA256: bytes.Clone(c.KeySHA256), notAfter: c.NotAfter}
}

// applyBrowserCert takes the certificate of an EventBrowserCert. It
// changes no decision, so watchers hear nothing of it.
func (f *Fleet) applyBrowserCert(ev store.Event) Applied {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.putBrowserCert(*ev.BrowserCert)
	return Applied{}
}

// BrowserCert says whether the certificate with serialHex and keySHA256
// is a browser certificate of the device that counts at now: the newest
// of its user, unexpired, issued under the device certificate the device
// holds now. A user's newest that no longer counts is ErrNotBrowserCert.
func (f *Fleet) BrowserCert(id, serialHex string, keySHA256 []byte, now time.Time) error {
	if len(keySHA256) == 0 {
		return ErrNotBrowserCert
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return ErrUnknownDevice
	}
	tag := pki.CertTag(serialHex, keySHA256)
	for _, c := range f.browser[id] {
		if c.tag != tag || !bytes.Equal(c.keySHA256, keySHA256) {
			continue
		}
		if now.Before(c.notAfter) && c.underTag == e.certTag {
			return nil
		}
		return ErrNotBrowserCert // its user's newest, but expired or issued under a replaced device certificate
	}
	return errUnknownBrowserCert
}

// errUnknownBrowserCert: no browser certificate of the device has this
// serial and key (any more).
var errUnknownBrowserCert = errors.New("not a browser certificate of the device")

// HeldCert says whether a certificate, by its serial (hex) and the SHA-256
// of its public key, is one the device holds now: its newest device
// certificate (CurrentCert; a nil keySHA256 checks the serial alone, which
// matches only a certificate whose key is not recorded), or a browser
// certificate of one of its users that counts at now (BrowserCert). It is
// what a gateway's certificate is checked with.
func (f *Fleet) HeldCert(id, serialHex string, keySHA256 []byte, now time.Time) error {
	err := f.CurrentCert(id, serialHex, keySHA256)
	if err == nil || keySHA256 == nil {
		return err
	}
	switch berr := f.BrowserCert(id, serialHex, keySHA256, now); {
	case berr == nil:
		return nil
	case errors.Is(berr, ErrNotBrowserCert):
		return berr // a browser certificate that no longer counts says so
	}
	return err
}

// CheckBrowserCertAllowed refuses a browser certificate to a device that
// may not have one: unknown or revoked (CheckActive), pending an admin's
// approval, or suspect. Such a device meets no access level, so its
// certificate would open nothing; refusing it tells the user why at once,
// where they ask, rather than at every gateway.
func (f *Fleet) CheckBrowserCertAllowed(id string) error {
	if err := f.CheckActive(id); err != nil {
		return err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return fmt.Errorf("device %s: %w", id, ErrUnknownDevice)
	}
	switch e.subject.State {
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return fmt.Errorf("device %s is pending approval: it meets no access level until an admin approves it (posture-collector devices approve %s)", id, id)
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return fmt.Errorf("device %s is suspect (%s): it meets no access level until an admin clears it", id, e.subject.StateReason)
	}
	return nil
}

// RequestMeasure asks the agent of a device to measure now, over the
// report streams this collector holds of it that accept MeasureNow, and
// says how many it asked.
func (f *Fleet) RequestMeasure(id string) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := 0
	for s := range f.streams[id] {
		if s.AcceptsMeasure.Load() {
			select {
			case s.Measure <- struct{}{}:
			default: // one is pending already
			}
			n++
		}
	}
	return n
}

// HoldsStream says whether a report stream of the device is open on this
// collector.
func (f *Fleet) HoldsStream(id string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.streams[id]) > 0
}
