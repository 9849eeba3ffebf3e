// Package watch publishes decision changes to the gateways watching a
// collector (GatewayService.WatchPosture).
//
// Revisions are the IDs of the events the database committed: the same on
// every collector sharing it, so that a gateway can resume its watch on
// any of them. A change whose event this collector applied goes out with
// that event's ID; a change no event made (trust decaying as evidence
// ages, a policy reload) goes out with the newest ID applied so far.
//
// Resuming: events may commit out of the order of their IDs, and
// collectors see decay at slightly different moments, so a gateway that
// resumes from revision R may lack changes this collector published a
// little before it reached R as well as those after. The hub keeps, for a
// while, which devices changed when, and when it reached each revision;
// a resume from R sends the current decision of every device that changed
// from shortly before (Hub.ResumeSlack) this collector reached R until now. A
// gateway resuming on the collector process it watched before (it names
// the process: SnapshotEnd.collector) lacks exactly what changed since
// this collector reached R. When the hub no longer knows that far back (R
// is older than what it kept, or than its own start) the gateway gets a
// fresh snapshot.
package watch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const (
	// historySize is how many published changes the hub keeps for
	// resumes.
	historySize = 1 << 16
	// timelineSize is how many points of its progress through revisions
	// the hub keeps (one at most every timelineStep).
	timelineSize = 1 << 13
	timelineStep = 100 * time.Millisecond
	// watcherBuffer is how many events a watcher may have unsent before it
	// is dropped (it resumes from its last revision).
	watcherBuffer = 4096
	// DefaultDecayInterval is how often decisions are re-evaluated for
	// levels lost (or regained) as evidence ages (Config.DecayInterval).
	DefaultDecayInterval = 15 * time.Second
)

// ErrDropped ends a watch that fell watcherBuffer events behind; the
// gateway resumes from the last revision it applied.
var ErrDropped = errors.New("watcher fell too far behind; reconnect with since_revision set to the last revision applied")

// Fleet is what the hub reads of devices.
type Fleet interface {
	// Judged is a device's subject and the policy it is judged by.
	Judged(id string) (policy.Subject, *policy.Policy, bool)
	// CurrentCertTag is the tag of the device's newest certificate.
	CurrentCertTag(id string) uint64
	// IDs lists the devices.
	IDs() []string
}

// Config configures a Hub.
type Config struct {
	Fleet       Fleet
	TrustDomain string
	// Heartbeat is the longest a watch stays silent.
	Heartbeat time.Duration
	// DecayInterval is how often the collector runs DecayPass (every
	// collector sharing the database runs its own); 0 means
	// DefaultDecayInterval.
	DecayInterval time.Duration
	// CatchUp reads the database for events this collector has not
	// applied yet; a resume from a revision ahead of the hub calls it
	// before deciding on a snapshot. Nil: no catching up.
	CatchUp func(ctx context.Context) error
	// Now is the clock of decisions; nil means time.Now.
	Now func() time.Time
}

// Hub publishes decision changes to watchers.
type Hub struct {
	cfg      Config
	instance string // names this hub's process to watchers (SnapshotEnd.collector)

	mu        sync.Mutex
	applied   uint64                 // the newest event applied
	published uint64                 // the revision of the last change published: revisions never go down on a stream
	started   time.Time              // by the wall clock: resumes reaching before need a snapshot
	timeline  []mark                 // ring: when applied reached a revision
	tlStart   int                    // oldest mark once the ring is full
	history   []change               // ring of published changes, oldest first once full
	hStart    int                    // oldest change once the ring is full
	last      map[string]decisionKey // what was last published per device
	watchers  map[*watcher]struct{}
	// dropped counts watchers dropped for falling watcherBuffer events
	// behind; read without the lock by the metrics.
	dropped atomic.Int64
}

// mark is a point of the hub's progress: by at, or a little later (within
// timelineStep), it had applied rev.
type mark struct {
	rev uint64
	at  time.Time
}

// change is one published change, kept for resumes.
type change struct {
	id  string
	at  time.Time // by the wall clock
	rev uint64
}

// New makes a hub.
func New(cfg Config) *Hub {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DecayInterval <= 0 {
		cfg.DecayInterval = DefaultDecayInterval
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return &Hub{cfg: cfg, instance: hex.EncodeToString(b), last: map[string]decisionKey{}, watchers: map[*watcher]struct{}{}, started: time.Now()}
}

// decisionKey is what a watcher must hear about when it changes.
// It holds all a snapshot renders, so a snapshot is made from the keys.
// The hub keeps one per device, loading holds one per device at its peak,
// and every snapshot copies them all, so it takes 12 bytes: the allowed
// and the warned levels are numbers (see levelSets), the rest fit a byte
// each.
type decisionKey struct {
	state     uint8  // posturev1.DeviceState
	assurance uint8  // posturev1.IdentityAssurance
	score     uint8  // 0 to 100
	levels    uint32 // levelSets number of the allowed levels' Policy.SetKey
	warned    uint32 // levelSets number of the levels allowed with a warning
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

// render is a device's decision as watchers get it.
// The certificate tag is read from the fleet as the event is rendered
// rather than kept with each device's last decision (8 bytes a device):
// a newer tag than the event's revision is no harm, since a renewal is
// published after it changes the tag.
func (h *Hub) render(id string, key decisionKey) *posturev1.DeviceDecision {
	d := &posturev1.DeviceDecision{
		DeviceId:       id,
		SpiffeId:       pki.SPIFFEID(h.cfg.TrustDomain, pki.RoleDevice, id).String(),
		State:          posturev1.DeviceState(key.state),
		Assurance:      posturev1.IdentityAssurance(key.assurance),
		Score:          uint32(key.score),
		CertificateTag: h.cfg.Fleet.CurrentCertTag(id),
	}
	if levels := levelSetKey(key.levels); levels != "" {
		d.AllowedLevels = strings.Split(levels, "\x00")
	}
	if warned := levelSetKey(key.warned); warned != "" {
		d.WarnedLevels = strings.Split(warned, "\x00")
	}
	return d
}

// keyOf is what a decision would publish for a device, without rendering it.
func keyOf(subj *policy.Subject, pol *policy.Policy, now time.Time) decisionKey {
	score, _, allowed, warned := pol.Sets(subj, now)
	return decisionKey{state: uint8(subj.State), assurance: uint8(subj.Assurance), score: uint8(min(score, 100)),
		levels: levelSetID(pol.SetKey(allowed)), warned: levelSetID(pol.SetKey(warned))}
}

// Seeder collects the decisions of a fleet being loaded, parts at once
// (fleet.Load's callback), without telling anyone: watchers get them in
// their snapshot, and the first decay pass after a start must report only
// real changes, not the whole fleet. Finish hands them to the hub.
type Seeder struct {
	h     *Hub
	parts [][]seeded
	now   time.Time
}

type seeded struct {
	id  string
	key decisionKey
}

// Seeder starts collecting the decisions of a fleet loaded in parts.
func (h *Hub) Seeder(parts int) *Seeder {
	return &Seeder{h: h, parts: make([][]seeded, parts), now: h.cfg.Now()}
}

// Seen records one device (see fleet.Loaded).
func (s *Seeder) Seen(part int, id string, subj *policy.Subject, pol *policy.Policy) {
	s.parts[part] = append(s.parts[part], seeded{id, keyOf(subj, pol, s.now)})
}

// Finish records every device seen as published, at revision applied, the
// newest event the loaded fleet reflects.
func (s *Seeder) Finish(applied uint64) {
	n := 0
	for _, p := range s.parts {
		n += len(p)
	}
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = make(map[string]decisionKey, n)
	for _, p := range s.parts {
		for _, d := range p {
			h.last[d.id] = d.key
		}
	}
	s.parts = nil
	h.applied, h.started = applied, time.Now()
	h.timeline, h.tlStart = append(h.timeline[:0], mark{applied, h.started}), 0
	h.history, h.hStart = h.history[:0], 0
}

// Applied records that the collector applied every event it will apply up
// to rev, or at least rev itself (events that commit out of order may
// still come below it).
func (h *Hub) Applied(rev uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.advance(rev)
}

// advance moves applied to rev; it requires mu.
func (h *Hub) advance(rev uint64) {
	if rev <= h.applied {
		return
	}
	h.applied = rev
	now := time.Now()
	last := (h.tlStart + len(h.timeline) - 1) % max(len(h.timeline), 1)
	if len(h.timeline) > 0 && now.Sub(h.timeline[last].at) < timelineStep {
		// The last mark stands for this one too: it says the hub reached
		// rev at its time, a little early, so a resume from rev reaches a
		// little further back than it needs to, never less far.
		h.timeline[last].rev = rev
		return
	}
	if len(h.timeline) < timelineSize {
		h.timeline = append(h.timeline, mark{rev, now})
		return
	}
	h.timeline[h.tlStart] = mark{rev, now}
	h.tlStart = (h.tlStart + 1) % timelineSize
}

// ResumeSlack is how long before it reached a gateway's revision the
// changes a resume from another collector sends begin: it covers that
// collector seeing decay up to one decay pass sooner or later than this
// one (each runs its own), and events that committed out of order.
func (h *Hub) ResumeSlack() time.Duration { return 2*h.cfg.DecayInterval + 5*time.Second }

// DecayInterval is how often DecayPass runs.
func (h *Hub) DecayInterval() time.Duration { return h.cfg.DecayInterval }

// Revision is the newest event applied.
func (h *Hub) Revision() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.applied
}

// Publish re-evaluates a device and tells watchers when its decision
// changed (or always, when force is set: a report or state change). rev
// is the ID of the event that made the change, or 0 for a change no event
// made (decay, a policy reload), which goes out at the newest revision
// applied. The decay pass calls it for every device every few seconds, so
// an unchanged decision is found without rendering it.
func (h *Hub) Publish(id, cause string, force bool, rev uint64) {
	// The decision is read under the hub lock, so events go out in the
	// order of the changes they report: a publish that read a device
	// before its revocation cannot follow the revocation's event.
	h.mu.Lock()
	defer h.mu.Unlock()
	h.advance(rev)
	subj, pol, ok := h.cfg.Fleet.Judged(id)
	if !ok {
		return
	}
	key := keyOf(&subj, pol, h.cfg.Now())
	if prev, seen := h.last[id]; seen && !force && prev == key {
		return
	}
	h.last[id] = key
	d := h.render(id, key)
	d.Cause = cause
	if rev == 0 {
		rev = h.applied
	}
	// An event committed out of the order of IDs goes out at the revision
	// already reached: a watcher resuming from it is sent it again with
	// whatever changed near it (subscribe).
	rev = max(rev, h.published)
	h.published = rev
	ch := change{id: id, at: time.Now(), rev: rev}
	if len(h.history) < historySize {
		h.history = append(h.history, ch)
	} else {
		h.history[h.hStart] = ch
		h.hStart = (h.hStart + 1) % historySize
	}
	ev := newEvent(&posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_Device{Device: d}})
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

// DecayPass republishes every device whose decision changed since it was
// last published.
func (h *Hub) DecayPass() {
	for _, id := range h.cfg.Fleet.IDs() {
		h.Publish(id, "decay", false, 0)
	}
}

// snapEntry is one device of a snapshot.
type snapEntry struct {
	id  string
	key decisionKey
}

// subscription is what a new watcher must be sent first.
type subscription struct {
	w       *watcher
	resumed bool
	entries []snapEntry // the snapshot, or the devices changed since the revision resumed from
	rev     uint64      // the revision they are at
}

// subscribe registers a watcher and returns what it must be sent first:
// when it can resume from since (resumed is set), the current decision of
// every device that changed since a little before the hub reached since;
// otherwise every device's last published decision. Either is at revision
// rev. The copy is taken under the hub lock, so no change slips between it
// and the live events; it is rendered and sent outside the lock, which a
// large fleet would otherwise hold for seconds, stalling every report.
func (h *Hub) subscribe(ctx context.Context, since uint64, sinceCollector string) subscription {
	if since > 0 && h.cfg.CatchUp != nil && since > h.Revision() {
		// Another collector committed since and told the gateway first:
		// read it now rather than send a snapshot.
		_ = h.cfg.CatchUp(ctx)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := subscription{w: &watcher{ch: make(chan *event, watcherBuffer), dropped: make(chan struct{})}, rev: h.applied}
	h.watchers[s.w] = struct{}{}
	if since > 0 && since <= h.applied {
		slack := h.ResumeSlack()
		if sinceCollector == h.instance {
			slack = 0 // the watcher heard every change up to since from this process
		}
		if from, ok := h.resumeFrom(since, slack); ok {
			s.resumed = true
			now := h.cfg.Now()
			seen := map[string]bool{}
			h.eachChange(func(c change) {
				if (!c.at.Before(from) || c.rev > since) && !seen[c.id] {
					seen[c.id] = true
					// The decision as it stands now: what the gateway
					// lacks is at most that new.
					if subj, pol, ok := h.cfg.Fleet.Judged(c.id); ok {
						s.entries = append(s.entries, snapEntry{c.id, keyOf(&subj, pol, now)})
					}
				}
			})
			return s
		}
	}
	s.entries = make([]snapEntry, 0, len(h.last))
	for id, key := range h.last {
		s.entries = append(s.entries, snapEntry{id, key})
	}
	return s
}

// resumeFrom is when the changes a resume from since must send begin, and
// whether the hub knows that far back; it requires mu.
func (h *Hub) resumeFrom(since uint64, slack time.Duration) (time.Time, bool) {
	reached := time.Time{}
	for i := range h.timeline {
		m := h.timeline[(h.tlStart+i)%len(h.timeline)]
		if m.rev >= since {
			reached = m.at
			break
		}
	}
	if reached.IsZero() {
		return time.Time{}, false
	}
	from := reached.Add(-slack)
	// What the hub knows begins at its start, and at the oldest change
	// it still holds once the history is full; the timeline's oldest mark
	// likewise, once it is full.
	known := h.started
	if len(h.history) == historySize {
		known = later(known, h.history[h.hStart].at)
	}
	if len(h.timeline) == timelineSize && h.timeline[h.tlStart].rev >= since {
		return time.Time{}, false
	}
	return from, !from.Before(known)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// eachChange calls fn with every change kept, oldest first; it requires mu.
func (h *Hub) eachChange(fn func(change)) {
	for i := range h.history {
		fn(h.history[(h.hStart+i)%len(h.history)])
	}
}

func (h *Hub) unsubscribe(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.watchers, w)
}

// Watchers is the number of open watches.
func (h *Hub) Watchers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.watchers)
}

// Dropped is how many watchers were dropped for falling behind.
func (h *Hub) Dropped() int64 { return h.dropped.Load() }

// snapshotEnd ends a snapshot (or a resume) at revision rev, and tells the
// watcher how often to expect a heartbeat.
func (h *Hub) snapshotEnd(rev uint64, resumed bool) *posturev1.PostureEvent {
	return &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_SnapshotEnd{SnapshotEnd: &posturev1.SnapshotEnd{
		Resumed:           resumed,
		HeartbeatInterval: durationpb.New(h.cfg.Heartbeat),
		Collector:         h.instance,
	}}}
}

// Serve streams decision changes to one watcher until its stream ends: a
// snapshot (or, resuming from since, what changed since; sinceCollector
// names the collector process since came from), then live
// events and heartbeats. It returns ErrDropped when the watcher falls too
// far behind, and the stream context's cause when it ends (a revoked or
// expired gateway certificate).
func (h *Hub) Serve(stream grpc.ServerStream, since uint64, sinceCollector string) error {
	ctx := stream.Context()
	s := h.subscribe(ctx, since, sinceCollector)
	defer h.unsubscribe(s.w)
	ended := func() error {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		return nil
	}
	cause := "snapshot"
	if s.resumed {
		cause = "resume"
	} else {
		slices.SortFunc(s.entries, func(a, b snapEntry) int { return strings.Compare(a.id, b.id) })
	}
	for i, e := range s.entries {
		if i%1024 == 0 {
			select {
			case <-s.w.dropped:
				return ErrDropped
			default:
			}
			if err := ended(); err != nil {
				return err
			}
		}
		d := h.render(e.id, e.key)
		d.Cause = cause
		if err := stream.SendMsg(&posturev1.PostureEvent{Revision: s.rev, Event: &posturev1.PostureEvent_Device{Device: d}}); err != nil {
			return err
		}
	}
	if err := stream.SendMsg(h.snapshotEnd(s.rev, s.resumed)); err != nil {
		return err
	}
	// Live: a heartbeat whenever the stream has sent nothing for the
	// interval. One timer per stream, reset on every send. A heartbeat
	// carries the newest revision the watcher has heard everything up to
	// (heartbeatRevision), so a watcher that resumes from it misses
	// nothing. It is this stream's alone and tiny: it is encoded on each
	// send rather than shared like the events.
	interval := h.cfg.Heartbeat
	beat := time.NewTimer(interval)
	defer beat.Stop()
	heartbeat := &posturev1.PostureEvent{Revision: s.rev, Event: &posturev1.PostureEvent_Heartbeat{Heartbeat: &posturev1.Heartbeat{}}}
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.w.dropped:
			return ErrDropped
		case ev := <-s.w.ch:
			if err := ev.send(stream); err != nil {
				return err
			}
			heartbeat.Revision = max(heartbeat.Revision, ev.ev.GetRevision())
		case <-beat.C:
			rev, quiet := h.heartbeatRevision(s.w)
			if !quiet {
				// An event is waiting: it goes first, and the heartbeat
				// waits for the next quiet interval.
				break
			}
			heartbeat.Revision = max(heartbeat.Revision, rev)
			if err := stream.SendMsg(heartbeat); err != nil {
				return err
			}
		}
		beat.Reset(interval)
	}
}

// heartbeatRevision is the revision a heartbeat to w carries: the newest
// event the hub applied, when w has been sent every change published (its
// queue is empty, looked at under the hub lock, so no publish is half
// done). A watcher that heard it has heard every change up to it, so a
// quiet watch's revision follows the database rather than staying at its
// last change, and a resume from it, on any collector, reaches back only
// as far as it must. Later changes go out at that revision or above:
// revisions never go down on a stream.
func (h *Hub) heartbeatRevision(w *watcher) (rev uint64, quiet bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(w.ch) > 0 {
		return 0, false
	}
	h.published = max(h.published, h.applied)
	return h.applied, true
}
