package watch

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var ctx = context.Background()

// rig is a hub over a real fleet over a real store.
type rig struct {
	t     testing.TB
	st    *sqlite.Store
	fleet *fleet.Fleet
	hub   *Hub
}

// newRig stores n software devices, each with one report, and loads them
// into a fleet and a hub.
func newRig(t testing.TB, n int, pol *policy.Policy) *rig {
	t.Helper()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	if err := st.CreateToken(ctx, store.Token{Hash: []byte("t"), ExpiresAt: now.Add(time.Hour), Uses: uint32(n)}); err != nil {
		t.Fatal(err)
	}
	const workers = 32
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n && errs[w] == nil; i += workers {
				errs[w] = storeDevice(st, fmt.Sprintf("dev-%07d", i), i%2 == 0, now)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if pol == nil {
		pol = policy.Default()
	}
	r := &rig{t: t, st: st, fleet: fleet.New(pol, fleet.Budget{Burst: 10, Interval: 1}, now)}
	r.hub = New(Config{Fleet: r.fleet, TrustDomain: "posture.test", Heartbeat: time.Second})
	last, err := st.LastEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seed := r.hub.Seeder(8)
	if err := r.fleet.Load(ctx, st, seed.Seen); err != nil {
		t.Fatal(err)
	}
	seed.Finish(last)
	return r
}

func storeDevice(st *sqlite.Store, id string, encrypted bool, now time.Time) error {
	if _, _, err := st.EnrollDevice(ctx, []byte("t"), now, store.Device{ID: id, Identity: "software", IdentityKey: []byte("k"), Assurance: 1, State: 1, CertSerial: "01"}); err != nil {
		return err
	}
	h, err := st.OpenReportStream(ctx, id)
	if err != nil {
		return err
	}
	ok := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(now)}
	body, _ := proto.Marshal(&posturev1.PostureReport{DeviceId: id, Seq: 1, Disk: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: encrypted}})
	sum := sha256.Sum256(body)
	_, err = st.AppendReport(ctx, store.Report{DeviceID: id, Seq: 1, Digest: sum[:], Nonce: sum[:4], Body: body, Proof: sum[:], ReceivedAt: now, Stream: h.Stream})
	return err
}

// state changes a device's state in the store and applies and publishes
// it, as the feed does.
func (r *rig) state(id string, state posturev1.DeviceState) uint64 {
	r.t.Helper()
	ev, err := r.st.SetDeviceState(ctx, id, int32(state), "test", time.Now())
	if err != nil {
		r.t.Fatal(err)
	}
	a := r.fleet.Apply(ev, nil)
	r.hub.Publish(id, a.Cause, a.Force, ev.ID)
	return ev.ID
}

func drain(w *watcher) []*posturev1.DeviceDecision {
	var out []*posturev1.DeviceDecision
	for {
		select {
		case ev := <-w.ch:
			out = append(out, ev.ev.GetDevice())
		default:
			return out
		}
	}
}

// A loaded fleet is not announced as changed by the first decay pass: only
// real changes reach watchers. The snapshot says what a decision made now
// says.
func TestSeededHubDoesNotFloodWatchers(t *testing.T) {
	r := newRig(t, 3, nil)
	s := r.hub.subscribe(ctx, 0, "")
	defer r.hub.unsubscribe(s.w)
	if len(s.entries) != 3 || s.resumed {
		t.Fatalf("first watch: %d devices, resumed %v; want a snapshot of 3", len(s.entries), s.resumed)
	}
	for _, e := range s.entries {
		subj, pol, _ := r.fleet.Judged(e.id)
		if want := keyOf(&subj, pol, time.Now()); e.key != want {
			t.Errorf("snapshot of %s = %+v, want %+v", e.id, e.key, want)
		}
	}
	r.hub.DecayPass()
	if got := drain(s.w); len(got) != 0 {
		t.Errorf("first decay pass sent %d events, want none", len(got))
	}
	rev := r.state("dev-0000001", posturev1.DeviceState_DEVICE_STATE_SUSPECT)
	got := drain(s.w)
	if len(got) != 1 || got[0].GetState() != posturev1.DeviceState_DEVICE_STATE_SUSPECT || got[0].GetCause() != "suspect" {
		t.Fatalf("after a state change: %v; want the suspect device", got)
	}
	if r.hub.Revision() != rev {
		t.Errorf("revision %d, want the event's %d", r.hub.Revision(), rev)
	}
}

// A watch resuming from a revision this hub reached sends the current
// decision of the devices that changed from a little before it (so that
// decay seen at another moment elsewhere, and events committed out of
// order, are covered) and nothing else; one from before the hub's start,
// or beyond what it kept, gets a snapshot; one ahead of the hub makes it
// catch up first.
func TestResume(t *testing.T) {
	r := newRig(t, 50, nil)
	start := r.hub.Revision()
	r.state("dev-0000003", posturev1.DeviceState_DEVICE_STATE_SUSPECT)
	mid := r.state("dev-0000004", posturev1.DeviceState_DEVICE_STATE_SUSPECT)
	r.state("dev-0000005", posturev1.DeviceState_DEVICE_STATE_REVOKED)

	// The hub started moments ago: a resume reaching before its start
	// gets a snapshot.
	if s := r.hub.subscribe(ctx, mid, ""); s.resumed || len(s.entries) != 50 {
		t.Errorf("resume right after the start: resumed %v with %d devices; want a snapshot", s.resumed, len(s.entries))
	} else {
		r.hub.unsubscribe(s.w)
	}

	// From this process, it resumes at once.
	if s := r.hub.subscribe(ctx, mid, r.hub.instance); !s.resumed || len(s.entries) == 0 || len(s.entries) > 3 {
		t.Errorf("resume right after the start from this process: resumed %v with %d devices; want the changes since", s.resumed, len(s.entries))
	} else {
		r.hub.unsubscribe(s.w)
	}

	// Once it has run for longer than the slack, a resume sends what
	// changed.
	r.hub.mu.Lock()
	r.hub.started = r.hub.started.Add(-2 * r.hub.ResumeSlack())
	for i := range r.hub.timeline {
		r.hub.timeline[i].at = r.hub.timeline[i].at.Add(-2 * r.hub.ResumeSlack())
	}
	for i := range r.hub.history {
		r.hub.history[i].at = r.hub.history[i].at.Add(-2 * r.hub.ResumeSlack())
	}
	r.hub.mu.Unlock()
	late := r.state("dev-0000006", posturev1.DeviceState_DEVICE_STATE_SUSPECT) // now, long after the others
	s := r.hub.subscribe(ctx, late, "")
	r.hub.unsubscribe(s.w)
	if !s.resumed || len(s.entries) != 1 || s.entries[0].id != "dev-0000006" || s.rev != late {
		t.Fatalf("resume from %d: resumed %v, %v at %d; want dev-0000006 alone (changed as the hub reached it) at %d", late, s.resumed, s.entries, s.rev, late)
	}
	for _, rev := range []uint64{start - 1, start, mid} {
		// Reached as the hub started: what changed just before, the hub
		// does not know.
		if s := r.hub.subscribe(ctx, rev, ""); s.resumed {
			t.Errorf("a resume from %d, reached as the hub started, did not get a snapshot", rev)
		} else {
			r.hub.unsubscribe(s.w)
		}
	}

	// From this very process, the resume is exact: nothing before the
	// revision is sent again, and a resume right after the start works.
	if s := r.hub.subscribe(ctx, late, r.hub.instance); !s.resumed || len(s.entries) != 1 || s.entries[0].id != "dev-0000006" {
		t.Errorf("resume from %d of this process: resumed %v, %v; want dev-0000006 alone", late, s.resumed, s.entries)
	} else {
		r.hub.unsubscribe(s.w)
	}
	if s := r.hub.subscribe(ctx, late, "another process"); !s.resumed {
		t.Error("resume from another process's revision got a snapshot")
	} else {
		r.hub.unsubscribe(s.w)
	}

	// Ahead of the hub: it catches up, and resumes once it has.
	caught := 0
	r.hub.cfg.CatchUp = func(context.Context) error {
		caught++
		r.hub.Applied(late + 1)
		return nil
	}
	s = r.hub.subscribe(ctx, late+1, "")
	r.hub.unsubscribe(s.w)
	if caught != 1 || !s.resumed || s.rev != late+1 {
		t.Errorf("resume from a revision ahead: caught up %d times, resumed %v at %d; want one catch-up and a resume at %d", caught, s.resumed, s.rev, late+1)
	}
	r.hub.cfg.CatchUp = func(context.Context) error { return nil }
	if s := r.hub.subscribe(ctx, late+100, ""); s.resumed {
		t.Error("a revision the database never reached resumed")
	} else {
		r.hub.unsubscribe(s.w)
	}
}

// Events reach watchers in the order of the changes: a publish that raced
// a state change never leaves watchers with the device as it was.
func TestPublishFollowsStateChange(t *testing.T) {
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
	r := newRig(t, 1, pol)
	s := r.hub.subscribe(ctx, 0, "")
	defer r.hub.unsubscribe(s.w)
	for i := range 300 {
		r.state("dev-0000000", posturev1.DeviceState_DEVICE_STATE_ACTIVE)
		var wg sync.WaitGroup
		begin := make(chan struct{})
		wg.Go(func() { <-begin; r.hub.Publish("dev-0000000", "decay", false, 0) })
		wg.Go(func() {
			<-begin
			for t0 := time.Now(); time.Since(t0) < time.Duration(i%8)*time.Microsecond; {
			}
			r.state("dev-0000000", posturev1.DeviceState_DEVICE_STATE_SUSPECT)
		})
		close(begin)
		wg.Wait()
		got := drain(s.w)
		if last := got[len(got)-1]; last.GetState() != posturev1.DeviceState_DEVICE_STATE_SUSPECT {
			t.Fatalf("round %d: the device is suspect, but the last event says %v (cause %q)", i, last.GetState(), last.GetCause())
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
		wg.Go(func() {
			for _, k := range keys {
				ids[g] = append(ids[g], levelSetID(k))
			}
		})
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
// theirs, and the drop is counted.
func TestSlowWatcherDropped(t *testing.T) {
	r := newRig(t, 1, nil)
	slow := r.hub.subscribe(ctx, 0, "")
	live := r.hub.subscribe(ctx, 0, "")
	defer r.hub.unsubscribe(live.w)
	for i := range watcherBuffer + 1 {
		r.hub.Publish("dev-0000000", "test", true, 0)
		if i%64 == 0 { // the live watcher keeps up
			drain(live.w)
		}
	}
	select {
	case <-slow.w.dropped:
	default:
		t.Fatalf("a watcher %d events behind was not dropped", len(slow.w.ch))
	}
	select {
	case <-live.w.dropped:
		t.Fatal("a watcher that kept up was dropped")
	default:
	}
	if n := r.hub.Watchers(); n != 1 {
		t.Errorf("%d watchers after the drop, want 1", n)
	}
	if n := r.hub.Dropped(); n != 1 {
		t.Errorf("Dropped = %d, want 1", n)
	}
}

// BenchmarkFleetUpkeep measures the work a large fleet costs a running
// collector besides its reports: the decay pass that re-evaluates every
// device every 15 s, and what a gateway's WatchPosture subscription holds
// the hub lock for (every report waits for it) and then renders outside
// it. POSTURE_SCALE_DEVICES sets the fleet size (default 100000).
func BenchmarkFleetUpkeep(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("POSTURE_SCALE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	r := newRig(b, n, nil)
	b.Run("decay-pass", func(b *testing.B) {
		for b.Loop() {
			r.hub.DecayPass()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/device")
	})
	b.Run("watch-snapshot", func(b *testing.B) {
		var locked, render time.Duration
		for b.Loop() {
			t0 := time.Now()
			s := r.hub.subscribe(ctx, 0, "")
			t1 := time.Now()
			for _, e := range s.entries {
				_ = r.hub.render(e.id, e.key)
			}
			locked, render = locked+t1.Sub(t0), render+time.Since(t1)
			r.hub.unsubscribe(s.w)
		}
		b.ReportMetric(float64(locked.Milliseconds())/float64(b.N), "hub-locked-ms")
		b.ReportMetric(float64(render.Milliseconds())/float64(b.N), "render-ms")
	})
}
