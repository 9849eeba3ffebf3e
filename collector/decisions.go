package collector

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// decisionLogSize bounds the decision log: enough to answer "why was this
// device denied at 10:42" for recent hours on a busy fleet, at a few
// hundred bytes each.
const decisionLogSize = 100000

// decisionLog keeps the most recent access decisions in memory.
type decisionLog struct {
	mu    sync.Mutex
	ring  []decisionRecord
	next  int
	count int
}

type decisionRecord struct {
	at      time.Time
	device  string
	level   string
	allowed bool
	score   uint32
	reasons []string
	caller  string
}

func newDecisionLog() *decisionLog {
	return &decisionLog{ring: make([]decisionRecord, decisionLogSize)}
}

func (l *decisionLog) record(r decisionRecord) {
	l.mu.Lock()
	l.ring[l.next] = r
	l.next = (l.next + 1) % len(l.ring)
	l.count = min(l.count+1, len(l.ring))
	l.mu.Unlock()
}

// list returns matching decisions, newest first.
func (l *decisionLog) list(device string, since time.Time, limit int) []*posturev1.Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*posturev1.Decision
	for i := 1; i <= l.count && len(out) < limit; i++ {
		r := l.ring[(l.next-i+len(l.ring))%len(l.ring)]
		if r.at.Before(since) {
			break
		}
		if device != "" && r.device != device {
			continue
		}
		out = append(out, &posturev1.Decision{At: timestamppb.New(r.at), DeviceId: r.device, AccessLevel: r.level,
			Allowed: r.allowed, Score: r.score, Reasons: r.reasons, Caller: r.caller})
	}
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
	var since time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	return &posturev1.ListDecisionsResponse{Decisions: a.c.decisions.list(req.GetDeviceId(), since, limit), Retained: decisionLogSize}, nil
}
