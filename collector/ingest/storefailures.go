package ingest

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// storeFailureLogEvery spaces the lines logged while writes keep
	// failing.
	storeFailureLogEvery = time.Minute
	// storeRecoveredAfter is how long writes must go without a failure
	// before a spell of failures is over: a nearly full disk lets a write
	// through now and then, and each must not end the spell and start
	// another.
	storeRecoveredAfter = 10 * time.Second
)

// storeHint is what an operator checks when the database cannot be
// written.
const storeHint = "free space on the disk holding the database, and that no other program holds a lock on it (the collector must be its only writer)"

// storeFailures aggregates the log of failed report writes. A full disk or
// a locked database fails every write at once, and a line per report, from
// every agent, would bury the one that says why: the first failure is
// logged at once, then one line a minute saying how many failed since, and
// one line when writes succeed again. Every failure is counted
// (posture_reports_rejected_total and posture_report_streams_refused_total,
// reason storage).
type storeFailures struct {
	failing atomic.Bool // read by every stored report, without the lock

	mu     sync.Mutex
	since  time.Time // the first failure of the spell
	last   time.Time // the latest failure
	logged time.Time // the last line
	failed int       // failures in the spell
	quiet  int       // failures since the last line
}

// fail records a failed write; during names it (store report, open report
// stream).
func (s *storeFailures) fail(log *slog.Logger, now time.Time, during string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed++
	s.quiet++
	s.last = now
	if !s.failing.Load() {
		s.since = now
		s.failing.Store(true)
	} else if now.Sub(s.logged) < storeFailureLogEvery {
		return
	}
	log.Error("cannot write reports to the database; refusing them until it can be written again (agents keep them and send them again)",
		"during", during, "err", err, "failed", s.quiet, "failing_since", s.since.UTC().Format(time.RFC3339), "check", storeHint)
	s.logged, s.quiet = now, 0
}

// ok records a successful write, which ends a spell of failures once none
// came for storeRecoveredAfter.
func (s *storeFailures) ok(log *slog.Logger, now time.Time) {
	if !s.failing.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.failing.Load() || now.Sub(s.last) < storeRecoveredAfter {
		return
	}
	log.Info("writing reports to the database again", "failed", s.failed,
		"failing_from", s.since.UTC().Format(time.RFC3339), "failing_until", s.last.UTC().Format(time.RFC3339))
	s.failing.Store(false)
	s.failed, s.quiet = 0, 0
}
