// Package stats counts what a collector accepted and refused since it
// started. The counts are this collector's: each replica sharing a
// database counts its own.
package stats

import (
	"maps"
	"sync"
)

// Stats counts what the collector accepted and refused since it started.
type Stats struct {
	mu                  sync.Mutex
	reportsAccepted     uint64
	reportsRejected     map[string]uint64
	streamsRefused      map[string]uint64
	enrollments         uint64
	enrollmentsRejected map[string]uint64
	rpcDenied           map[string]uint64
	gatewayRejected     map[GatewayRejection]uint64
	certsRenewed        uint64
	renewalsRejected    map[string]uint64
	anonRefused         map[string]uint64 // by limit
}

// GatewayRejection is a gateway front end and why it refused a request.
type GatewayRejection struct{ Front, Reason string }

// MaxGatewayRejections bounds the front and reason pairs counted apart;
// the front ends report a handful, and anything past the bound is "other"
// rather than a new metric series.
const MaxGatewayRejections = 64

// New makes zero counts.
func New() *Stats {
	return &Stats{reportsRejected: map[string]uint64{}, streamsRefused: map[string]uint64{}, enrollmentsRejected: map[string]uint64{}, rpcDenied: map[string]uint64{}, gatewayRejected: map[GatewayRejection]uint64{}, renewalsRejected: map[string]uint64{}, anonRefused: map[string]uint64{}}
}

// Accepted counts one report stored.
func (s *Stats) Accepted() {
	s.mu.Lock()
	s.reportsAccepted++
	s.mu.Unlock()
}

// Rejected counts one report refused, by reason.
func (s *Stats) Rejected(reason string) {
	s.mu.Lock()
	s.reportsRejected[reason]++
	s.mu.Unlock()
}

// StreamRefused counts one report stream refused before any report was
// read, by reason (storage: the database could not be written).
func (s *Stats) StreamRefused(reason string) {
	s.mu.Lock()
	s.streamsRefused[reason]++
	s.mu.Unlock()
}

// Enrolled counts one enrollment.
func (s *Stats) Enrolled() {
	s.mu.Lock()
	s.enrollments++
	s.mu.Unlock()
}

// EnrollRejected counts one enrollment refused, by reason.
func (s *Stats) EnrollRejected(reason string) {
	s.mu.Lock()
	s.enrollmentsRejected[reason]++
	s.mu.Unlock()
}

// Renewed counts one certificate renewal.
func (s *Stats) Renewed() {
	s.mu.Lock()
	s.certsRenewed++
	s.mu.Unlock()
}

// RenewRejected counts one renewal refused, by reason.
func (s *Stats) RenewRejected(reason string) {
	s.mu.Lock()
	s.renewalsRejected[reason]++
	s.mu.Unlock()
}

// AnonymousRefused counts a connection or call of a client without a
// certificate refused by one of the listener's limits (a fixed set).
func (s *Stats) AnonymousRefused(limit string) {
	s.mu.Lock()
	s.anonRefused[limit]++
	s.mu.Unlock()
}

// Denied counts one RPC refused by authorization, by method.
func (s *Stats) Denied(method string) {
	s.mu.Lock()
	s.rpcDenied[method]++
	s.mu.Unlock()
}

// GatewayRejected counts one gateway front-end request refused before a decision, by front end and reason.
func (s *Stats) GatewayRejected(front, reason string) {
	k := GatewayRejection{front, reason}
	s.mu.Lock()
	if _, ok := s.gatewayRejected[k]; !ok && len(s.gatewayRejected) >= MaxGatewayRejections {
		k = GatewayRejection{"other", "other"}
	}
	s.gatewayRejected[k]++
	s.mu.Unlock()
}

// Snapshot is the counts at one moment.
type Snapshot struct {
	ReportsAccepted, Enrollments, CertsRenewed                        uint64
	ReportsRejected, EnrollmentsRejected, RPCDenied, RenewalsRejected map[string]uint64
	StreamsRefused                                                    map[string]uint64
	GatewayRejected                                                   map[GatewayRejection]uint64
	AnonRefused                                                       map[string]uint64
}

// Snapshot copies the counts.
func (s *Stats) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Snapshot{
		ReportsAccepted:     s.reportsAccepted,
		Enrollments:         s.enrollments,
		ReportsRejected:     maps.Clone(s.reportsRejected),
		StreamsRefused:      maps.Clone(s.streamsRefused),
		EnrollmentsRejected: maps.Clone(s.enrollmentsRejected),
		RPCDenied:           maps.Clone(s.rpcDenied),
		GatewayRejected:     maps.Clone(s.gatewayRejected),
		CertsRenewed:        s.certsRenewed,
		RenewalsRejected:    maps.Clone(s.renewalsRejected),
		AnonRefused:         maps.Clone(s.anonRefused),
	}
}
