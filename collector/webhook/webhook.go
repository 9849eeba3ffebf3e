// Package webhook delivers outbox messages as signed JSON webhooks.
//
// Each message is one POST of an Event as JSON, signed the way Stripe
// signs its webhooks: the Posture-Signature header carries the time of the
// attempt and an HMAC-SHA256, with the receiver's secret, over that time, a
// dot and the body (t=1733570000,v1=5257a869…). A receiver checks the
// signature (Verify) and that the time is recent, and de-duplicates by the
// event's ID, which is the same at every attempt: delivery is at least
// once.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/store"
)

// Headers of a webhook request.
const (
	// HeaderSignature is t=<unix seconds>,v1=<hex HMAC-SHA256 of
	// "<t>.<body>">.
	HeaderSignature = "Posture-Signature"
	// HeaderEventID is the event's stable ID (Event.ID).
	HeaderEventID = "Posture-Event-Id"
	// HeaderEventType is Event.Type.
	HeaderEventType = "Posture-Event-Type"
)

// Event is the JSON body of a webhook.
type Event struct {
	// ID is the same at every delivery of the event: de-duplicate by it.
	ID string `json:"id"`
	// Type is what happened: device.enrolled, device.approved,
	// device.suspect, device.revoked, device.active, device.pending,
	// level.gained, level.lost, check.failing, check.passing or
	// grace.ending.
	Type string `json:"type"`
	// CreatedAt is when the change was made.
	CreatedAt time.Time `json:"created_at"`
	// Sequence is the event's place among the collectors' events: later
	// events have higher ones (gaps are normal).
	Sequence uint64 `json:"sequence"`
	// Data says what changed (store.OutboxData).
	Data json.RawMessage `json:"data"`
}

// DefaultEvents are the event types a webhook gets unless configured
// otherwise: every change of a device.
var DefaultEvents = []string{"device.*", "level.*", "check.*", "grace.*"}

// Config configures one webhook.
type Config struct {
	// Name names the webhook; its receiver is "webhook:NAME".
	Name string
	// URL is where events are posted (https, or http to a loopback
	// address).
	URL string
	// Secret signs every request.
	Secret []byte
	// Events are the types sent, each a type or a prefix ending in ".*";
	// empty means DefaultEvents.
	Events []string
	// Timeout bounds one attempt (default 10 s).
	Timeout time.Duration
	// Client sends the requests; nil means one of its own.
	Client *http.Client
	// UserAgent names the sender.
	UserAgent string
}

// Webhook sends events to one URL.
type Webhook struct {
	cfg Config
}

// minSecret is the shortest secret accepted.
const minSecret = 16

// New checks a webhook's configuration.
func New(cfg Config) (*Webhook, error) {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, " \t\r\n,=:") {
		return nil, fmt.Errorf("webhook name %q: give a name without spaces, commas, colons or equal signs", cfg.Name)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("webhook %s: url %q is not an http(s) URL", cfg.Name, cfg.URL)
	}
	if u.Scheme == "http" && !loopback(u.Hostname()) {
		return nil, fmt.Errorf("webhook %s: %s is plain http to another host: events would cross the network in the clear; use https", cfg.Name, cfg.URL)
	}
	if len(cfg.Secret) < minSecret {
		return nil, fmt.Errorf("webhook %s: the secret is shorter than %d bytes; make one with openssl rand -hex 32", cfg.Name, minSecret)
	}
	if len(cfg.Events) == 0 {
		cfg.Events = DefaultEvents
	}
	for _, e := range cfg.Events {
		if !knownEvent(e) {
			return nil, fmt.Errorf("webhook %s: unknown event type %q (known: %s, or a prefix such as level.*)", cfg.Name, e, strings.Join(Types, ", "))
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "posture-collector"
	}
	return &Webhook{cfg: cfg}, nil
}

// Types lists the event types a webhook can get.
var Types = []string{store.OutboxDeviceEnrolled, store.OutboxDeviceApproved, store.OutboxDeviceSuspect, store.OutboxDeviceRevoked,
	store.OutboxDeviceActive, store.OutboxDevicePending, store.OutboxLevelGained, store.OutboxLevelLost,
	store.OutboxCheckFailing, store.OutboxCheckPassing, store.OutboxGraceEnding}

func knownEvent(e string) bool {
	for _, t := range Types {
		if matches(e, t) {
			return true
		}
	}
	return false
}

// matches says whether a configured type (or prefix.*) covers kind.
func matches(pattern, kind string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(kind, p)
	}
	return pattern == kind
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	return strings.HasPrefix(host, "127.") || host == "::1"
}

// Receiver is the webhook as the outbox delivers to it.
func (w *Webhook) Receiver() outbox.Receiver {
	return outbox.Receiver{ID: "webhook:" + w.cfg.Name, Kind: "webhook", Wants: w.wants, Sender: w}
}

func (w *Webhook) wants(m store.OutboxMessage) bool {
	if m.Receiver != "" {
		return false
	}
	for _, e := range w.cfg.Events {
		if matches(e, m.Kind) {
			return true
		}
	}
	return false
}

// Body is a message's webhook body.
func Body(m store.OutboxMessage) ([]byte, error) {
	data := json.RawMessage(m.Data)
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	return json.Marshal(Event{ID: m.ID, Type: m.Kind, CreatedAt: m.At.UTC(), Sequence: m.Seq, Data: data})
}

// Sign is the Posture-Signature of body at t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Errors of Verify.
var (
	ErrNoSignature  = errors.New("no Posture-Signature with a time and a v1 signature")
	ErrBadSignature = errors.New("the signature does not match the body")
	ErrStale        = errors.New("the signature's time is too far from now")
)

// Verify checks a Posture-Signature header over body with secret, and
// that its time is within tolerance of now: what a receiver runs.
func Verify(secret, body []byte, header string, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrNoSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range sigs {
		got, err := hex.DecodeString(s)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrBadSignature
}

// Send posts each message in order and stops at the first that fails.
func (w *Webhook) Send(ctx context.Context, msgs []store.OutboxMessage) (int, error) {
	for i, m := range msgs {
		if err := w.post(ctx, m); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

func (w *Webhook) post(ctx context.Context, m store.OutboxMessage) error {
	body, err := Body(m)
	if err != nil {
		return fmt.Errorf("encode event %s: %w: %w", m.ID, err, outbox.ErrRejected)
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", w.cfg.UserAgent)
	h.Set(HeaderEventID, m.ID)
	h.Set(HeaderEventType, m.Kind)
	h.Set(HeaderSignature, Sign(w.cfg.Secret, body, time.Now()))
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("post to %s: %w", w.cfg.URL, err)
	}
	defer resp.Body.Close()
	detail, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return fmt.Errorf("%s answered %s: %s", w.cfg.URL, resp.Status, strings.TrimSpace(string(detail)))
	default:
		return fmt.Errorf("%s answered %s to event %s: %s: %w", w.cfg.URL, resp.Status, m.ID, strings.TrimSpace(string(detail)), outbox.ErrRejected)
	}
}
