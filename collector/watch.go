package collector

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const (
	// watchHistory is how many events a watcher can fall behind and still
	// resume without a snapshot.
	watchHistory = 16384
	// watcherBuffer is how many events a watcher may have unsent before it
	// is dropped (it resumes from its last revision).
	watcherBuffer = 4096
	// decayInterval is how often decisions are re-evaluated for levels lost
	// (or regained) as evidence ages.
	decayInterval = 15 * time.Second
)

// hub publishes decision changes to watchers.
type hub struct {
	mu       sync.Mutex
	base     uint64 // the first revision of this process
	rev      uint64
	history  []*event // ring, oldest first once full
	start    int
	last     map[string]decisionKey // what was last published per device
	watchers map[*watcher]struct{}
	// dropped counts watchers dropped for falling watcherBuffer events
	// behind; read without the lock by the metrics.
	dropped atomic.Int64
}

// decisionKey is what a watcher must hear about when it changes.
// It holds all a snapshot renders, so a snapshot is made from the keys.
// The hub keeps one per device, loading holds one per device at its peak,
// and every snapshot copies them all, so it takes 8 bytes: the allowed
// levels are a number (see levelSets), the rest fit a byte each.
type decisionKey struct {
	state     uint8  // posturev1.DeviceState
	assurance uint8  // posturev1.IdentityAssurance
	score     uint8  // 0 to 100
	levels    uint32 // levelSets number of the allowed levels' Policy.SetKey
}

// levelSets numbers the distinct sets of allowed levels, named by
// Policy.SetKey (the names joined by NUL), so that a published decision
// holds a number where it held the names. A fleet has a handful of such
// sets; a policy reload that defines other levels adds a handful more.
// Lookups take no lock: they come from every report and every device of
// each decay pass.
var levelSets struct {
	ids  sync.Map                 // SetKey → uint32
	mu   sync.Mutex               // orders additions
	keys atomic.Pointer[[]string] // number → SetKey; replaced whole on an addition
}

// levelSetID is the number of a set of levels named by its SetKey.
func levelSetID(key string) uint32 {
	if id, ok := levelSets.ids.Load(key); ok {
		return id.(uint32)
	}
	levelSets.mu.Lock()
	defer levelSets.mu.Unlock()
	if id, ok := levelSets.ids.Load(key); ok {
		return id.(uint32)
	}
	var keys []string
	if p := levelSets.keys.Load(); p != nil {
		keys = *p
	}
	id := uint32(len(keys))
	next := append(keys[:len(keys):len(keys)], key)
	levelSets.keys.Store(&next) // before the number is found
	levelSets.ids.Store(key, id)
	return id
}

// levelSetKey is the SetKey numbered id by levelSetID.
func levelSetKey(id uint32) string { return (*levelSets.keys.Load())[id] }

type watcher struct {
	ch      chan *event
	dropped chan struct{}
}

// event is one published change. It is encoded once, by the first watcher
// to send it, and the same bytes go to every other watcher: a revocation
// reaches a thousand gateways without being marshaled a thousand times.
type event struct {
	ev      *posturev1.PostureEvent
	once    sync.Once
	encoded *grpc.PreparedMsg
	err     error
}

func newEvent(ev *posturev1.PostureEvent) *event { return &event{ev: ev} }

// send writes the event to a watcher's stream. Every watch stream encodes
// alike (protobuf, no compression), so the bytes prepared on one stream
// are valid on all.
func (e *event) send(stream grpc.ServerStream) error {
	e.once.Do(func() {
		e.encoded = &grpc.PreparedMsg{}
		if e.err = e.encoded.Encode(stream, e.ev); e.err != nil {
			e.encoded = nil
		}
	})
	if e.encoded == nil {
		return stream.SendMsg(e.ev)
	}
	return stream.SendMsg(e.encoded)
}

// newHub makes a hub whose revisions start at base, which must be above
// every revision an earlier collector process published (the store's
// NextWatchBase), so that an old revision is never mistaken for a new one.
func newHub(base uint64) *hub {
	return &hub{base: base, rev: base, last: map[string]decisionKey{}, watchers: map[*watcher]struct{}{}}
}

// render is a device's decision as watchers get it.
// The certificate tag is read from the fleet as the event is rendered
// rather than kept with each device's last decision (8 bytes a device):
// a newer tag than the event's revision is no harm, since a renewal is
// published after it changes the tag.
func (c *Collector) render(id string, key decisionKey) *posturev1.DeviceDecision {
	d := &posturev1.DeviceDecision{
		DeviceId:  id,
		SpiffeId:  pki.SPIFFEID(c.cfg.TrustDomain, pki.RoleDevice, id).String(),
		State:     posturev1.DeviceState(key.state),
		Assurance: posturev1.IdentityAssurance(key.assurance),
		Score:     uint32(key.score),
		// The certificate_tag of the proto is the fleet's certTag.
		CertificateTag: c.fleet.currentCertTag(id),
	}
	if levels := levelSetKey(key.levels); levels != "" {
		d.AllowedLevels = strings.Split(levels, "\x00")
	}
	return d
}

// keyOf is what decision would publish for a device, without rendering it.
func keyOf(subj *policy.Subject, pol *policy.Policy, now time.Time) decisionKey {
	score, set := pol.AllowedSet(subj, now)
	return decisionKey{state: uint8(subj.State), assurance: uint8(subj.Assurance), score: uint8(min(score, 100)), levels: levelSetID(pol.SetKey(set))}
}

// publish re-evaluates a device and tells watchers when its decision
// changed (or always, when force is set: a report or state change). The
// decay pass calls it for every device every few seconds, so an unchanged
// decision is found without rendering it.
func (c *Collector) publish(id, cause string, force bool) {
	h := c.hub
	// The decision is read under the hub lock, so events go out in the
	// order of the changes they report: a publish that read a device
	// before its revocation cannot follow the revocation's event.
	h.mu.Lock()
	defer h.mu.Unlock()
	subj, pol, ok := c.fleet.judged(id, &c.policy)
	if !ok {
		return
	}
	key := keyOf(&subj, pol, c.cfg.Now())
	if prev, seen := h.last[id]; seen && !force && prev == key {
		return
	}
	h.last[id] = key
	d := c.render(id, key)
	d.Cause = cause
	h.rev++
	ev := newEvent(&posturev1.PostureEvent{Revision: h.rev, Event: &posturev1.PostureEvent_Device{Device: d}})
	if len(h.history) < watchHistory {
		h.history = append(h.history, ev)
	} else {
		h.history[h.start] = ev
		h.start = (h.start + 1) % watchHistory
	}
	for w := range h.watchers {
		select {
		case w.ch <- ev:
		default:
			// Too slow: drop it rather than block every decision; it
			// resumes from its last revision.
			delete(h.watchers, w)
			close(w.dropped)
			h.dropped.Add(1)
		}
	}
}

// decayPass republishes every device whose decision changed since it was
// last published.
func (c *Collector) decayPass() {
	for _, id := range c.fleet.ids() {
		c.publish(id, "decay", false)
	}
}

// seedDecisions records every loaded device's decision as published,
// without telling anyone: watchers get them in their snapshot, and the
// first decay pass after a start must report only real changes, not the
// whole fleet.
func (c *Collector) seedDecisions(loaded [][]loaded) {
	n := 0
	for _, part := range loaded {
		n += len(part)
	}
	c.hub.mu.Lock()
	defer c.hub.mu.Unlock()
	c.hub.last = make(map[string]decisionKey, n)
	for _, part := range loaded {
		for _, l := range part {
			c.hub.last[l.id] = l.key
		}
	}
}

// snapEntry is one device of a snapshot: its last published decision.
type snapEntry struct {
	id  string
	key decisionKey
}

// subscribe registers a watcher and returns what it must be sent first:
// the events after since when it can resume (resumed is set; the list ends
// with SnapshotEnd), or else every device's last published decision as of
// revision rev. The copy is taken under the hub lock, so no change slips
// between it and the live events; it is rendered and sent outside the
// lock, which a large fleet would otherwise hold for seconds, stalling
// every report.
func (c *Collector) subscribe(since uint64) (w *watcher, missed []*event, snap []snapEntry, rev uint64, resumed bool) {
	h := c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	w = &watcher{ch: make(chan *event, watcherBuffer), dropped: make(chan struct{})}
	h.watchers[w] = struct{}{}
	ordered := append(slices.Clone(h.history[h.start:]), h.history[:h.start]...)
	// Resuming needs a revision of this process (a restarted collector
	// has none of the events before it) that the history still reaches.
	if since >= h.base && since <= h.rev && (len(ordered) == 0 || since >= ordered[0].ev.Revision-1) {
		for _, ev := range ordered {
			if ev.ev.Revision > since {
				missed = append(missed, ev)
			}
		}
		return w, append(missed, newEvent(c.snapshotEnd(h.rev, true))), nil, h.rev, true
	}
	snap = make([]snapEntry, 0, len(h.last))
	for id, key := range h.last {
		snap = append(snap, snapEntry{id, key})
	}
	return w, nil, snap, h.rev, false
}

// snapshotEnd ends a snapshot (or the replay of missed events) at
// revision rev, and tells the watcher how often to expect a heartbeat.
func (c *Collector) snapshotEnd(rev uint64, resumed bool) *posturev1.PostureEvent {
	return &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_SnapshotEnd{SnapshotEnd: &posturev1.SnapshotEnd{
		Resumed:           resumed,
		HeartbeatInterval: durationpb.New(c.cfg.WatchHeartbeat),
	}}}
}

// snapshotEvent renders one device of a snapshot.
func (c *Collector) snapshotEvent(e snapEntry, rev uint64) *posturev1.PostureEvent {
	d := c.render(e.id, e.key)
	d.Cause = "snapshot"
	return &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_Device{Device: d}}
}

func (c *Collector) unsubscribe(w *watcher) {
	c.hub.mu.Lock()
	defer c.hub.mu.Unlock()
	delete(c.hub.watchers, w)
}

// Watchers is the number of open WatchPosture streams.
func (c *Collector) Watchers() int { return c.watcherCount() }

func (c *Collector) watcherCount() int {
	c.hub.mu.Lock()
	defer c.hub.mu.Unlock()
	return len(c.hub.watchers)
}

func (g *gatewayService) WatchPosture(req *posturev1.WatchPostureRequest, stream posturev1.GatewayService_WatchPostureServer) error {
	c := g.c
	w, missed, snap, rev, resumed := c.subscribe(req.GetSinceRevision())
	defer c.unsubscribe(w)
	dropped := status.Error(codes.ResourceExhausted, "watcher fell too far behind; reconnect with since_revision set to the last revision applied")
	// A revocation of the gateway's certificate or its expiry ends the
	// stream's context: stop sending it the fleet at once.
	ended := func() error {
		if err := stream.Context().Err(); err != nil {
			return context.Cause(stream.Context())
		}
		return nil
	}
	if resumed {
		for i, ev := range missed {
			if i%1024 == 0 {
				if err := ended(); err != nil {
					return err
				}
			}
			if err := ev.send(stream); err != nil {
				return err
			}
		}
	} else {
		slices.SortFunc(snap, func(a, b snapEntry) int { return strings.Compare(a.id, b.id) })
		for i, e := range snap {
			if i%1024 == 0 {
				select {
				case <-w.dropped:
					return dropped
				default:
				}
				if err := ended(); err != nil {
					return err
				}
			}
			if err := stream.Send(c.snapshotEvent(e, rev)); err != nil {
				return err
			}
		}
		if err := stream.Send(c.snapshotEnd(rev, false)); err != nil {
			return err
		}
	}
	// Live: a heartbeat whenever the stream has sent nothing for the
	// interval. One timer per stream, reset on every send. A heartbeat
	// repeats the revision of the last event sent, SnapshotEnd's included,
	// so a watcher that resumes from it misses nothing. It is this
	// stream's alone and tiny: it is encoded on each send rather than
	// shared like the events.
	interval := c.cfg.WatchHeartbeat
	beat := time.NewTimer(interval)
	defer beat.Stop()
	heartbeat := &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_Heartbeat{Heartbeat: &posturev1.Heartbeat{}}}
	for {
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-w.dropped:
			return dropped
		case ev := <-w.ch:
			if err := ev.send(stream); err != nil {
				return err
			}
			heartbeat.Revision = ev.ev.GetRevision()
		case <-beat.C:
			if err := stream.Send(heartbeat); err != nil {
				return err
			}
		}
		beat.Reset(interval)
	}
}
