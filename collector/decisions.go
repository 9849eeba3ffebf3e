package collector

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// decisionLogSize bounds the decision log. A record holds a run of
// identical decisions (a gateway asking about the same device and level
// with the same outcome, as nginx does on every request), so the log
// grows with changes of outcome, not with requests.
const decisionLogSize = 100000

// decisionLog keeps the most recent access decisions in memory.
type decisionLog struct {
	mu     sync.Mutex
	ring   []decisionRecord
	next   int
	count  int
	seq    uint64
	latest map[runKey]runRef // the newest record of each device, level and caller
}

type decisionRecord struct {
	seq       uint64 // 0: empty slot
	first, at time.Time
	times     uint64
	device    string
	level     string
	allowed   bool
	score     uint32
	reasons   []string
	failed    []*posturev1.CheckResult
	caller    string
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
// result, score and failed checks. The reasons may differ in wording only
// (how old the latest report is); the record keeps the latest.
func (r *decisionRecord) sameOutcome(d *decisionRecord) bool {
	if r.allowed != d.allowed || r.score != d.score || len(r.reasons) != len(d.reasons) || len(r.failed) != len(d.failed) {
		return false
	}
	for i, c := range r.failed {
		if c.GetName() != d.failed[i].GetName() || c.GetOutcome() != d.failed[i].GetOutcome() || c.GetReason() != d.failed[i].GetReason() {
			return false
		}
	}
	return true
}

func (l *decisionLog) record(d decisionRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := runKey{d.device, d.level, d.caller}
	if ref, ok := l.latest[key]; ok {
		if r := &l.ring[ref.slot]; r.seq == ref.seq && r.sameOutcome(&d) && !d.at.Before(r.at) {
			r.at, r.reasons = d.at, d.reasons
			r.times++
			return
		}
	}
	old := &l.ring[l.next]
	if old.seq != 0 {
		okey := runKey{old.device, old.level, old.caller}
		if ref := l.latest[okey]; ref.seq == old.seq {
			delete(l.latest, okey)
		}
	}
	l.seq++
	d.seq, d.first, d.times = l.seq, d.at, 1
	l.ring[l.next] = d
	l.latest[key] = runRef{slot: l.next, seq: l.seq}
	l.next = (l.next + 1) % len(l.ring)
	l.count = min(l.count+1, len(l.ring))
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
		out = append(out, &posturev1.Decision{At: timestamppb.New(r.at), FirstAt: timestamppb.New(r.first), Count: r.times,
			DeviceId: r.device, AccessLevel: r.level, Allowed: r.allowed, Score: r.score, Reasons: r.reasons,
			FailedChecks: r.failed, Caller: r.caller})
	}
	l.mu.Unlock()
	return out
}

// callerName names who asked for a decision, for the log.
func callerName(ctx context.Context) string {
	c := callerFrom(ctx)
	switch {
	case c.role == "":
		return "http forward-auth"
	case c.name == "":
		return c.role
	}
	return c.role + " " + c.name
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
