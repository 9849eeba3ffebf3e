// Package decisions is a collector's decision log: the access decisions it
// answered, with their reasons, kept in memory as runs of identical
// decisions and saved to the database so that they outlive a restart. Each
// collector keeps its own log (by its replica ID in the database): "why
// was this device denied at 10:42?" is answered by the collector the
// gateway asked.
package decisions

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Size bounds the decision log. A record holds a run of
// identical decisions (a gateway asking about the same device and level
// with the same outcome, as nginx does on every request), so the log
// grows with changes of outcome, not with requests.
const Size = 100000

// Log keeps the most recent access decisions in memory, and saves them to
// the store (Save) so that they outlive a restart.
type Log struct {
	mu     sync.Mutex
	ring   []decisionRecord
	next   int
	count  int
	seq    uint64
	latest map[runKey]runRef // the newest record of each device, level and caller
	queued []int             // slots whose record is new or whose run grew since it was saved
	// announce: a new record's first save writes its outbox message
	// (store.Decision.Announce), for receivers that take decisions.
	announce atomic.Bool
}

// Announce sets whether new records are announced through the outbox
// when they are first saved.
func (l *Log) Announce(on bool) { l.announce.Store(on) }

type decisionRecord struct {
	seq       uint64 // 0: empty slot
	first, at time.Time
	times     uint64
	device    string
	level     string
	allowed   bool
	score     uint32
	state     posturev1.DeviceState
	// undefinedLevel: the policy defines no such level.
	undefinedLevel bool
	reasons        []string
	failed         []*posturev1.CheckResult
	caller         string
	// enforcement, met, warned and warnings: the level's enforcement, and
	// whether the device met it and the gateway was told to warn, and of
	// what (a level in warn mode, a grace).
	enforcement posturev1.Enforcement
	met, warned bool
	warnings    []string

	// detail, when set, holds reasons and failed as saved, not decoded yet:
	// a record loaded at start-up is decoded when it is listed or its run
	// continues, so that a full log costs its encoded size until then.
	detail []byte

	// Saving: the slot is in queued; the record has been saved, and when
	// its run was last saved.
	queued, saved bool
	savedAt       time.Time
}

// decode fills reasons and failed from detail.
func (r *decisionRecord) decode() {
	if r.detail == nil {
		return
	}
	var d posturev1.Decision
	if err := proto.Unmarshal(r.detail, &d); err != nil {
		d.Reasons = []string{"(the saved reasons of this decision are unreadable: " + err.Error() + ")"}
	}
	r.reasons, r.failed, r.detail = d.GetReasons(), d.GetFailedChecks(), nil
	r.enforcement, r.met, r.warned, r.warnings = d.GetEnforcement(), d.GetMet(), d.GetWarned(), d.GetWarnings()
}

type runKey struct{ device, level, caller string }

type runRef struct {
	slot int
	seq  uint64
}

// New makes an empty log of Size records.
func New() *Log { return newLogOf(Size) }

func newLogOf(size int) *Log {
	return &Log{ring: make([]decisionRecord, size), latest: map[runKey]runRef{}}
}

// sameOutcome says whether a decision continues a record's run: the same
// result, score, device state and failed checks. The reasons may differ in
// wording only (how old the latest report is); the record keeps the latest.
func (r *decisionRecord) sameOutcome(d *decisionRecord) bool {
	if r.allowed != d.allowed || r.met != d.met || r.warned != d.warned || r.enforcement != d.enforcement || r.score != d.score || r.state != d.state ||
		len(r.reasons) != len(d.reasons) || len(r.failed) != len(d.failed) || len(r.warnings) != len(d.warnings) {
		return false
	}
	for i, c := range r.failed {
		if c.GetName() != d.failed[i].GetName() || c.GetOutcome() != d.failed[i].GetOutcome() || c.GetReason() != d.failed[i].GetReason() {
			return false
		}
	}
	return true
}

// key is the run a record belongs to. Denials for devices that are not
// enrolled (state unspecified) make one run per caller and level, whatever
// device they name, and those for levels the policy does not define one
// run per device and caller, whatever level they name; the run keeps the
// last one asked about. A gateway asking about made-up devices or levels
// would otherwise push every other record out.
func (r *decisionRecord) key() runKey {
	k := runKey{r.device, r.level, r.caller}
	if r.state == posturev1.DeviceState_DEVICE_STATE_UNSPECIFIED {
		k.device = ""
	}
	if r.undefinedLevel {
		k.level = "\x00undefined" // no level's name: names are printable
	}
	return k
}

func (l *Log) record(d decisionRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := d.key()
	if ref, ok := l.latest[key]; ok {
		r := &l.ring[ref.slot]
		r.decode()
		if r.seq == ref.seq && r.sameOutcome(&d) && !d.at.Before(r.at) {
			r.at, r.reasons, r.device, r.level, r.warnings = d.at, d.reasons, d.device, d.level, d.warnings
			r.times++
			l.queue(ref.slot)
			return
		}
	}
	old := &l.ring[l.next]
	if old.seq != 0 {
		okey := old.key()
		if ref := l.latest[okey]; ref.seq == old.seq {
			delete(l.latest, okey)
		}
	}
	l.seq++
	d.seq, d.first, d.times = l.seq, d.at, 1
	d.queued, d.saved, d.savedAt = old.queued, false, time.Time{} // a queued slot stays queued once
	l.ring[l.next] = d
	l.queue(l.next)
	l.latest[key] = runRef{slot: l.next, seq: l.seq}
	l.next = (l.next + 1) % len(l.ring)
	l.count = min(l.count+1, len(l.ring))
}

// queue marks a slot's record for saving; it requires mu.
func (l *Log) queue(slot int) {
	if r := &l.ring[slot]; !r.queued {
		r.queued = true
		l.queued = append(l.queued, slot)
	}
}

// Decisions are saved in the background, every decisionSaveInterval: new
// records then, and a run that grew (a gateway asking again with the same
// outcome, as nginx does on every request) at most every
// decisionRunSaveInterval, so that a busy gateway's requests do not each
// cost a write. A crash loses at most the last interval's new records and
// a run's last half minute of growth; a clean stop saves everything.
const (
	decisionSaveInterval    = time.Second
	decisionRunSaveInterval = 30 * time.Second
)

// unsaved takes the queued records due for saving at now (all of them when
// all is set) and marks them saved; others stay queued. The records are
// copied under the lock and encoded by the caller.
func (l *Log) unsaved(now time.Time, all bool) []savedRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var due []savedRecord
	keep := l.queued[:0]
	for _, slot := range l.queued {
		r := &l.ring[slot]
		if !all && r.saved && now.Sub(r.savedAt) < decisionRunSaveInterval {
			keep = append(keep, slot)
			continue
		}
		first := !r.saved
		r.queued, r.saved, r.savedAt = false, true, now
		due = append(due, savedRecord{slot: slot, rec: *r, first: first})
	}
	l.queued = keep
	return due
}

// savedRecord is a record on its way to the store, and where it came from.
type savedRecord struct {
	slot  int
	rec   decisionRecord
	first bool // never saved before
}

// unsave queues again the records of a failed save that are still in the
// log, so that the next save retries them.
func (l *Log) unsave(failed []savedRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range failed {
		if r := &l.ring[f.slot]; r.seq == f.rec.seq {
			r.saved, r.savedAt = false, time.Time{}
			l.queue(f.slot)
		}
	}
}

// load fills an empty log with saved records, oldest first: the newest
// len(ring) of them, already saved.
func (l *Log) load(saved []decisionRecord, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(saved) > len(l.ring) {
		saved = saved[len(saved)-len(l.ring):]
	}
	for _, d := range saved {
		d.saved, d.savedAt = true, now
		l.ring[l.next] = d
		l.latest[d.key()] = runRef{slot: l.next, seq: d.seq}
		l.seq = max(l.seq, d.seq)
		l.next = (l.next + 1) % len(l.ring)
		l.count = min(l.count+1, len(l.ring))
	}
}

// list returns the records of a device (all devices when empty) whose runs
// overlap [since, until] (a zero until is now), newest first.
func (l *Log) list(device string, since, until time.Time, limit int) []*posturev1.Decision {
	l.mu.Lock()
	var found []*decisionRecord
	for i := 1; i <= l.count; i++ {
		r := &l.ring[(l.next-i+len(l.ring))%len(l.ring)]
		if r.at.Before(since) || (!until.IsZero() && r.first.After(until)) || (device != "" && r.device != device) {
			continue
		}
		found = append(found, r)
	}
	slices.SortStableFunc(found, func(a, b *decisionRecord) int { return b.at.Compare(a.at) })
	if len(found) > limit {
		found = found[:limit]
	}
	out := make([]*posturev1.Decision, 0, len(found))
	for _, r := range found {
		r.decode()
		out = append(out, &posturev1.Decision{At: timestamppb.New(r.at), FirstAt: timestamppb.New(r.first), Count: r.times,
			DeviceId: r.device, AccessLevel: r.level, Allowed: r.allowed, Score: r.score, Reasons: r.reasons,
			FailedChecks: r.failed, Caller: r.caller, Enforcement: r.enforcement, Met: r.met, Warned: r.warned, Warnings: r.warnings})
	}
	l.mu.Unlock()
	return out
}

// Store is where the log is saved.
type Store interface {
	SaveDecisions(ctx context.Context, collector string, ds []store.Decision, keep int) error
	Decisions(ctx context.Context, collector string, limit int) ([]store.Decision, error)
}

// Save writes the log's records that are due (all queued ones when all is
// set) to st as collector's. A failed save leaves them queued for the next
// and says so.
func (l *Log) Save(ctx context.Context, st Store, collector string, all bool) error {
	due := l.unsaved(time.Now(), all)
	if len(due) == 0 {
		return nil
	}
	ds := make([]store.Decision, len(due))
	var encodeErr error
	for i := range due {
		r := &due[i].rec
		detail := r.detail
		if detail == nil {
			var err error
			if detail, err = proto.Marshal(&posturev1.Decision{Reasons: r.reasons, FailedChecks: r.failed,
				Enforcement: r.enforcement, Met: r.met, Warned: r.warned, Warnings: r.warnings}); err != nil {
				encodeErr = fmt.Errorf("decision of device %s saved without its reasons: %w", r.device, err)
			}
		}
		ds[i] = store.Decision{Seq: r.seq, FirstAt: r.first, At: r.at, Count: r.times, Device: r.device, Level: r.level,
			Caller: r.caller, Allowed: r.allowed, Score: r.score, State: int32(r.state), Detail: detail,
			Announce: due[i].first && l.announce.Load()}
	}
	// In chunks: one writer operation of many thousand records (a gateway
	// asking about made-up devices makes a record per request) would hold
	// up the reports queued behind it.
	for i := 0; i < len(ds); i += saveChunk {
		j := min(i+saveChunk, len(ds))
		if err := st.SaveDecisions(ctx, collector, ds[i:j], Size); err != nil {
			l.unsave(due[i:])
			return fmt.Errorf("save %d decisions (to be retried): %w", len(ds)-i, err)
		}
	}
	return encodeErr
}

// saveChunk is how many decisions one writer operation saves.
const saveChunk = 500

// Load fills an empty log with the records collector saved before it last
// stopped.
func (l *Log) Load(ctx context.Context, st Store, collector string) error {
	saved, err := st.Decisions(ctx, collector, Size)
	if err != nil {
		return err
	}
	// Levels, callers and often the reasons repeat from record to record:
	// equal ones share memory.
	strs, details := map[string]string{}, map[string][]byte{}
	intern := func(s string) string {
		if v, ok := strs[s]; ok {
			return v
		}
		strs[s] = s
		return s
	}
	recs := make([]decisionRecord, len(saved))
	for i, d := range saved {
		detail, ok := details[string(d.Detail)]
		if !ok {
			detail = append([]byte{}, d.Detail...) // not nil: decoded as no reasons when empty
			details[string(detail)] = detail
		}
		recs[i] = decisionRecord{seq: d.Seq, first: d.FirstAt, at: d.At, times: d.Count, device: d.Device, level: intern(d.Level),
			allowed: d.Allowed, score: d.Score, state: posturev1.DeviceState(d.State), detail: detail, caller: intern(d.Caller)}
	}
	l.load(recs, time.Now())
	return nil
}

// Entry is one access decision to record.
type Entry struct {
	At      time.Time
	Device  string
	Level   string
	Allowed bool
	Score   uint32
	State   posturev1.DeviceState // unspecified: the device is not enrolled
	// UndefinedLevel: the policy defines no such level.
	UndefinedLevel bool
	Reasons        []string
	Failed         []*posturev1.CheckResult
	// Caller names who asked: "gateway edge-1", "bearer secret 2 (/check)".
	Caller string
	// Enforcement is the level's; Met says whether the device met it
	// (allowed without met: warn or off mode); Warned whether the gateway
	// was told to warn, with Warnings saying of what.
	Enforcement posturev1.Enforcement
	Met, Warned bool
	Warnings    []string
}

// Record adds a decision: to the run of identical decisions it continues,
// or as a new record.
func (l *Log) Record(e Entry) {
	l.record(decisionRecord{at: e.At, device: e.Device, level: e.Level, allowed: e.Allowed, score: e.Score, state: e.State,
		undefinedLevel: e.UndefinedLevel, reasons: e.Reasons, failed: e.Failed, caller: e.Caller,
		enforcement: e.Enforcement, met: e.Met, warned: e.Warned, warnings: e.Warnings})
}

// List returns the records of a device (all devices when empty) whose runs
// overlap [since, until] (a zero until is now), newest first, at most
// limit.
func (l *Log) List(device string, since, until time.Time, limit int) []*posturev1.Decision {
	return l.list(device, since, until, limit)
}

// MaxListed caps what one admin answer lists one by one, so that it stays
// well inside gRPC's message size limit.
const MaxListed = 10000
