package store

import (
	"errors"
	"time"
)

// ErrLeaseLost is returned when a collector records a delivery to a
// receiver whose lease it no longer holds: another collector took the
// receiver over (its lease had run out). Nothing changed.
var ErrLeaseLost = errors.New("another collector holds this receiver's lease now")

// Receiver is one destination of the outbox and how far delivery to it
// got. Every collector sharing the database sees every receiver; one at a
// time delivers each (the holder of its lease), so a receiver's messages
// go out in order, from one place, and a receiver that is down holds
// back only itself.
type Receiver struct {
	ID   string // "webhook:NAME", "siem:NAME" or "ssf:STREAM-ID"
	Kind string // webhook, siem or ssf
	// Config is what the database keeps of the receiver's settings: an
	// SSF stream's, as JSON. Receivers configured on the collector's
	// command line have none.
	Config    []byte
	CreatedAt time.Time
	// Cursor is the sequence number of the last message delivered (or
	// passed over as not for this receiver): delivery resumes after it.
	// A new receiver starts at the end of the outbox.
	Cursor uint64
	// Holder and LeaseUntil: the collector (replica ID) delivering to the
	// receiver, until when, unless it renews.
	Holder     string
	LeaseUntil time.Time
	// Delivered counts messages delivered, the last at DeliveredAt.
	Delivered   uint64
	DeliveredAt time.Time
	// FailingSince is when the current run of failed attempts began; zero
	// while deliveries succeed. Attempts counts that run, and LastError
	// says what the last one met.
	FailingSince time.Time
	Attempts     uint32
	LastError    string
}

// DeviceUser binds a device to the person who uses it, as the identity
// provider knows them, so that Shared Signals receivers learn which user's
// sessions a device change concerns.
type DeviceUser struct {
	DeviceID string
	Email    string // may be empty when Issuer and Subject are set
	// Issuer and Subject name the user as an OpenID provider does (iss,
	// sub); both empty when only the email is known.
	Issuer  string
	Subject string
	BoundAt time.Time
}

// SSFClient is a Shared Signals receiver allowed to manage its streams
// through the transmitter's API, by a bearer token (only its hash is
// stored).
type SSFClient struct {
	Name      string
	TokenHash []byte // SHA-256 of the bearer token
	// Audience is the aud of the Security Event Tokens its streams get.
	Audience string
	// Level is the access level whose gain or loss is the device
	// compliance its streams are told of.
	Level     string
	CreatedAt time.Time
}

// SigningKey is a collector's public key for Security Event Tokens, as
// the transmitter's JWKS publishes it: every collector sharing the
// database keeps its private key in its data directory and records the
// public one here, so that any of them serves the keys of all.
type SigningKey struct {
	KID       string
	JWK       []byte // the public key as a JSON Web Key
	CreatedAt time.Time
}
