package collector

import (
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	rev      uint64
	history  []*posturev1.PostureEvent // ring, oldest first once full
	start    int
	last     map[string]decisionKey // what was last published per device
	watchers map[*watcher]struct{}
}

// decisionKey is what a watcher must hear about when it changes.
type decisionKey struct {
	state  posturev1.DeviceState
	score  uint32
	levels string
}

type watcher struct {
	ch      chan *posturev1.PostureEvent
	dropped chan struct{}
}

func newHub() *hub {
	// Revisions start at the current time in microseconds, so that a
	// restarted collector's revisions are above any a watcher holds from
	// before, and an old revision can never be mistaken for a new one.
	return &hub{rev: uint64(time.Now().UnixMicro()), last: map[string]decisionKey{}, watchers: map[*watcher]struct{}{}}
}

// decision renders a device's current decision.
func (c *Collector) decision(id string, pol *policy.Policy, now time.Time) (*posturev1.DeviceDecision, decisionKey, bool) {
	subj, ok := c.fleet.subject(id)
	if !ok {
		return nil, decisionKey{}, false
	}
	d := &posturev1.DeviceDecision{
		DeviceId:  id,
		SpiffeId:  pki.SPIFFEID(c.cfg.TrustDomain, pki.RoleDevice, id).String(),
		State:     subj.State,
		Assurance: subj.Assurance,
		Score:     pol.Score(&subj, now),
	}
	for _, l := range pol.LevelNames() {
		if ok, _, _ := pol.Decide(&subj, l, now); ok {
			d.AllowedLevels = append(d.AllowedLevels, l)
		}
	}
	return d, decisionKey{state: d.State, score: d.Score, levels: joinLevels(d.AllowedLevels)}, true
}

func joinLevels(l []string) string {
	s := ""
	for _, x := range l {
		s += x + "\x00"
	}
	return s
}

// publish re-evaluates a device and tells watchers when its decision
// changed (or always, when force is set: a report or state change).
func (c *Collector) publish(id, cause string, force bool) {
	d, key, ok := c.decision(id, c.policy.Load(), c.cfg.Now())
	if !ok {
		return
	}
	h := c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if prev, seen := h.last[id]; seen && !force && prev == key {
		return
	}
	h.last[id] = key
	d.Cause = cause
	h.rev++
	ev := &posturev1.PostureEvent{Revision: h.rev, Event: &posturev1.PostureEvent_Device{Device: d}}
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
		}
	}
}

// decayLoop republishes devices whose decisions changed as time passed.
func (c *Collector) decayLoop(stop <-chan struct{}) {
	t := time.NewTicker(decayInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			c.decayPass()
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
func (c *Collector) seedDecisions() {
	pol, now := c.policy.Load(), c.cfg.Now()
	c.hub.mu.Lock()
	defer c.hub.mu.Unlock()
	for _, id := range c.fleet.ids() {
		if _, key, ok := c.decision(id, pol, now); ok {
			c.hub.last[id] = key
		}
	}
}

// subscribe registers a watcher and returns what it must be sent first: the
// events after since (resumed) or a snapshot of every device.
func (c *Collector) subscribe(since uint64) (*watcher, []*posturev1.PostureEvent, bool) {
	h := c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	w := &watcher{ch: make(chan *posturev1.PostureEvent, watcherBuffer), dropped: make(chan struct{})}
	h.watchers[w] = struct{}{}
	ordered := append(slices.Clone(h.history[h.start:]), h.history[:h.start]...)
	if since != 0 && since <= h.rev && (len(ordered) == 0 || since >= ordered[0].Revision-1) {
		var missed []*posturev1.PostureEvent
		for _, ev := range ordered {
			if ev.Revision > since {
				missed = append(missed, ev)
			}
		}
		return w, append(missed, &posturev1.PostureEvent{Revision: h.rev, Event: &posturev1.PostureEvent_SnapshotEnd{SnapshotEnd: &posturev1.SnapshotEnd{Resumed: true}}}), true
	}
	// Snapshot under the hub lock: no change can slip between the
	// snapshot and the live events.
	pol, now := c.policy.Load(), c.cfg.Now()
	ids := c.fleet.ids()
	slices.Sort(ids)
	snap := make([]*posturev1.PostureEvent, 0, len(ids)+1)
	for _, id := range ids {
		if d, _, ok := c.decision(id, pol, now); ok {
			d.Cause = "snapshot"
			snap = append(snap, &posturev1.PostureEvent{Revision: h.rev, Event: &posturev1.PostureEvent_Device{Device: d}})
		}
	}
	return w, append(snap, &posturev1.PostureEvent{Revision: h.rev, Event: &posturev1.PostureEvent_SnapshotEnd{SnapshotEnd: &posturev1.SnapshotEnd{}}}), false
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
	w, first, _ := c.subscribe(req.GetSinceRevision())
	defer c.unsubscribe(w)
	for _, ev := range first {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-w.dropped:
			return status.Error(codes.ResourceExhausted, "watcher fell too far behind; reconnect with since_revision set to the last revision applied")
		case ev := <-w.ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
