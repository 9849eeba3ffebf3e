package collector

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/callerid"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// decisionLogSize bounds the decision log. A record holds a run of
// identical decisions (a gateway asking about the same device and level
// with the same outcome, as nginx does on every request), so the log
// grows with changes of outcome, not with requests.
const decisionLogSize = 100000

// decisionLog keeps the most recent access decisions in memory, and saves
// them to the store (see save) so that they outlive a restart.
type decisionLog struct {
	mu     sync.Mutex
	ring   []decisionRecord
	next   int
	count  int
	seq    uint64
	latest map[runKey]runRef // the newest record of each device, level and caller
	queued []int             // slots whose record is new or whose run grew since it was saved
}

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
}

type runKey struct{ device, level, caller string }

type runRef struct {
	slot int
	seq  uint64
}

func newDecisionLog() *decisionLog { return newDecisionLogOf(decisionLogSize) }

func newDecisionLogOf(size int) *decisionLog {
	return &decisionLog{ring: make([]decisionRecord, size), latest: map[runKey]runRef{}}
}

// sameOutcome says whether a decision continues a record's run: the same
// result, score, device state and failed checks. The reasons may differ in
// wording only (how old the latest report is); the record keeps the latest.
func (r *decisionRecord) sameOutcome(d *decisionRecord) bool {
	if r.allowed != d.allowed || r.score != d.score || r.state != d.state || len(r.reasons) != len(d.reasons) || len(r.failed) != len(d.failed) {
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

func (l *decisionLog) record(d decisionRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := d.key()
	if ref, ok := l.latest[key]; ok {
		r := &l.ring[ref.slot]
		r.decode()
		if r.seq == ref.seq && r.sameOutcome(&d) && !d.at.Before(r.at) {
			r.at, r.reasons, r.device, r.level = d.at, d.reasons, d.device, d.level
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
func (l *decisionLog) queue(slot int) {
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
func (l *decisionLog) unsaved(now time.Time, all bool) []savedRecord {
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
		r.queued, r.saved, r.savedAt = false, true, now
		due = append(due, savedRecord{slot: slot, rec: *r})
	}
	l.queued = keep
	return due
}

// savedRecord is a record on its way to the store, and where it came from.
type savedRecord struct {
	slot int
	rec  decisionRecord
}

// unsave queues again the records of a failed save that are still in the
// log, so that the next save retries them.
func (l *decisionLog) unsave(failed []savedRecord) {
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
func (l *decisionLog) load(saved []decisionRecord, now time.Time) {
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
func (l *decisionLog) list(device string, since, until time.Time, limit int) []*posturev1.Decision {
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
			FailedChecks: r.failed, Caller: r.caller})
	}
	l.mu.Unlock()
	return out
}

// saveDecisions writes the decision log's records that are due (all
// queued ones when all is set) to the store. A failed save leaves them
// queued for the next.
func (c *Collector) saveDecisions(all bool) {
	due := c.decisions.unsaved(time.Now(), all)
	if len(due) == 0 {
		return
	}
	ds := make([]store.Decision, len(due))
	for i := range due {
		r := &due[i].rec
		detail := r.detail
		if detail == nil {
			var err error
			if detail, err = proto.Marshal(&posturev1.Decision{Reasons: r.reasons, FailedChecks: r.failed}); err != nil {
				c.log.Error("save decision without its reasons", "device", r.device, "err", err)
			}
		}
		ds[i] = store.Decision{Seq: r.seq, FirstAt: r.first, At: r.at, Count: r.times, Device: r.device, Level: r.level,
			Caller: r.caller, Allowed: r.allowed, Score: r.score, State: int32(r.state), Detail: detail}
	}
	// In chunks: one writer operation of many thousand records (a gateway
	// asking about made-up devices makes a record per request) would hold
	// up the reports queued behind it.
	for i := 0; i < len(ds); i += decisionSaveChunk {
		j := min(i+decisionSaveChunk, len(ds))
		if err := c.store.SaveDecisions(context.Background(), ds[i:j], decisionLogSize); err != nil {
			c.decisions.unsave(due[i:])
			c.log.Error("save decisions; will retry", "records", len(ds)-i, "err", err)
			return
		}
	}
}

// decisionSaveChunk is how many decisions one writer operation saves.
const decisionSaveChunk = 500

// loadDecisions fills the decision log with the records saved before the
// last stop.
func (c *Collector) loadDecisions(ctx context.Context) error {
	saved, err := c.store.Decisions(ctx, decisionLogSize)
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
	c.decisions.load(recs, time.Now())
	return nil
}

// callerName names who asked for a decision, for the log.
func callerName(ctx context.Context) string {
	switch c := callerFrom(ctx); {
	case c.role != "" && c.name != "":
		return c.role + " " + c.name
	case c.role != "":
		return c.role
	}
	// Not an RPC: a front end in this process (/check) named its caller.
	if name := callerid.From(ctx); name != "" {
		return name
	}
	return "in process"
}

// maxListed caps what one admin answer lists one by one, so that it stays
// well inside gRPC's message size limit.
const maxListed = 10000

func (a *adminService) ListDecisions(_ context.Context, req *posturev1.ListDecisionsRequest) (*posturev1.ListDecisionsResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = 100
	case limit > maxListed:
		return nil, status.Errorf(codes.InvalidArgument, "limit %d is above %d; narrow the listing with a device or --since", limit, maxListed)
	}
	var since, until time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		until = req.GetUntil().AsTime()
		if until.Before(since) {
			return nil, status.Errorf(codes.InvalidArgument, "until %s is before since %s", until.Format(time.RFC3339), since.Format(time.RFC3339))
		}
	}
	return &posturev1.ListDecisionsResponse{Decisions: a.c.decisions.list(req.GetDeviceId(), since, until, limit), Retained: decisionLogSize}, nil
}
