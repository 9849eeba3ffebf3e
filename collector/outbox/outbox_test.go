package outbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
)

// inbox is a receiver's end, in memory: what it accepted, in order. While
// down it refuses everything; reject names message kinds it refuses for
// good.
type inbox struct {
	mu       sync.Mutex
	got      []store.OutboxMessage
	down     bool
	reject   string
	attempts int
}

func (b *inbox) Send(_ context.Context, msgs []store.OutboxMessage) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.attempts++
	for i, m := range msgs {
		switch {
		case b.down:
			return i, errors.New("connection refused")
		case m.Kind == b.reject:
			return i, fmt.Errorf("400 bad event: %w", ErrRejected)
		}
		b.got = append(b.got, m)
	}
	return len(msgs), nil
}

func (b *inbox) setDown(down bool) {
	b.mu.Lock()
	b.down = down
	b.mu.Unlock()
}

func (b *inbox) messages() []store.OutboxMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.got)
}

func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(filepath.Join(t.TempDir(), "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var ctx = context.Background()

func enroll(t *testing.T, s store.Store, id string) {
	t.Helper()
	tok := store.Token{Hash: []byte("token-" + id), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EnrollDevice(ctx, tok.Hash, time.Now(), store.Device{ID: id, Identity: "software", IdentityKey: []byte("k")}); err != nil {
		t.Fatal(err)
	}
}

// run starts a dispatcher for receivers until the test ends, and returns
// a function that stops it.
func run(t *testing.T, s store.Store, holder string, rs map[string]*inbox, mod func(*Config)) (*Dispatcher, func()) {
	t.Helper()
	for id := range rs {
		if _, err := s.AddReceiver(ctx, id, "webhook", nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Store: s, Holder: holder, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Lease: 300 * time.Millisecond,
		Receivers: func(context.Context) ([]Receiver, error) {
			var out []Receiver
			for id, b := range rs {
				out = append(out, Receiver{ID: id, Kind: "webhook", Sender: b, Wants: func(m store.OutboxMessage) bool { return m.Kind != store.OutboxDeviceApproved }})
			}
			return out, nil
		}}
	if mod != nil {
		mod(&cfg)
	}
	d := New(cfg)
	c, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); d.Run(c) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return d, stop
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Messages reach every receiver in order, once each while nothing fails;
// a receiver that is down holds back only itself, is marked down, and gets
// everything, in order, once it is back.
func TestDeliveryInOrderAndOutage(t *testing.T) {
	s := openStore(t)
	up, flaky := &inbox{}, &inbox{}
	d, _ := run(t, s, "c1", map[string]*inbox{"webhook:up": up, "webhook:flaky": flaky}, func(c *Config) { c.DownAfter = 100 * time.Millisecond })
	eventually(t, "leases", func() bool { return len(d.Held()) == 2 })
	flaky.setDown(true)
	for i := range 5 {
		enroll(t, s, fmt.Sprintf("dev-%d", i))
		d.Wake()
	}
	eventually(t, "the healthy receiver", func() bool { return len(up.messages()) == 5 })
	eventually(t, "the flaky receiver marked down", func() bool {
		st, err := d.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.ID == "webhook:flaky" {
				return s.State == "down" && s.Pending == 5 && s.LastError == "connection refused"
			}
		}
		return false
	})
	flaky.setDown(false)
	eventually(t, "the flaky receiver catching up", func() bool { return len(flaky.messages()) == 5 })
	for i, m := range flaky.messages() {
		if want := up.messages()[i]; m.ID != want.ID || m.Seq != want.Seq || m.DeviceID != fmt.Sprintf("dev-%d", i) {
			t.Errorf("message %d: %s %s, want %s %s", i, m.ID, m.DeviceID, want.ID, want.DeviceID)
		}
	}
	eventually(t, "the receiver ok again", func() bool {
		st, _ := d.Status(ctx)
		for _, s := range st {
			if s.ID == "webhook:flaky" {
				return s.State == "ok" && s.Pending == 0 && s.Delivered == 5 && s.Attempts == 0
			}
		}
		return false
	})
}

// A message the receiver rejects for good is passed over, and the ones
// after it go out; messages the receiver does not want are passed over
// without being sent.
func TestRejectedAndUnwanted(t *testing.T) {
	s := openStore(t)
	b := &inbox{reject: store.OutboxDeviceSuspect}
	d, _ := run(t, s, "c1", map[string]*inbox{"webhook:w": b}, nil)
	eventually(t, "lease", func() bool { return len(d.Held()) == 1 })
	enroll(t, s, "a")
	if _, err := s.SetDeviceState(ctx, "a", store.StateSuspect, "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	enroll(t, s, "b")
	d.Wake()
	eventually(t, "messages", func() bool { return len(b.messages()) == 2 })
	if got := b.messages(); got[0].DeviceID != "a" || got[1].DeviceID != "b" || got[1].Kind != store.OutboxDeviceEnrolled {
		t.Errorf("delivered %+v", got)
	}
	eventually(t, "the cursor past everything", func() bool {
		r, _ := s.Receiver(ctx, "webhook:w")
		last, _ := s.LastOutboxSeq(ctx)
		return r.Cursor == last
	})
}

// One collector at a time delivers to a receiver; when it stops, another
// takes over from the cursor, and what the first delivered but had not
// recorded goes out again with the same IDs: at least once.
func TestLeaseTakeover(t *testing.T) {
	s := openStore(t)
	b := &inbox{}
	rs := map[string]*inbox{"webhook:w": b}
	d1, stop1 := run(t, s, "c1", rs, nil)
	eventually(t, "c1's lease", func() bool { return len(d1.Held()) == 1 })
	d2, _ := run(t, s, "c2", rs, nil)
	for i := range 3 {
		enroll(t, s, fmt.Sprintf("dev-%d", i))
	}
	d1.Wake()
	d2.Wake()
	eventually(t, "three messages", func() bool { return len(b.messages()) == 3 })
	if len(d2.Held()) != 0 {
		t.Fatalf("c2 holds %v while c1 does", d2.Held())
	}
	stop1()
	enroll(t, s, "dev-3")
	eventually(t, "c2 takes over", func() bool { return len(d2.Held()) == 1 })
	d2.Wake()
	eventually(t, "the fourth message", func() bool { return len(b.messages()) == 4 })
	seen := map[string]bool{}
	for _, m := range b.messages() {
		if seen[m.ID] {
			t.Errorf("message %s delivered twice after a clean handover", m.ID)
		}
		seen[m.ID] = true
	}
}
