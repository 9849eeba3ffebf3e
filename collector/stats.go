package collector

import (
	"maps"
	"sync"
)

// stats counts what the collector accepted and refused since it started.
type stats struct {
	mu                  sync.Mutex
	reportsAccepted     uint64
	reportsRejected     map[string]uint64
	enrollments         uint64
	enrollmentsRejected map[string]uint64
	rpcDenied           map[string]uint64
	gatewayRejected     map[gatewayRejection]uint64
	certsRenewed        uint64
	renewalsRejected    map[string]uint64
	anonRefused         map[string]uint64 // by limit
}

// gatewayRejection is a gateway front end and why it refused a request.
type gatewayRejection struct{ front, reason string }

// maxGatewayRejections bounds the front and reason pairs counted apart;
// the front ends report a handful, and anything past the bound is "other"
// rather than a new metric series.
const maxGatewayRejections = 64

func newStats() *stats {
	return &stats{reportsRejected: map[string]uint64{}, enrollmentsRejected: map[string]uint64{}, rpcDenied: map[string]uint64{}, gatewayRejected: map[gatewayRejection]uint64{}, renewalsRejected: map[string]uint64{}, anonRefused: map[string]uint64{}}
}

func (s *stats) accepted() {
	s.mu.Lock()
	s.reportsAccepted++
	s.mu.Unlock()
}

func (s *stats) rejected(reason string) {
	s.mu.Lock()
	s.reportsRejected[reason]++
	s.mu.Unlock()
}

func (s *stats) enrolled() {
	s.mu.Lock()
	s.enrollments++
	s.mu.Unlock()
}

func (s *stats) enrollRejected(reason string) {
	s.mu.Lock()
	s.enrollmentsRejected[reason]++
	s.mu.Unlock()
}

func (s *stats) renewed() {
	s.mu.Lock()
	s.certsRenewed++
	s.mu.Unlock()
}

func (s *stats) renewRejected(reason string) {
	s.mu.Lock()
	s.renewalsRejected[reason]++
	s.mu.Unlock()
}

// anonymousRefused counts a connection or call of a client without a
// certificate refused by one of the listener's limits (a fixed set).
func (s *stats) anonymousRefused(limit string) {
	s.mu.Lock()
	s.anonRefused[limit]++
	s.mu.Unlock()
}

func (s *stats) denied(method string) {
	s.mu.Lock()
	s.rpcDenied[method]++
	s.mu.Unlock()
}

func (s *stats) gatewayRejectedBy(front, reason string) {
	k := gatewayRejection{front, reason}
	s.mu.Lock()
	if _, ok := s.gatewayRejected[k]; !ok && len(s.gatewayRejected) >= maxGatewayRejections {
		k = gatewayRejection{"other", "other"}
	}
	s.gatewayRejected[k]++
	s.mu.Unlock()
}

type statsSnapshot struct {
	reportsAccepted, enrollments, certsRenewed                        uint64
	reportsRejected, enrollmentsRejected, rpcDenied, renewalsRejected map[string]uint64
	gatewayRejected                                                   map[gatewayRejection]uint64
	anonRefused                                                       map[string]uint64
}

func (s *stats) snapshot() statsSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return statsSnapshot{
		reportsAccepted:     s.reportsAccepted,
		enrollments:         s.enrollments,
		reportsRejected:     maps.Clone(s.reportsRejected),
		enrollmentsRejected: maps.Clone(s.enrollmentsRejected),
		rpcDenied:           maps.Clone(s.rpcDenied),
		gatewayRejected:     maps.Clone(s.gatewayRejected),
		certsRenewed:        s.certsRenewed,
		renewalsRejected:    maps.Clone(s.renewalsRejected),
		anonRefused:         maps.Clone(s.anonRefused),
	}
}
