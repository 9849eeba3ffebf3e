package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// watchUntilSnapshotEnd opens a watch and collects events up to SnapshotEnd.
func watchUntilSnapshotEnd(t testing.TB, ctx context.Context, gw posturev1.GatewayServiceClient, since uint64) (posturev1.GatewayService_WatchPostureClient, []*posturev1.PostureEvent, *posturev1.PostureEvent) {
	return watchFrom(t, ctx, gw, since, "")
}

// watchFrom watches from since, which came from the watch of collector
// process from (SnapshotEnd.collector; "" for none), until SnapshotEnd.
func watchFrom(t testing.TB, ctx context.Context, gw posturev1.GatewayServiceClient, since uint64, from string) (posturev1.GatewayService_WatchPostureClient, []*posturev1.PostureEvent, *posturev1.PostureEvent) {
	t.Helper()
	st, err := gw.WatchPosture(ctx, &posturev1.WatchPostureRequest{SinceRevision: since, SinceCollector: from})
	if err != nil {
		t.Fatal(err)
	}
	var evs []*posturev1.PostureEvent
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if ev.GetSnapshotEnd() != nil {
			return st, evs, ev
		}
		evs = append(evs, ev)
	}
}

// nextChange receives the next event that is not a heartbeat.
func nextChange(st posturev1.GatewayService_WatchPostureClient) (*posturev1.PostureEvent, error) {
	for {
		ev, err := st.Recv()
		if err != nil || ev.GetHeartbeat() == nil {
			return ev, err
		}
	}
}

// A revocation reaches every one of 100 watchers.
func TestWatchRevocationReachesAllWatchers(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "first report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	gw := e.gateway("edge")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const watchers = 100
	streams := make([]posturev1.GatewayService_WatchPostureClient, watchers)
	for i := range streams {
		st, snap, end := watchUntilSnapshotEnd(t, ctx, gw, 0)
		if end.GetSnapshotEnd().GetResumed() || len(snap) != 1 || snap[0].GetDevice().GetDeviceId() != id {
			t.Fatalf("snapshot = %v, end %v; want the one device and resumed=false", snap, end)
		}
		if got := snap[0].GetDevice().GetAllowedLevels(); len(got) != 2 {
			t.Fatalf("snapshot allowed levels = %v, want basic and trusted", got)
		}
		streams[i] = st
	}
	start := time.Now()
	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	lat := make([]time.Duration, watchers)
	for i, st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, err := nextChange(st)
			if err != nil {
				t.Errorf("watcher %d: %v", i, err)
				return
			}
			lat[i] = time.Since(start)
			d := ev.GetDevice()
			if d.GetDeviceId() != id || d.GetState() != posturev1.DeviceState_DEVICE_STATE_REVOKED || len(d.GetAllowedLevels()) != 0 || d.GetCause() != "revoked" {
				t.Errorf("watcher %d got %v, want the revocation with no allowed levels", i, ev)
			}
		}()
	}
	wg.Wait()
	t.Logf("revocation reached %d watchers; slowest after %v", watchers, maxDuration(lat))
}

func maxDuration(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// lastStates is the state each device ends in among events.
func lastStates(evs []*posturev1.PostureEvent) map[string]posturev1.DeviceState {
	out := map[string]posturev1.DeviceState{}
	for _, ev := range evs {
		if d := ev.GetDevice(); d != nil {
			out[d.GetDeviceId()] = d.GetState()
		}
	}
	return out
}

// A watcher that reconnects to the same collector with its last revision
// receives what it missed, without a snapshot (at most repeating a change
// it had, never older than what it had).
func TestWatchResume(t *testing.T) {
	e := startCollector(t)
	_, idA := e.enroll()
	_, idB := e.enroll()
	gw := e.gateway("edge")
	ctx, cancel := context.WithCancel(context.Background())
	_, snap, end := watchUntilSnapshotEnd(t, ctx, gw, 0)
	if len(snap) != 2 {
		t.Fatalf("snapshot has %d devices, want 2", len(snap))
	}
	last, from := end.GetRevision(), end.GetSnapshotEnd().GetCollector()
	if from == "" {
		t.Fatal("SnapshotEnd does not name the collector")
	}
	cancel() // the watcher goes away

	for _, id := range []string{idA, idB} {
		if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "gone"}); err != nil {
			t.Fatal(err)
		}
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	_, missed, end2 := watchFrom(t, ctx2, gw, last, from)
	if !end2.GetSnapshotEnd().GetResumed() {
		t.Errorf("resume with revision %d gave a snapshot", last)
	}
	revoked := posturev1.DeviceState_DEVICE_STATE_REVOKED
	if got := lastStates(missed); len(got) != 2 || got[idA] != revoked || got[idB] != revoked {
		t.Fatalf("missed events = %v, want the two revocations", missed)
	}
	for _, ev := range missed {
		if ev.GetRevision() <= last {
			t.Errorf("event %v: want a revision after %d", ev, last)
		}
	}
	// A revision the collector never issued (or forgot) yields a snapshot.
	_, snap3, end3 := watchUntilSnapshotEnd(t, ctx2, gw, 1)
	if end3.GetSnapshotEnd().GetResumed() || len(snap3) != 2 {
		t.Errorf("resume from an unknown revision: resumed=%v, %d devices; want a 2-device snapshot", end3.GetSnapshotEnd().GetResumed(), len(snap3))
	}
}

// A quiet watch stream carries a heartbeat whenever it has sent nothing for
// the configured interval, never sooner. Each carries a revision no lower
// than the event before it on the stream, whose changes were all sent: a
// watcher that resumes from the last revision it heard, heartbeat or not,
// misses nothing.
func TestWatchHeartbeat(t *testing.T) {
	const interval = 300 * time.Millisecond
	e := startCollectorWith(t, func(c *collector.Config) { c.WatchHeartbeat = interval })
	_, idA := e.enroll()
	_, idB := e.enroll()
	gw := e.gateway("edge")
	// The deadline only bounds a stream that never beats; a loaded
	// machine gets far more than it needs.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	opened := time.Now()
	st, _, end := watchUntilSnapshotEnd(t, ctx, gw, 0)
	if got := end.GetSnapshotEnd().GetHeartbeatInterval().AsDuration(); got != interval {
		t.Fatalf("SnapshotEnd announces heartbeats every %v, want %v", got, interval)
	}
	last := end.GetRevision() // of the last event on the stream
	// recv receives the next message, checking that a heartbeat repeats
	// the revision of the event before it.
	recv := func() *posturev1.PostureEvent {
		t.Helper()
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if ev.GetRevision() < last {
			t.Fatalf("revision %d after revision %d: revisions never go down on a stream", ev.GetRevision(), last)
		}
		last = ev.GetRevision()
		return ev
	}

	// The collector sends the k-th heartbeat of a quiet stream no sooner
	// than k intervals after SnapshotEnd, which it sent after the request.
	for k := 1; k <= 5; k++ {
		ev := recv()
		if ev.GetHeartbeat() == nil {
			t.Fatalf("quiet stream sent %v, want heartbeat %d", ev, k)
		}
		if since := time.Since(opened); since < time.Duration(k)*interval {
			t.Fatalf("heartbeat %d arrived %v after the watch opened, sooner than %d intervals of %v", k, since, k, interval)
		}
	}

	// A change goes out as it happens; heartbeats after it carry its
	// revision.
	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: idA, Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	var revoked *posturev1.PostureEvent
	for revoked == nil {
		if ev := recv(); ev.GetDevice() != nil {
			revoked = ev
		}
	}
	if d := revoked.GetDevice(); d.GetDeviceId() != idA || d.GetState() != posturev1.DeviceState_DEVICE_STATE_REVOKED {
		t.Fatalf("after revoking %s the stream sent %v", idA, revoked)
	}
	var heard uint64
	for heard == 0 {
		if ev := recv(); ev.GetHeartbeat() != nil {
			heard = ev.GetRevision()
		}
	}
	if heard != revoked.GetRevision() {
		t.Fatalf("heartbeat after the revocation has revision %d, want the revocation's %d", heard, revoked.GetRevision())
	}

	// The watcher goes away after that heartbeat; a change it did not see
	// is replayed when it resumes from the heartbeat's revision.
	cancel()
	if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: idB, Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	st2, missed, end2 := watchFrom(t, ctx2, gw, heard, end.GetSnapshotEnd().GetCollector())
	if !end2.GetSnapshotEnd().GetResumed() {
		t.Fatalf("resume from a heartbeat's revision %d gave a snapshot", heard)
	}
	if got := lastStates(missed); got[idB] != posturev1.DeviceState_DEVICE_STATE_REVOKED || len(got) > 2 {
		t.Fatalf("resumed from revision %d: missed %v, want the revocation of %s (and at most a repeat of %s's)", heard, missed, idB, idA)
	}
	if got := end2.GetSnapshotEnd().GetHeartbeatInterval().AsDuration(); got != interval {
		t.Errorf("resumed SnapshotEnd announces heartbeats every %v, want %v", got, interval)
	}
	// The resumed stream beats too, at the revision it ended on.
	ev, err := st2.Recv()
	if err != nil {
		t.Fatalf("resumed watch: %v", err)
	}
	if ev.GetHeartbeat() == nil || ev.GetRevision() != end2.GetRevision() {
		t.Errorf("resumed quiet stream sent %v, want a heartbeat at revision %d", ev, end2.GetRevision())
	}
}
