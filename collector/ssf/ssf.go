// Package ssf is the collector's OpenID Shared Signals Framework (SSF
// 1.0) transmitter: receivers such as Okta learn of device changes as
// Security Event Tokens (RFC 8417) pushed to them (RFC 8935), signed by a
// key the collector owns.
//
// What it sends: a CAEP device-compliance-change when a device gains or
// loses the access level its receiver follows (compliant while the device
// meets it), a CAEP session-revoked when the device is revoked (its
// sessions must end), and the SSF verification event a receiver asks for.
// The subject is the device (format opaque, its ID) and, when the device
// is bound to a user (posture-collector devices bind), the user by email
// or issuer and subject, as a complex subject.
//
// Streams live in the database as outbox receivers ("ssf:STREAM-ID"), so
// every collector sharing it delivers them, one at a time each, at least
// once; a SET's jti is its outbox message's ID, the same at every
// delivery.
package ssf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/store"
)

// Event types and the delivery method.
const (
	EventComplianceChange = "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change"
	EventSessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	EventVerification     = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	// DeliveryPush is RFC 8935 push delivery, the one method supported.
	DeliveryPush = "urn:ietf:rfc:8935"
)

// Supported lists the event types streams can get.
var Supported = []string{EventComplianceChange, EventSessionRevoked, EventVerification}

// Stream statuses.
const (
	StatusEnabled  = "enabled"
	StatusPaused   = "paused"
	StatusDisabled = "disabled"
)

// Stream is a stream as the database keeps it (store.Receiver.Config).
type Stream struct {
	ID string `json:"stream_id"`
	// Client is the SSFClient that owns it; Audience and Level are the
	// client's at the stream's creation.
	Client   string `json:"client"`
	Audience string `json:"aud"`
	Level    string `json:"level"`
	// EndpointURL is where SETs are pushed; Authorization, when set, is
	// the Authorization header sent with them.
	EndpointURL     string   `json:"endpoint_url"`
	Authorization   string   `json:"authorization_header,omitempty"`
	EventsRequested []string `json:"events_requested"`
	Description     string   `json:"description,omitempty"`
	// Status is enabled, paused (events are held until it is enabled) or
	// disabled (events are dropped); Reason says why.
	Status    string    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// ReceiverID is the outbox receiver of a stream.
func ReceiverID(streamID string) string { return "ssf:" + streamID }

// Delivered lists the event types the stream gets: those requested that
// are supported (all supported when none is requested).
func (s Stream) Delivered() []string {
	if len(s.EventsRequested) == 0 {
		return slices.Clone(Supported)
	}
	var out []string
	for _, e := range Supported {
		if slices.Contains(s.EventsRequested, e) {
			out = append(out, e)
		}
	}
	return out
}

// Store is what the transmitter keeps in the database.
type Store interface {
	AddReceiver(ctx context.Context, id, kind string, config []byte, now time.Time) (store.Receiver, error)
	SetReceiverConfig(ctx context.Context, id string, config []byte) error
	DeleteReceiver(ctx context.Context, id string) error
	Receiver(ctx context.Context, id string) (store.Receiver, error)
	Receivers(ctx context.Context) ([]store.Receiver, error)
	AppendOutbox(ctx context.Context, msgs []store.OutboxMessage) ([]store.OutboxMessage, error)
	DeviceUser(ctx context.Context, id string) (store.DeviceUser, error)
	SSFClients(ctx context.Context) ([]store.SSFClient, error)
	PublishSigningKey(ctx context.Context, k store.SigningKey) error
	SigningKeys(ctx context.Context) ([]store.SigningKey, error)
}

// Config configures a Transmitter.
type Config struct {
	// Issuer is the URL receivers know the transmitter by (iss of every
	// SET); its endpoints are below it.
	Issuer string
	Key    *Key
	Store  Store
	// Client pushes SETs; nil means one with a 10 s timeout.
	Client *http.Client
	// Changed is told when streams were created, changed or deleted, so
	// that delivery follows.
	Changed func()
	// Wrote is told when a message for one stream was written (a
	// verification).
	Wrote  func()
	Logger *slog.Logger
	Now    func() time.Time
}

// Transmitter is the SSF transmitter.
type Transmitter struct {
	cfg    Config
	issuer *url.URL
}

// New checks the configuration and publishes the key's public half.
func New(ctx context.Context, cfg Config) (*Transmitter, error) {
	u, err := url.Parse(cfg.Issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("SSF issuer %q: give the https URL receivers reach the transmitter at, such as https://posture.example.com", cfg.Issuer)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	if cfg.Wrote == nil {
		cfg.Wrote = func() {}
	}
	jwk, err := cfg.Key.PublicJWK()
	if err != nil {
		return nil, err
	}
	if err := cfg.Store.PublishSigningKey(ctx, store.SigningKey{KID: cfg.Key.KID(), JWK: jwk, CreatedAt: time.Now()}); err != nil {
		return nil, err
	}
	return &Transmitter{cfg: cfg, issuer: u}, nil
}

// Issuer is the transmitter's issuer URL.
func (t *Transmitter) Issuer() string { return t.issuer.String() }

// endpoint is the URL of one of the transmitter's endpoints.
func (t *Transmitter) endpoint(path string) string {
	u := *t.issuer
	u.Path += path
	return u.String()
}

// Errors of stream management, which the HTTP API and the admin RPCs map
// to their status codes.
var (
	ErrInvalid  = errors.New("invalid stream request")
	ErrNoStream = errors.New("no such stream")
)

// NewStream is what a receiver asks for when it creates a stream.
type NewStream struct {
	EndpointURL     string
	Authorization   string
	EventsRequested []string
	Description     string
}

// CreateStream creates a push stream owned by client.
func (t *Transmitter) CreateStream(ctx context.Context, client store.SSFClient, req NewStream) (Stream, error) {
	if err := checkEndpoint(req.EndpointURL); err != nil {
		return Stream{}, err
	}
	if strings.ContainsAny(req.Authorization, "\r\n") || strings.ContainsAny(req.Description, "\x00") {
		return Stream{}, fmt.Errorf("%w: the authorization header or description holds a line break or NUL", ErrInvalid)
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return Stream{}, err
	}
	s := Stream{ID: hex.EncodeToString(b), Client: client.Name, Audience: client.Audience, Level: client.Level, EndpointURL: req.EndpointURL,
		Authorization: req.Authorization, EventsRequested: req.EventsRequested, Description: req.Description, Status: StatusEnabled, CreatedAt: t.cfg.Now().UTC()}
	data, err := json.Marshal(s)
	if err != nil {
		return Stream{}, err
	}
	if _, err := t.cfg.Store.AddReceiver(ctx, ReceiverID(s.ID), "ssf", data, time.Now()); err != nil {
		return Stream{}, err
	}
	t.cfg.Changed()
	return s, nil
}

// checkEndpoint refuses push endpoints that are not https (plain http
// only to loopback).
func checkEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%w: delivery.endpoint_url %q is not an http(s) URL", ErrInvalid, endpoint)
	}
	if h := u.Hostname(); u.Scheme == "http" && h != "localhost" && !strings.HasPrefix(h, "127.") && h != "::1" {
		return fmt.Errorf("%w: delivery.endpoint_url %s is plain http to another host; use https", ErrInvalid, endpoint)
	}
	return nil
}

// StreamState is a stream with how delivery to it stands.
type StreamState struct {
	Stream
	Receiver store.Receiver
}

// Streams lists every stream, or those of one client (client non-empty).
func (t *Transmitter) Streams(ctx context.Context, client string) ([]StreamState, error) {
	rs, err := t.cfg.Store.Receivers(ctx)
	if err != nil {
		return nil, err
	}
	var out []StreamState
	for _, r := range rs {
		if r.Kind != "ssf" {
			continue
		}
		var s Stream
		if err := json.Unmarshal(r.Config, &s); err != nil {
			t.cfg.Logger.Error("a stream's stored configuration does not decode; it is not delivered", "receiver", r.ID, "err", err)
			continue
		}
		if client == "" || s.Client == client {
			out = append(out, StreamState{Stream: s, Receiver: r})
		}
	}
	return out, nil
}

// Stream returns one stream; with client set, only that client's.
func (t *Transmitter) Stream(ctx context.Context, id, client string) (Stream, error) {
	r, err := t.cfg.Store.Receiver(ctx, ReceiverID(id))
	if errors.Is(err, store.ErrNotFound) || (err == nil && r.Kind != "ssf") {
		return Stream{}, ErrNoStream
	}
	if err != nil {
		return Stream{}, err
	}
	var s Stream
	if err := json.Unmarshal(r.Config, &s); err != nil {
		return Stream{}, err
	}
	if client != "" && s.Client != client {
		return Stream{}, ErrNoStream
	}
	return s, nil
}

// UpdateStream stores a changed stream.
func (t *Transmitter) UpdateStream(ctx context.Context, s Stream) error {
	if err := checkEndpoint(s.EndpointURL); err != nil {
		return err
	}
	switch s.Status {
	case StatusEnabled, StatusPaused, StatusDisabled:
	default:
		return fmt.Errorf("%w: status %q: want enabled, paused or disabled", ErrInvalid, s.Status)
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := t.cfg.Store.SetReceiverConfig(ctx, ReceiverID(s.ID), data); errors.Is(err, store.ErrNotFound) {
		return ErrNoStream
	} else if err != nil {
		return err
	}
	t.cfg.Changed()
	return nil
}

// DeleteStream deletes a stream; with client set, only that client's.
func (t *Transmitter) DeleteStream(ctx context.Context, id, client string) error {
	if _, err := t.Stream(ctx, id, client); err != nil {
		return err
	}
	if err := t.cfg.Store.DeleteReceiver(ctx, ReceiverID(id)); errors.Is(err, store.ErrNotFound) {
		return ErrNoStream
	} else if err != nil {
		return err
	}
	t.cfg.Changed()
	return nil
}

// Verify sends a stream a verification event carrying state, through the
// outbox like every other event.
func (t *Transmitter) Verify(ctx context.Context, id, client, state string) error {
	s, err := t.Stream(ctx, id, client)
	if err != nil {
		return err
	}
	if s.Status == StatusDisabled {
		return fmt.Errorf("%w: the stream is disabled", ErrInvalid)
	}
	data, err := json.Marshal(store.OutboxData{State: state})
	if err != nil {
		return err
	}
	if _, err := t.cfg.Store.AppendOutbox(ctx, []store.OutboxMessage{{At: t.cfg.Now(), Kind: store.OutboxVerification, Receiver: ReceiverID(id), Data: data}}); err != nil {
		return err
	}
	t.cfg.Wrote()
	return nil
}

// Receivers lists the streams to deliver to: enabled ones, and disabled
// ones (whose events are passed over). A paused stream is left alone:
// its cursor waits, so its events are held until it is enabled again.
func (t *Transmitter) Receivers(ctx context.Context) ([]outbox.Receiver, error) {
	states, err := t.Streams(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []outbox.Receiver
	for _, st := range states {
		if st.Status == StatusPaused {
			continue
		}
		s := st.Stream
		out = append(out, outbox.Receiver{ID: ReceiverID(s.ID), Kind: "ssf", Wants: t.wants(s), Sender: &pusher{t: t, s: s}})
	}
	return out, nil
}

// wants says which messages a stream takes.
func (t *Transmitter) wants(s Stream) func(store.OutboxMessage) bool {
	delivered := s.Delivered()
	return func(m store.OutboxMessage) bool {
		if s.Status != StatusEnabled {
			return false
		}
		switch m.Kind {
		case store.OutboxVerification:
			return m.Receiver == ReceiverID(s.ID) && slices.Contains(delivered, EventVerification)
		case store.OutboxLevelGained, store.OutboxLevelLost:
			if m.Receiver != "" || !slices.Contains(delivered, EventComplianceChange) {
				return false
			}
			var d store.OutboxData
			return json.Unmarshal(m.Data, &d) == nil && d.Level == s.Level
		case store.OutboxDeviceRevoked:
			return m.Receiver == "" && slices.Contains(delivered, EventSessionRevoked)
		}
		return false
	}
}
