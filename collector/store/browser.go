package store

import (
	"context"
	"time"
)

// The kinds of event of the browser path.
const (
	// EventMeasureRequested: a device's user asked for a new measurement
	// (Check again on a deny page). It changes nothing stored; the
	// collector holding the device's report stream, whichever it is, asks
	// the agent to measure now.
	EventMeasureRequested EventKind = "measure_requested"
	// EventBrowserCert: a browser certificate was issued to a user of a
	// device (Event.BrowserCert); it replaces the user's previous one.
	EventBrowserCert EventKind = "browser_cert"
)

// BrowserCert is a short-lived client certificate issued for a key a
// device's user holds in their browsers' certificate store. Gateways
// accept it as the device while it is the user's newest on the device and
// the device still holds the certificate it was issued under.
type BrowserCert struct {
	DeviceID string `json:"device_id"`
	// User is the local account it was issued for; one counts per user
	// and device.
	User string `json:"user"`
	// Serial is the certificate's serial number, lowercase hex.
	Serial string `json:"serial"`
	// KeySHA256 is the SHA-256 of its SubjectPublicKeyInfo: a certificate
	// counts by serial and key together.
	KeySHA256 []byte `json:"key_sha256"`
	// IssuedUnder is the serial (hex) of the device certificate that
	// asked: once the device renews it or enrolls again, the browser
	// certificate no longer counts.
	IssuedUnder string `json:"issued_under"`
	// IssuedUnderKeySHA256 is the SHA-256 of that device certificate's
	// public key: the device certificate counts by serial and key, and so
	// does the one a browser certificate was issued under.
	IssuedUnderKeySHA256 []byte    `json:"issued_under_key_sha256"`
	IssuedAt             time.Time `json:"issued_at"`
	NotAfter             time.Time `json:"not_after"`
}

// BrowserStore keeps browser certificates and carries requests for new
// measurements to every collector. Both backends implement it.
type BrowserStore interface {
	// RequestMeasurement records an EventMeasureRequested for a device.
	// An unknown device returns ErrNotFound and records nothing.
	RequestMeasurement(ctx context.Context, deviceID string, now time.Time) (Event, error)
	// AddBrowserCert records c as the newest browser certificate of its
	// user on its device, replacing the previous one, with its
	// EventBrowserCert. An unknown device returns ErrNotFound.
	AddBrowserCert(ctx context.Context, c BrowserCert) (Event, error)
	// BrowserCerts lists the recorded browser certificates not expired at
	// now, for a collector loading its fleet.
	BrowserCerts(ctx context.Context, now time.Time) ([]BrowserCert, error)
}
