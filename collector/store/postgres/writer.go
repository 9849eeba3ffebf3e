package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// maxBatch caps the reports committed in one transaction, which bounds
// how long a caller waits behind others.
const maxBatch = 512

// appendSQL appends one report and moves its device's head to it, by
// compare-and-set, in one statement, and returns the event's ID, or NULL
// when the head did not move. A refusal (another stream, another head, a
// revoked or unknown device) raises no error: the update matches no row
// and the inserts that hang off it insert nothing, so one refused report
// does not fail the transaction it shares with others.
//
// The device's row is locked by the update before the event's ID is
// taken (see insertEventSQL): the inserts read the rows the update
// returns, so they run only after it found, locked and changed the row.
// The report's ID is taken in the update too, as the new head's.
//
// $1 device, $2 seq, $3 digest, $4 received_at, $5-$7 TPM clock (NULL
// keeps the stored one), $8 reboot (0 or 1), $9 measured boot (NULL keeps
// it), $10 stream, $11 previous digest, $12 nonce, $13 body, $14 proof,
// $15 event data, $16 the revoked state.
const appendSQL = `WITH head AS (
	UPDATE devices SET last_report = nextval('reports_id_seq'), last_seq = $2, last_digest = $3,
		last_seen = greatest(last_seen, $4), tpm_clock = coalesce($5, tpm_clock),
		tpm_reset_count = coalesce($6, tpm_reset_count), tpm_restart_count = coalesce($7, tpm_restart_count),
		reboots = reboots + $8, measured_boot = coalesce($9, measured_boot)
	WHERE id = $1 AND stream_epoch = $10 AND state <> $16 AND last_seq = $2 - 1
		AND coalesce(last_digest, ''::bytea) = $11
	RETURNING last_report
), report AS (
	INSERT INTO reports (id, device_id, seq, digest, nonce, body, proof, received_at)
	SELECT last_report, $1, $2, $3, $12, $13, $14, $4 FROM head
	RETURNING id
), event AS (
	INSERT INTO events (at, kind, device_id, report_id, data)
	SELECT $4, 'report', $1, id, $15 FROM report
	RETURNING id
)
SELECT (SELECT id FROM event)`

// appendArgs are appendSQL's arguments for r, whose event encodes as data.
func appendArgs(r *store.Report, data []byte) []any {
	var clock, resets, restarts *int64
	if r.TPM != nil {
		c, rs, rt := int64(r.TPM.Clock), int64(r.TPM.ResetCount), int64(r.TPM.RestartCount)
		clock, resets, restarts = &c, &rs, &rt
	}
	reboot := int64(0)
	if r.Reboot {
		reboot = 1
	}
	return []any{r.DeviceID, int64(r.Seq), blob(r.Digest), nanos(r.ReceivedAt), clock, resets, restarts, reboot,
		r.MeasuredBoot, int64(r.Stream), blob(r.PrevDigest), blob(r.Nonce), blob(r.Body), blob(r.Proof), data, store.StateRevoked}
}

// appendOp is one AppendReport waiting for the writer.
type appendOp struct {
	ctx  context.Context
	r    *store.Report
	data []byte             // the event's data (store.EncodeEventData)
	done chan appendOutcome // receives once the transaction committed or failed
}

// appendOutcome is what the writer tells an appendOp.
type appendOutcome struct {
	event int64 // the event's ID; 0 when the head did not move
	// alone: the shared transaction failed, and with it this report; it
	// is to be appended again in a transaction of its own.
	alone bool
	err   error // the report was not looked at (its context ended first)
}

// writer commits queued appends in shared transactions. PostgreSQL spends
// a transaction's commit (a WAL flush) and a round trip on it however
// many reports it holds, so while a transaction commits the next calls
// queue, and the next transaction takes them all.
type writer struct {
	s       *Store
	ops     chan *appendOp
	done    sync.WaitGroup
	batches atomic.Int64 // transactions sent, for tests and benchmarks
}

// start runs n writer goroutines (see Writers).
func (w *writer) start(s *Store, n int) {
	w.s, w.ops = s, make(chan *appendOp, maxBatch)
	for range n {
		w.done.Add(1)
		go w.run()
	}
}

// stop waits for the writers to commit what is queued, and ends them.
// Nothing may be queued after it is called.
func (w *writer) stop() {
	close(w.ops)
	w.done.Wait()
}

func (w *writer) run() {
	defer w.done.Done()
	batch := make([]*appendOp, 0, maxBatch)
	for {
		first, ok := <-w.ops
		if !ok {
			return
		}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-w.ops:
				if !ok {
					break drain
				}
				batch = append(batch, o)
			default:
				break drain
			}
		}
		w.commit(batch)
		clear(batch) // let finished operations be collected
	}
}

// commit sends batch as one transaction in one round trip: BEGIN, a
// statement per report, the notification, COMMIT. Its reports are in
// device order, so that two collectors' transactions lock devices in the
// same order and never wait for each other in a cycle; one device's
// reports keep the order they were queued in.
func (w *writer) commit(batch []*appendOp) {
	w.batches.Add(1)
	live := batch[:0:0]
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.done <- appendOutcome{err: err} // not started: nothing stored
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	slices.SortStableFunc(live, func(a, b *appendOp) int { return cmp.Compare(a.r.DeviceID, b.r.DeviceID) })

	events, err := w.send(live)
	for i, o := range live {
		if err != nil {
			o.done <- appendOutcome{alone: true}
			continue
		}
		o.done <- appendOutcome{event: events[i]}
	}
}

// send runs live's reports in one transaction and returns their event IDs
// (0 where the head did not move) once it committed.
func (w *writer) send(live []*appendOp) ([]int64, error) {
	// Not the callers' contexts: one caller giving up must not abort the
	// others' transaction, and a caller whose report is under way waits
	// for the outcome.
	ctx := context.Background()
	conn, err := w.s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	for _, o := range live {
		b.Queue(appendSQL, appendArgs(o.r, o.data)...)
	}
	b.Queue(notifySQL)
	b.Queue("COMMIT")
	events := make([]int64, len(live))
	err = func() error {
		br := conn.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return err
		}
		for i := range live {
			var id *int64
			if err := br.QueryRow().Scan(&id); err != nil {
				return err
			}
			if id != nil {
				events[i] = *id
			}
		}
		if _, err := br.Exec(); err != nil {
			return err
		}
		_, err := br.Exec()
		return err
	}()
	if err != nil {
		// A statement failed: the server skipped the rest, COMMIT too, and
		// the transaction is aborted but still open.
		if conn.Conn().PgConn().TxStatus() != 'I' {
			if _, rerr := conn.Exec(ctx, "ROLLBACK"); rerr != nil {
				_ = conn.Conn().Close(ctx) // the pool drops a closed connection
			}
		}
		return nil, fmt.Errorf("commit %d reports: %w", len(live), err)
	}
	return events, nil
}
