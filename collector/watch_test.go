package collector

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A restarted collector does not announce its whole fleet as changed on
// its first decay pass: only real changes reach watchers.
func TestRestartDoesNotFloodWatchers(t *testing.T) {
	dir, now := t.TempDir(), time.Now()
	seedStore(t, dir, []string{"a", "b", "c"}, testReport("a", 1, true, now), testReport("b", 1, true, now), testReport("c", 1, true, now))
	ctx := context.Background()

	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		c.Serve(cctx)
	}()
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
