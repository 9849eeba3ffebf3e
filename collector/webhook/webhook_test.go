package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/testtools"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func message(kind string) store.OutboxMessage {
	return store.OutboxMessage{Seq: 7, ID: store.NewMessageID(), At: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), Kind: kind, DeviceID: "dev-1",
		Data: []byte(`{"device":{"id":"dev-1","hostname":"ada-laptop","state":"revoked"},"reason":"stolen"}`)}
}

// Each event is posted as JSON with its ID and type in headers and a
// Stripe-style signature that a receiver computing HMAC-SHA256 itself
// accepts; a receiver's 5xx is retried, a 4xx rejects the event.
func TestSend(t *testing.T) {
	var got []*http.Request
	var bodies [][]byte
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got, bodies = append(got, r), append(bodies, body)
		w.WriteHeader(status)
	}))
	defer srv.Close()
	w, err := New(Config{Name: "tickets", URL: srv.URL, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	m := message(store.OutboxDeviceRevoked)
	if n, err := w.Send(context.Background(), []store.OutboxMessage{m}); n != 1 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	r, body := got[0], bodies[0]
	if r.Header.Get(HeaderEventID) != m.ID || r.Header.Get(HeaderEventType) != "device.revoked" || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("headers %v", r.Header)
	}
	// The signature, checked as a receiver would, without this package.
	sig := r.Header.Get(HeaderSignature)
	var ts, v1 string
	for _, p := range strings.Split(sig, ",") {
		k, v, _ := strings.Cut(p, "=")
		if k == "t" {
			ts = v
		} else if k == "v1" {
			v1 = v
		}
	}
	mac := hmac.New(sha256.New, secret)
	io.WriteString(mac, ts+"."+string(body))
	if hex.EncodeToString(mac.Sum(nil)) != v1 {
		t.Errorf("signature %q does not verify", sig)
	}
	if err := Verify(secret, body, sig, time.Now(), 5*time.Minute); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if err := Verify(secret, append(body, ' '), sig, time.Now(), 5*time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify of another body: %v", err)
	}
	if err := Verify(secret, body, sig, time.Now().Add(time.Hour), 5*time.Minute); !errors.Is(err, ErrStale) {
		t.Errorf("Verify an hour later: %v", err)
	}
	var ev struct {
		ID        string    `json:"id"`
		Type      string    `json:"type"`
		CreatedAt time.Time `json:"created_at"`
		Sequence  uint64    `json:"sequence"`
		Data      struct {
			Device struct{ ID, Hostname, State string } `json:"device"`
			Reason string                               `json:"reason"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.ID != m.ID || ev.Type != "device.revoked" || !ev.CreatedAt.Equal(m.At) || ev.Sequence != 7 || ev.Data.Device.ID != "dev-1" || ev.Data.Device.State != "revoked" || ev.Data.Reason != "stolen" {
		t.Errorf("body %s", body)
	}

	status = http.StatusServiceUnavailable
	if n, err := w.Send(context.Background(), []store.OutboxMessage{m}); n != 0 || err == nil || errors.Is(err, outbox.ErrRejected) {
		t.Errorf("a 503: %d, %v; want a failure to retry", n, err)
	}
	status = http.StatusUnprocessableEntity
	if _, err := w.Send(context.Background(), []store.OutboxMessage{m}); !errors.Is(err, outbox.ErrRejected) {
		t.Errorf("a 422: %v; want the event rejected", err)
	}
}

func TestConfig(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "a b", URL: "https://x", Secret: secret}, "without spaces"},
		{Config{Name: "a", URL: "ftp://x", Secret: secret}, "not an http(s) URL"},
		{Config{Name: "a", URL: "http://tickets.example.com/hook", Secret: secret}, "plain http to another host"},
		{Config{Name: "a", URL: "https://x", Secret: []byte("short")}, "shorter than 16"},
		{Config{Name: "a", URL: "https://x", Secret: secret, Events: []string{"device.stolen"}}, `unknown event type "device.stolen"`},
	} {
		if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
	w, err := New(Config{Name: "a", URL: "http://127.0.0.1:9/hook", Secret: secret, Events: []string{"level.*", "device.revoked"}})
	if err != nil {
		t.Fatal(err)
	}
	r := w.Receiver()
	for kind, want := range map[string]bool{"level.lost": true, "level.gained": true, "device.revoked": true, "device.enrolled": false, "decision": false} {
		if got := r.Wants(store.OutboxMessage{Kind: kind}); got != want {
			t.Errorf("wants %s = %v", kind, got)
		}
	}
	if r.Wants(store.OutboxMessage{Kind: "level.lost", Receiver: "ssf:x"}) {
		t.Error("a message for another receiver is wanted")
	}
}

// The events in docs/webhooks.md are events as a receiver decodes them.
func TestWebhookDoc(t *testing.T) {
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "webhooks.md"), "## The request", "json")
	if len(blocks) != 2 {
		t.Fatalf("docs/webhooks.md has %d json examples, want 2", len(blocks))
	}
	for _, b := range blocks {
		dec := json.NewDecoder(strings.NewReader(b))
		dec.DisallowUnknownFields()
		var ev struct {
			Event
			Data store.OutboxData `json:"data"`
		}
		if err := dec.Decode(&ev); err != nil {
			t.Errorf("%v:\n%s", err, b)
			continue
		}
		if len(ev.ID) != 36 || !slices.Contains(Types, ev.Type) || ev.CreatedAt.IsZero() || ev.Data.Device == nil {
			t.Errorf("example %+v", ev)
		}
	}
}

// The shell check in docs/webhooks.md accepts a real signature and
// refuses another body's.
func TestWebhookDocShell(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("SKIPPED: openssl not found, the doc's shell check is not run")
	}
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "webhooks.md"), "## Checking the signature", "sh")
	if len(blocks) != 1 {
		t.Fatalf("docs/webhooks.md has %d sh blocks under its signature check, want 1", len(blocks))
	}
	dir := t.TempDir()
	body := []byte(`{"id":"x","type":"device.revoked"}`)
	os.WriteFile(filepath.Join(dir, "tickets.secret"), append(secret, '\n'), 0o600)
	run := func(body []byte, sig string) string {
		os.WriteFile(filepath.Join(dir, "body.json"), body, 0o600)
		cmd := exec.Command("bash", "-c", blocks[0])
		cmd.Dir, cmd.Env = dir, append(os.Environ(), "sig="+sig)
		out, _ := cmd.CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	sig := Sign(secret, body, time.Now())
	if got := run(body, sig); got != "valid" {
		t.Errorf("the doc's check of a real signature says %q", got)
	}
	if got := run([]byte(`{"id":"y"}`), sig); got == "valid" {
		t.Error("the doc's check accepts another body")
	}
}
