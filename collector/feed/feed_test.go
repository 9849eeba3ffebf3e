package feed

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/gateways"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/watch"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var ctx = context.Background()

// memEvents is an event log in memory, into which a test commits events
// with the IDs it likes, in the order it likes: what a database shared by
// several collectors looks like to one of them when transactions commit
// out of the order of their IDs.
type memEvents struct {
	mu      sync.Mutex
	events  map[uint64]store.Event
	fetched []uint64 // every ID Events was asked for
	wake    chan struct{}
}

func newMemEvents() *memEvents {
	return &memEvents{events: map[uint64]store.Event{}, wake: make(chan struct{}, 1)}
}

func (m *memEvents) commit(evs ...store.Event) {
	m.mu.Lock()
	for _, ev := range evs {
		m.events[ev.ID] = ev
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *memEvents) EventIDs(_ context.Context, after uint64, limit int) ([]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []uint64
	for id := range m.events {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	if len(ids) > limit {
		ids = ids[:limit]
	}
	return ids, nil
}

func (m *memEvents) Events(_ context.Context, ids []uint64) ([]store.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Event
	for _, id := range ids {
		m.fetched = append(m.fetched, id)
		if ev, ok := m.events[id]; ok {
			out = append(out, ev)
		}
	}
	slices.SortFunc(out, func(a, b store.Event) int { return int(a.ID) - int(b.ID) })
	return out, nil
}

func (m *memEvents) Wake() <-chan struct{} { return m.wake }

func (m *memEvents) fetchedIDs() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.fetched)
}

// rig is a feed over a real fleet, hub and gateway revocations.
type rig struct {
	events *memEvents
	fleet  *fleet.Fleet
	hub    *watch.Hub
	gws    *gateways.Revocations
	feed   *Feed
}

func newRig(t *testing.T, start uint64, skipped []uint64) *rig {
	r := &rig{events: newMemEvents(), fleet: fleet.New(policy.Default(), fleet.Budget{Burst: 10, Interval: 1}, time.Now()), gws: gateways.New(nil)}
	r.hub = watch.New(watch.Config{Fleet: r.fleet, TrustDomain: "posture.test", Heartbeat: time.Second})
	r.hub.Seeder(1).Finish(start)
	r.feed = New(Config{Store: r.events, Fleet: r.fleet, Hub: r.hub, Gateways: r.gws, GapTimeout: time.Hour}, start, skipped)
	return r
}

func enrolled(id uint64, device string) store.Event {
	return store.Event{ID: id, Kind: store.EventEnrolled, DeviceID: device, Device: &store.Device{ID: device, Identity: "software",
		IdentityKey: []byte("k"), Assurance: 1, State: store.StateActive, CertSerial: "01"}}
}

func stateEvent(id uint64, device string, state int32, reason string) store.Event {
	ev := enrolled(id, device)
	ev.Kind, ev.Device.State, ev.Device.StateReason = store.EventState, state, reason
	return ev
}

// What another collector committed reaches this one; what this one
// applied as it committed is not read again.
func TestCatchUp(t *testing.T) {
	r := newRig(t, 0, nil)
	local := enrolled(1, "a")
	r.events.commit(local)
	r.feed.Apply(local, nil)
	r.events.commit(enrolled(2, "b"), stateEvent(3, "a", store.StateSuspect, "chain broken"))
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.events.fetchedIDs(); !slices.Equal(got, []uint64{2, 3}) {
		t.Errorf("read events %v, want 2 and 3 (1 was applied as it committed)", got)
	}
	if !r.fleet.Known("b") {
		t.Error("the device another collector enrolled is not known here")
	}
	if subj, _ := r.fleet.Subject("a"); subj.State != posturev1.DeviceState_DEVICE_STATE_SUSPECT {
		t.Errorf("device a is %v, want suspect as another collector marked it", subj.State)
	}
	if r.feed.Applied() != 3 || r.hub.Revision() != 3 {
		t.Errorf("applied %d, hub at %d; want 3", r.feed.Applied(), r.hub.Revision())
	}
}

// Events committed out of the order of their IDs are all applied: an ID
// skipped while its transaction had not committed is read again until it
// is there. So are IDs that had not committed when the collector started.
func TestGaps(t *testing.T) {
	r := newRig(t, 10, []uint64{9})
	r.events.commit(enrolled(11, "a"), enrolled(12, "b"), enrolled(14, "d"))
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if r.fleet.Known("c") || r.feed.Gaps() != 2 {
		t.Fatalf("before 13 commits: c known %v, %d gaps; want c unknown and gaps 9 and 13", r.fleet.Known("c"), r.feed.Gaps())
	}
	r.events.commit(enrolled(13, "c"), enrolled(9, "z"))
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c", "d", "z"} {
		if !r.fleet.Known(id) {
			t.Errorf("device %s was not applied", id)
		}
	}
	if r.feed.Gaps() != 0 {
		t.Errorf("%d gaps left", r.feed.Gaps())
	}
	// A gap filled by this collector's own commit is no gap any more.
	r.events.commit(enrolled(16, "f"))
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	own := enrolled(15, "e")
	r.events.commit(own)
	r.feed.Apply(own, nil)
	if r.feed.Gaps() != 0 {
		t.Errorf("%d gaps after 15 was applied here", r.feed.Gaps())
	}
}

// A skipped ID that never commits (its transaction rolled back) is read
// again only until the gap timeout.
func TestGapTimeout(t *testing.T) {
	r := newRig(t, 0, nil)
	r.feed.cfg.GapTimeout = time.Millisecond
	r.events.commit(enrolled(2, "b"))
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if r.feed.Gaps() != 0 {
		t.Errorf("%d gaps after the timeout, want none", r.feed.Gaps())
	}
}

// A revocation another collector made ends what the device has open here,
// and tells watchers; a gateway revocation ends the gateway's streams.
func TestRevocationsReachEverything(t *testing.T) {
	r := newRig(t, 0, nil)
	r.feed.Apply(enrolled(1, "a"), nil)
	sctx, cancel := context.WithCancelCause(ctx)
	r.fleet.AddStream("a", &fleet.Stream{Cancel: cancel})
	gctx, done := r.gws.Track(ctx, "0a")
	defer done()
	r.events.commit(stateEvent(2, "a", store.StateRevoked, "stolen"),
		store.Event{ID: 3, Kind: store.EventGatewayRevoked, Serials: []string{"0a"}, Reason: "decommissioned"})
	if err := r.feed.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(context.Cause(sctx), fleet.ErrRevoked) {
		t.Errorf("the device's stream ended with %v, want its revocation", context.Cause(sctx))
	}
	if !errors.Is(context.Cause(gctx), gateways.ErrRevoked) || r.gws.Check("0a") == nil {
		t.Errorf("the gateway's stream ended with %v; want its revocation", context.Cause(gctx))
	}
}

// Run wakes when the store says something committed.
func TestRunWakes(t *testing.T) {
	r := newRig(t, 0, nil)
	r.feed.cfg.PollInterval = time.Hour
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go r.feed.Run(runCtx)
	r.events.commit(enrolled(1, "a"))
	deadline := time.Now().Add(10 * time.Second)
	for !r.fleet.Known("a") {
		if time.Now().After(deadline) {
			t.Fatal("the feed did not wake for a commit")
		}
		time.Sleep(time.Millisecond)
	}
}
