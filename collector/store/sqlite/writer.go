package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/posture-project/posture/collector/store"
)

// maxBatch caps the operations committed in one transaction, which bounds
// both the size of one WAL commit and how long a caller waits behind others.
const maxBatch = 1000

// While it is busy the writer lingers before a commit for more operations,
// as long as they keep arriving at most lingerGap apart and for lingerMax
// at the most. A commit costs far more than an operation in it (WAL
// writes, locks), so under load a slightly later commit of many operations
// beats many commits of a few; once arrivals pause, waiting longer only
// delays the callers already in the batch. An idle writer commits at once.
const (
	lingerGap = 100 * time.Microsecond
	lingerMax = time.Millisecond
)

// op is one write waiting for the writer goroutine. Its fn may run more
// than once, when a batch is rolled back and run again without an
// operation that failed dirty; only the last run's changes are committed.
type op struct {
	ctx context.Context
	fn  func(tx *sql.Tx) error
	// atomic: fn leaves no change behind when it returns an error, unless
	// the error is marked dirty, so it runs without a savepoint of its own.
	atomic bool
	done   chan error // receives the result once the batch committed or failed
}

// dirtyError marks an error after which an atomic operation may have left
// part of its changes in the transaction.
type dirtyError struct{ err error }

func (e dirtyError) Error() string { return e.err.Error() }
func (e dirtyError) Unwrap() error { return e.err }

func dirty(err error) error { return dirtyError{err} }

// submit queues fn for the writer, to run inside a savepoint of its own,
// and waits for its result. Once queued, it waits regardless of ctx, so
// that the result always says whether fn's changes were committed; ctx only
// stops an operation that has not started.
func (s *Store) submit(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return s.enqueue(&op{ctx: ctx, fn: fn, done: make(chan error, 1)})
}

// submitAtomic is submit for an fn that cleans up after its own errors
// (see op.atomic); it saves the two statements of a savepoint.
func (s *Store) submitAtomic(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return s.enqueue(&op{ctx: ctx, fn: fn, atomic: true, done: make(chan error, 1)})
}

func (s *Store) enqueue(o *op) error {
	ctx := o.ctx
	if err := ctx.Err(); err != nil {
		return err
	}

	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return store.ErrClosed
	}
	select {
	case s.ops <- o:
		s.queued.Add(1)
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	s.mu.RUnlock()

	return <-o.done
}

// run is the writer goroutine. It takes whatever is queued, up to maxBatch
// operations, commits them in one transaction, and repeats until Close
// closes the queue and the queue is empty.
func (s *Store) run() {
	defer close(s.done)
	batch := make([]*op, 0, maxBatch)
	wait := time.NewTimer(0)
	busy := false // the last batch had company: more operations are likely on their way
	idle := time.NewTimer(s.timing.idle)
	idle.Stop()
	for {
		var (
			first *op
			ok    bool
		)
		if len(s.tail) > 0 {
			idle.Reset(s.timing.idle)
			select {
			case first, ok = <-s.ops:
				idle.Stop()
			case <-idle.C:
				s.indexHistory()
				continue
			}
		} else {
			first, ok = <-s.ops
		}
		if !ok {
			if len(s.tail) > 0 {
				s.indexHistory() // leave the history complete
			}
			return
		}
		batch = append(batch[:0], first)
		// Delivering the previous batch's results readied its callers, and
		// the first of them to queue again wakes this goroutine ahead of the
		// rest. Yielding once lets the others queue too; without it batches
		// shrink to one or two operations under load.
		runtime.Gosched()
		open := true
		// drain takes what is queued, without waiting, and reports
		// whether it took anything.
		drain := func() bool {
			had := len(batch)
			for open && len(batch) < maxBatch {
				select {
				case o, ok := <-s.ops:
					if ok {
						batch = append(batch, o)
					} else {
						open = false
					}
				default:
					return len(batch) > had
				}
			}
			return len(batch) > had
		}
		drain()
		if busy {
			// Sleep a gap at a time and take what came meanwhile: waking
			// for every operation would cost this goroutine a switch each.
			// A gap without arrivals, or the longest linger, ends it.
			deadline := time.Now().Add(lingerMax)
			for open && len(batch) < maxBatch {
				left := time.Until(deadline)
				if left <= 0 {
					break
				}
				wait.Reset(min(lingerGap, left))
				<-wait.C
				if !drain() {
					break
				}
			}
		}
		busy = len(batch) > 1
		s.commit(batch)
		clear(batch) // drop references so finished ops can be collected
		if s.historyDue() {
			s.indexHistory()
		}
	}
}

// commit runs batch in one transaction. An operation that fails is undone
// alone: by its savepoint, or by itself when it is atomic. An atomic one
// that fails dirty, or any that fails in a way after which SQLite may have
// rolled back the whole transaction (transactionLost), takes the
// transaction down with it; the batch then runs again without it.
func (s *Store) commit(batch []*op) {
	results := make([]error, len(batch))
	final := make([]bool, len(batch)) // results[i] stands whatever the transaction does
	for s.try(batch, results, final) {
	}
	for i, o := range batch {
		o.done <- results[i]
	}
}

// try runs one attempt at committing batch and reports whether it must be
// run again.
func (s *Store) try(batch []*op, results []error, final []bool) (again bool) {
	s.batches.Add(1)
	fail := func(err error) {
		for i := range batch {
			if !final[i] {
				results[i] = err
			}
		}
	}

	// Statements run without the callers' contexts: the driver interrupts
	// the whole connection when a statement's context ends, which would
	// abort the other operations sharing the transaction.
	tx, err := s.w.Begin()
	if err != nil {
		fail(fmt.Errorf("begin transaction: %w", err))
		return false
	}
	for i, o := range batch {
		if final[i] {
			continue
		}
		if err := o.ctx.Err(); err != nil {
			results[i], final[i] = err, true
			continue
		}
		if o.atomic {
			results[i] = o.fn(tx)
			var d dirtyError
			if errors.As(results[i], &d) {
				results[i], final[i] = d.err, true
				tx.Rollback()
				return true
			}
			if transactionLost(results[i]) {
				final[i] = true
				tx.Rollback()
				return true
			}
			continue
		}
		if _, err := tx.Exec("SAVEPOINT op"); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("begin savepoint: %w", err))
			return false
		}
		results[i] = o.fn(tx)
		if transactionLost(results[i]) {
			final[i] = true
			tx.Rollback()
			return true
		}
		if results[i] != nil {
			if _, err := tx.Exec("ROLLBACK TO op"); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("roll back savepoint: %w", err))
				return false
			}
		}
		if _, err := tx.Exec("RELEASE op"); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("release savepoint: %w", err))
			return false
		}
	}
	if err := tx.Commit(); err != nil {
		err = fmt.Errorf("commit transaction: %w", err)
		for i := range results {
			if results[i] == nil && !final[i] {
				results[i] = err
			}
		}
	}
	return false
}

// transactionLost reports whether err is an error after which SQLite may
// have rolled back the whole transaction rather than only the statement
// that failed: the database or disk full, an I/O error, memory exhausted,
// or a lock it could not get. The statements that follow would then run
// outside any transaction, each committed on its own, while the batch's
// commit fails; so the batch runs again without the failed operation
// instead.
func transactionLost(err error) bool {
	var e sqlite3.Error
	if err == nil || !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case sqlite3.ErrFull, sqlite3.ErrIoErr, sqlite3.ErrNomem, sqlite3.ErrBusy:
		return true
	}
	return false
}
