package collector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A restarted collector does not announce its whole fleet as changed on
// its first decay pass: only real changes reach watchers.
func TestRestartDoesNotFloodWatchers(t *testing.T) {
	dir, now := t.TempDir(), time.Now()
	seedStore(t, dir, []string{"a", "b", "c"}, testReport("a", 1, true, now), testReport("b", 1, true, now), testReport("c", 1, true, now))

	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer stopCollectorForTest(c)
	w, _, snap, rev, _ := c.subscribe(0)
	if len(snap) != 3 {
		t.Fatalf("snapshot has %d devices, want 3", len(snap))
	}
	// The snapshot, made from what was last published, says what a
	// decision made now says.
	pol := c.policy.Load()
	for _, e := range snap {
		got := c.snapshotEvent(e, rev).GetDevice()
		subj, _ := c.fleet.subject(e.id)
		want := c.render(e.id, keyOf(&subj, pol, time.Now()))
		want.Cause = "snapshot"
		if !proto.Equal(got, want) {
			t.Errorf("snapshot of %s = %v, want %v", e.id, got, want)
		}
	}
	c.decayPass()
	if n := len(w.ch); n != 0 {
		t.Errorf("first decay pass after a start sent %d events, want none", n)
	}
	// A real change still goes out.
	c.fleet.setState("b", posturev1.DeviceState_DEVICE_STATE_SUSPECT, "test")
	c.decayPass()
	if n := len(w.ch); n != 1 {
		t.Errorf("decay pass after a change sent %d events, want 1", n)
	}
}

// A gateway resuming with a revision from before a restart gets a full
// snapshot: the restarted collector does not have the events in between,
// and "nothing missed" would keep a device revoked meanwhile allowed.
func TestResumeAcrossRestartGetsSnapshot(t *testing.T) {
	dir, now := t.TempDir(), time.Now()
	seedStore(t, dir, []string{"a"}, testReport("a", 1, true, now))
	stop := stopCollectorForTest
	c1, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	w, _, _, rev, _ := c1.subscribe(0)
	c1.unsubscribe(w)
	stop(c1)

	// Revoked while the gateway was away, as RevokeDevice leaves it.
	st, err := store.Open(filepath.Join(dir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetDeviceState(context.Background(), "a", int32(posturev1.DeviceState_DEVICE_STATE_REVOKED), "stolen"); err != nil {
		t.Fatal(err)
	}
	st.Close()

	c2, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer stop(c2)
	w, missed, snap, rev2, resumed := c2.subscribe(rev)
	c2.unsubscribe(w)
	if resumed {
		t.Fatalf("resumed from revision %d of the previous run with %d events; want a snapshot", rev, len(missed))
	}
	if len(snap) != 1 || posturev1.DeviceState(snap[0].key.state) != posturev1.DeviceState_DEVICE_STATE_REVOKED {
		t.Fatalf("snapshot after the restart: %+v, want device a revoked", snap)
	}
	// Within one run a watcher still resumes.
	if w, _, _, _, resumed := c2.subscribe(rev2); !resumed {
		t.Error("a revision of this run did not resume")
	} else {
		c2.unsubscribe(w)
	}
}

// Events reach watchers in the order of the changes: a publish that raced
// a revocation never leaves watchers with the device active.
func TestPublishFollowsRevocation(t *testing.T) {
	dir, now := t.TempDir(), time.Now()
	seedStore(t, dir, []string{"a"}, testReport("a", 1, true, now))
	// Many levels widen the time between reading a device and publishing.
	var y strings.Builder
	y.WriteString("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels:\n")
	for i := range 60 {
		fmt.Fprintf(&y, "  - {name: l%d, expr: \"device.score >= 0 && device.score <= 100\"}\n", i)
	}
	pol, err := policy.Parse([]byte(y.String()))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	defer stopCollectorForTest(c)
	w, _, _, _, _ := c.subscribe(0)
	defer c.unsubscribe(w)
	for i := range 3000 {
		c.fleet.setState("a", posturev1.DeviceState_DEVICE_STATE_ACTIVE, "")
		c.publish("a", "report", true)
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Go(func() { <-start; c.publish("a", "decay", false) })
		wg.Go(func() {
			<-start
			for t0 := time.Now(); time.Since(t0) < time.Duration(i%8)*time.Microsecond; {
			}
			c.fleet.setState("a", posturev1.DeviceState_DEVICE_STATE_REVOKED, "stolen")
			c.publish("a", "revoked", true)
		})
		close(start)
		wg.Wait()
		var last *posturev1.DeviceDecision
	drain:
		for {
			select {
			case ev := <-w.ch:
				last = ev.ev.GetDevice()
			default:
				break drain
			}
		}
		if last.GetState() != posturev1.DeviceState_DEVICE_STATE_REVOKED {
			t.Fatalf("round %d: the device is revoked, but the last event says %v (cause %q)", i, last.GetState(), last.GetCause())
		}
	}
}

// The heartbeat interval defaults to 10 s and reaches watchers in
// SnapshotEnd; a negative one, or one below the floor, is refused before
// anything is created.
func TestWatchHeartbeatConfig(t *testing.T) {
	tests := []struct {
		name string
		in   time.Duration
		want time.Duration // in SnapshotEnd
		err  string
	}{
		{"default", 0, 10 * time.Second, ""},
		{"the floor", 100 * time.Millisecond, 100 * time.Millisecond, ""},
		{"short, for tests", 300 * time.Millisecond, 300 * time.Millisecond, ""},
		{"a minute", time.Minute, time.Minute, ""},
		{"negative", -time.Second, 0, "is negative"},
		{"below the floor", 99 * time.Millisecond, 0, "too short"},
		{"a nanosecond", 1, 0, "too short"},
		{"above the ceiling", time.Minute + time.Second, 0, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", WatchHeartbeat: tt.in})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "--watch-heartbeat") {
					t.Fatalf("New with WatchHeartbeat %v: %v; want an error saying %q and naming the flag", tt.in, err, tt.err)
				}
				if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused configuration created the data directory: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer stopCollectorForTest(c)
			w, missed, _, rev, _ := c.subscribe(0)
			c.unsubscribe(w)
			if len(missed) != 0 {
				t.Fatalf("a new watcher got %d replayed events", len(missed))
			}
			for _, resumed := range []bool{false, true} {
				if got := c.snapshotEnd(rev, resumed).GetSnapshotEnd().GetHeartbeatInterval().AsDuration(); got != tt.want {
					t.Errorf("SnapshotEnd (resumed %v) announces heartbeats every %v, want %v", resumed, got, tt.want)
				}
			}
		})
	}
}

func TestReportBudgetConfig(t *testing.T) {
	for _, tt := range []struct {
		burst int
		every time.Duration
		err   string
	}{
		{-1, 0, "--report-burst"},
		{2_000_000, 0, "--report-burst"},
		{0, 500 * time.Millisecond, "whole seconds"},
		{0, 1500 * time.Millisecond, "whole seconds"},
		{0, 25 * time.Hour, "--report-interval"},
		{1_000_000, 24 * time.Hour, "68 years"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		_, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", ReportBurst: tt.burst, ReportInterval: tt.every})
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("burst %d, interval %v: %v; want an error saying %q", tt.burst, tt.every, err, tt.err)
		}
	}
}

// Sets of levels are numbered by what they name: the same names get the
// same number from any goroutine, other names another, and the number
// gives the names back.
func TestLevelSetNumbers(t *testing.T) {
	keys := []string{"", "basic", "basic\x00trusted", "trusted"}
	ids := make([][]uint32, 4)
	var wg sync.WaitGroup
	for g := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, k := range keys {
				ids[g] = append(ids[g], levelSetID(k))
			}
		}()
	}
	wg.Wait()
	seen := map[uint32]string{}
	for g := range ids {
		for i, id := range ids[g] {
			if id != ids[0][i] {
				t.Errorf("goroutine %d numbered %q %d, goroutine 0 %d", g, keys[i], id, ids[0][i])
			}
			if got := levelSetKey(id); got != keys[i] {
				t.Errorf("levelSetKey(%d) = %q, want %q", id, got, keys[i])
			}
			if k, ok := seen[id]; ok && k != keys[i] {
				t.Errorf("%q and %q share number %d", k, keys[i], id)
			}
			seen[id] = keys[i]
		}
	}
}

// A watcher that stops taking events is dropped once watcherBuffer of them
// wait for it, rather than holding up every decision; other watchers keep
// theirs, and the drop is counted for the metrics.
func TestSlowWatcherDropped(t *testing.T) {
	dir, now := t.TempDir(), time.Now()
	seedStore(t, dir, []string{"a"}, testReport("a", 1, true, now))
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer stopCollectorForTest(c)
	slow, _, _, _, _ := c.subscribe(0)
	live, _, _, _, _ := c.subscribe(0)
	defer c.unsubscribe(live)
	for i := range watcherBuffer + 1 {
		c.publish("a", "test", true)
		if i%64 == 0 { // the live watcher keeps up
			for len(live.ch) > 0 {
				<-live.ch
			}
		}
	}
	select {
	case <-slow.dropped:
	default:
		t.Fatalf("a watcher %d events behind was not dropped", len(slow.ch))
	}
	select {
	case <-live.dropped:
		t.Fatal("a watcher that kept up was dropped")
	default:
	}
	if n := c.Watchers(); n != 1 {
		t.Errorf("%d watchers after the drop, want 1", n)
	}
	families, err := c.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() == "posture_watchers_dropped_total" {
			found = true
			if v := f.GetMetric()[0].GetCounter().GetValue(); v != 1 {
				t.Errorf("posture_watchers_dropped_total = %v, want 1", v)
			}
		}
	}
	if !found {
		t.Error("no posture_watchers_dropped_total metric")
	}
}
