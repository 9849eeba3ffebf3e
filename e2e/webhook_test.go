package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector/webhook"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// hookReceiver is a webhook endpoint written as a receiver would: it
// checks every request's signature, and records each event it is sent.
// While down it still reads (and records) what it is sent but answers
// 503, as a receiver that timed out after processing does: the collector
// sends the same event again, with the same ID.
type hookReceiver struct {
	t      *testing.T
	secret []byte
	mu     sync.Mutex
	down   bool
	events []webhook.Event
	bad    int
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := webhook.Verify(h.secret, body, r.Header.Get(webhook.HeaderSignature), time.Now(), 5*time.Minute); err != nil {
		h.mu.Lock()
		h.bad++
		h.mu.Unlock()
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var ev webhook.Event
	if err := json.Unmarshal(body, &ev); err != nil || ev.ID != r.Header.Get(webhook.HeaderEventID) || ev.Type != r.Header.Get(webhook.HeaderEventType) {
		http.Error(w, "malformed event", http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, ev)
	if h.down {
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}
}

func (h *hookReceiver) setDown(down bool) {
	h.mu.Lock()
	h.down = down
	h.mu.Unlock()
}

// distinct is each event once, by ID, with how many times it came.
func (h *hookReceiver) distinct() (map[string]webhook.Event, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	byID, times := map[string]webhook.Event{}, map[string]int{}
	for _, ev := range h.events {
		if prev, ok := byID[ev.ID]; ok && (prev.Type != ev.Type || prev.Sequence != ev.Sequence || string(prev.Data) != string(ev.Data)) {
			h.t.Errorf("event %s came twice with different content: %+v and %+v", ev.ID, prev, ev)
		}
		byID[ev.ID] = ev
		times[ev.ID]++
	}
	return byID, times
}

// TestWebhookAcrossKill: a receiver checking signatures gets every event
// though it is down for a while and the collector process is killed
// (SIGKILL) meanwhile and started again; events sent again carry the ID
// they had.
func TestWebhookAcrossKill(t *testing.T) {
	bin, _ := builtBinaries(t)
	secret := "e2e-webhook-secret-0123456789abcdef"
	secretFile := filepath.Join(t.TempDir(), "hook.secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &hookReceiver{t: t, secret: []byte(secret)}
	hookAddr := freeAddr(t)
	srv := &http.Server{Addr: hookAddr, Handler: h}
	go srv.ListenAndServe()
	t.Cleanup(func() { srv.Close() })

	r := &replica{set: &replicaSet{t: t, bin: bin}, name: "collector-a", dataDir: t.TempDir(), addr: freeAddr(t),
		extra: []string{"--webhook", "name=tickets,url=http://" + hookAddr + "/hook,secret-file=" + secretFile,
			"--receiver-retry-min", "50ms", "--receiver-retry-max", "200ms"}}
	r.start()

	enroll := func(n int) []string {
		t.Helper()
		var ids []string
		tok := r.token(n)
		for range n {
			res, err := agent.Enroll(context.Background(), t.TempDir(), tok)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, res.DeviceID)
		}
		return ids
	}
	want := map[string]bool{} // "type device" of every event
	for _, id := range enroll(2) {
		want["device.enrolled "+id] = true
	}
	received := func() bool {
		byID, _ := h.distinct()
		got := map[string]bool{}
		for _, ev := range byID {
			var d struct {
				Device struct{ ID string } `json:"device"`
			}
			json.Unmarshal(ev.Data, &d)
			got[ev.Type+" "+d.Device.ID] = true
		}
		for k := range want {
			if !got[k] {
				return false
			}
		}
		return len(got) == len(want)
	}
	eventually(t, "the first events", received)

	// Down: the changes wait in the outbox, the collector retrying.
	h.setDown(true)
	more := enroll(3)
	for _, id := range more {
		want["device.enrolled "+id] = true
	}
	for _, id := range more[:2] {
		if out, code := r.cli("devices", "revoke", id, "--reason", "lost"); code != 0 {
			t.Fatalf("revoke: %s", out)
		}
		want["device.revoked "+id] = true
	}
	eventually(t, "the receiver failing in stats", func() bool {
		out, code := r.cli("stats", "-o", "json")
		var s posturev1.Stats
		if code != 0 || protojson.Unmarshal([]byte(out), &s) != nil {
			return false
		}
		for _, rs := range s.GetReceivers() {
			if rs.GetId() == "webhook:tickets" {
				return rs.GetAttempts() >= 2 && rs.GetState() == "failing" && rs.GetPending() >= 5 && strings.Contains(rs.GetLastError(), "503")
			}
		}
		return false
	})

	// Killed while the receiver is down, and started again.
	r.kill()
	r.start()
	h.setDown(false)
	eventuallyWithin(t, 20*time.Second, "every event after the restart", received)

	byID, times := h.distinct()
	again := 0
	for id, n := range times {
		if n > 1 {
			again++
		}
		if byID[id].ID != id {
			t.Errorf("event %s recorded under another ID", id)
		}
	}
	if again == 0 {
		t.Error("no event was sent twice, though the receiver answered 503 after reading them: the test proves nothing about IDs")
	}
	if h.bad != 0 {
		t.Errorf("%d requests with a bad signature", h.bad)
	}
	t.Logf("%d events, %d of them sent more than once with the same ID", len(byID), again)
}
