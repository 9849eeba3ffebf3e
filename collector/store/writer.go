package store

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"time"
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

// op is one write waiting for the writer goroutine.
type op struct {
	ctx  context.Context
	fn   func(tx *sql.Tx) error // runs inside its own savepoint
	done chan error             // receives the result once the batch committed or failed
}

// submit queues fn for the writer and waits for its result. Once queued, it
// waits regardless of ctx, so that the result always says whether fn's
// changes were committed; ctx only stops an operation that has not started.
func (s *Store) submit(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := &op{ctx: ctx, fn: fn, done: make(chan error, 1)}

	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
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
	for {
		first, ok := <-s.ops
		if !ok {
			return
		}
		batch = append(batch[:0], first)
		// Delivering the previous batch's results readied its callers, and
		// the first of them to queue again wakes this goroutine ahead of the
		// rest. Yielding once lets the others queue too; without it batches
		// shrink to one or two operations under load.
		runtime.Gosched()
		open := true
		take := func(o *op, ok bool) {
			if !ok {
				open = false
				return
			}
			batch = append(batch, o)
		}
	fill:
		for open && len(batch) < maxBatch {
			select {
			case o, ok := <-s.ops:
				take(o, ok)
			default:
				break fill
			}
		}
		if busy && open && len(batch) < maxBatch {
			deadline := time.Now().Add(lingerMax)
			wait.Reset(lingerGap)
		linger:
			for open && len(batch) < maxBatch {
				select {
				case o, ok := <-s.ops:
					take(o, ok)
					left := time.Until(deadline)
					if left <= 0 {
						break linger
					}
					wait.Reset(min(lingerGap, left))
				case <-wait.C:
					break linger
				}
			}
			wait.Stop()
		}
		busy = len(batch) > 1
		s.commit(batch)
		clear(batch) // drop references so finished ops can be collected
	}
}

// commit runs batch in one transaction. Each operation runs inside a
// savepoint, so one that fails is rolled back alone and the rest commit.
func (s *Store) commit(batch []*op) {
	s.batches.Add(1)
	results := make([]error, len(batch))
	fail := func(err error) {
		for _, o := range batch {
			o.done <- err
		}
	}

	// Statements run without the callers' contexts: the driver interrupts
	// the whole connection when a statement's context ends, which would
	// abort the other operations sharing the transaction.
	tx, err := s.w.Begin()
	if err != nil {
		fail(fmt.Errorf("begin transaction: %w", err))
		return
	}
	for i, o := range batch {
		if err := o.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		if _, err := tx.Exec("SAVEPOINT op"); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("begin savepoint: %w", err))
			return
		}
		results[i] = o.fn(tx)
		if results[i] != nil {
			if _, err := tx.Exec("ROLLBACK TO op"); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("roll back savepoint: %w", err))
				return
			}
		}
		if _, err := tx.Exec("RELEASE op"); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("release savepoint: %w", err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		err = fmt.Errorf("commit transaction: %w", err)
		for i := range results {
			if results[i] == nil {
				results[i] = err
			}
		}
	}
	for i, o := range batch {
		o.done <- results[i]
	}
}
