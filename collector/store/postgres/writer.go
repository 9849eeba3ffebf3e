package postgres

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/posture-project/posture/collector/store"
)

var bigEndian = binary.BigEndian

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
// Every parameter is cast to its type, which the binary encoding below
// relies on ($2 - 1 alone would make $2 an integer).
//
// $1 device, $2 seq, $3 digest, $4 received_at, $5-$7 TPM clock (NULL
// keeps the stored one), $8 reboot (0 or 1), $9 measured boot (NULL keeps
// it), $10 stream, $11 previous digest, $12 nonce, $13 body, $14 proof,
// $15 event data, $16 the revoked state.
const appendSQL = `WITH head AS (
	UPDATE devices SET last_report = nextval('reports_id_seq'), last_seq = $2::bigint, last_digest = $3::bytea,
		last_seen = greatest(last_seen, $4::bigint), tpm_clock = coalesce($5::bigint, tpm_clock),
		tpm_reset_count = coalesce($6::bigint, tpm_reset_count), tpm_restart_count = coalesce($7::bigint, tpm_restart_count),
		reboots = reboots + $8::bigint, measured_boot = coalesce($9::bytea, measured_boot)
	WHERE id = $1::text AND stream_epoch = $10::bigint AND state <> $16::integer AND last_seq = $2::bigint - 1
		AND coalesce(last_digest, ''::bytea) = $11::bytea
	RETURNING last_report
), report AS (
	INSERT INTO reports (id, device_id, seq, digest, nonce, body, proof, received_at)
	SELECT last_report, $1::text, $2::bigint, $3::bytea, $12::bytea, $13::bytea, $14::bytea, $4::bigint FROM head
	RETURNING id
), event AS (
	INSERT INTO events (at, kind, device_id, report_id, data)
	SELECT $4::bigint, 'report', $1::text, id, $15::bytea FROM report
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
	failed  atomic.Int64 // transactions that failed, whose reports went alone
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
	enc := new(paramEncoder)
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
		w.commit(batch, enc)
		clear(batch) // let finished operations be collected
	}
}

// commit sends batch as one transaction in one round trip: BEGIN, a
// statement per report, the notification, COMMIT. Its reports are in
// device order, so that two collectors' transactions lock devices in the
// same order and never wait for each other in a cycle; one device's
// reports keep the order they were queued in.
func (w *writer) commit(batch []*appendOp, enc *paramEncoder) {
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

	events, err := w.send(live, enc)
	if err != nil {
		w.failed.Add(1)
	}
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
func (w *writer) send(live []*appendOp, enc *paramEncoder) ([]int64, error) {
	// Not the callers' contexts: one caller giving up must not abort the
	// others' transaction, and a caller whose report is under way waits
	// for the outcome.
	ctx := context.Background()
	conn, err := w.s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("commit %d reports: %w", len(live), err)
	}
	defer conn.Release()
	events, err := w.pipeline(ctx, conn.Conn(), live, enc)
	if err != nil {
		// A statement failed: the server skipped the rest, COMMIT too, and
		// the transaction is aborted but still open.
		pc := conn.Conn().PgConn()
		if !pc.IsClosed() && pc.TxStatus() != 'I' {
			if _, rerr := conn.Exec(ctx, "ROLLBACK"); rerr != nil {
				_ = conn.Conn().Close(ctx) // the pool drops a closed connection
			}
		}
		return nil, fmt.Errorf("commit %d reports: %w", len(live), err)
	}
	return events, nil
}

// appendStatement names appendSQL prepared on a connection.
const appendStatement = "posture_append_report"

// flushEvery is how many reports are encoded before they are sent: the
// server starts on them while the next are encoded, and the send buffer
// stays small.
const flushEvery = 8

// binaryFormat asks for every parameter and result in binary format.
var binaryFormat = []int16{pgtype.BinaryFormatCode}

// pipeline sends the transaction through pgx's pipeline with parameters
// that enc encodes into buffers kept from batch to batch: appends are
// what collectors do most, and pgx's general path allocates anew for
// every parameter and every batch.
func (w *writer) pipeline(ctx context.Context, conn *pgx.Conn, live []*appendOp, enc *paramEncoder) (events []int64, err error) {
	// Prepared once per connection: pgx keeps it by name.
	sd, err := conn.Prepare(ctx, appendStatement, appendSQL)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(sd.ParamOIDs, appendParamOIDs) || len(sd.Fields) != 1 || sd.Fields[0].DataTypeOID != pgtype.Int8OID {
		return nil, fmt.Errorf("the server typed the append statement %v -> %v, not as this code encodes it", sd.ParamOIDs, sd.Fields)
	}
	p := conn.PgConn().StartPipeline(ctx)
	defer func() {
		if cerr := p.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	p.SendQueryParams("BEGIN", nil, nil, nil, nil)
	for i, o := range live {
		p.SendQueryStatement(sd, enc.params(o.r, o.data), binaryFormat, binaryFormat)
		if i%flushEvery == flushEvery-1 {
			if err := p.Flush(); err != nil {
				return nil, err
			}
		}
	}
	p.SendQueryParams(notifySQL, nil, nil, nil, nil)
	p.SendQueryParams("COMMIT", nil, nil, nil, nil)
	if err := p.Sync(); err != nil {
		return nil, err
	}

	next := func() (*pgconn.ResultReader, error) {
		res, err := p.GetResults()
		if err != nil {
			return nil, err
		}
		rr, ok := res.(*pgconn.ResultReader)
		if !ok {
			return nil, fmt.Errorf("pipeline: got %T, want a statement's result", res)
		}
		return rr, nil
	}
	skip := func() error {
		rr, err := next()
		if err != nil {
			return err
		}
		_, err = rr.Close()
		return err
	}
	if err := skip(); err != nil { // BEGIN
		return nil, err
	}
	events = make([]int64, len(live))
	for i := range live {
		rr, err := next()
		if err != nil {
			return nil, err
		}
		if rr.NextRow() {
			switch v := rr.Values()[0]; len(v) {
			case 0: // NULL: the head did not move
			case 8:
				events[i] = int64(bigEndian.Uint64(v))
			default:
				return nil, fmt.Errorf("pipeline: event ID of %d bytes", len(v))
			}
		}
		if _, err := rr.Close(); err != nil {
			return nil, err
		}
	}
	if err := skip(); err != nil { // the notification
		return nil, err
	}
	if err := skip(); err != nil { // COMMIT
		return nil, err
	}
	if res, err := p.GetResults(); err != nil {
		return nil, err
	} else if _, ok := res.(*pgconn.PipelineSync); !ok {
		return nil, fmt.Errorf("pipeline: got %T, want its end", res)
	}
	return events, nil
}

// appendParamOIDs are the types the server gives appendSQL's parameters,
// which paramEncoder encodes (in binary).
var appendParamOIDs = []uint32{
	pgtype.TextOID, pgtype.Int8OID, pgtype.ByteaOID, pgtype.Int8OID, // device, seq, digest, received_at
	pgtype.Int8OID, pgtype.Int8OID, pgtype.Int8OID, pgtype.Int8OID, // TPM clock, resets, restarts, reboot
	pgtype.ByteaOID, pgtype.Int8OID, pgtype.ByteaOID, pgtype.ByteaOID, // measured boot, stream, previous digest, nonce
	pgtype.ByteaOID, pgtype.ByteaOID, pgtype.ByteaOID, pgtype.Int4OID, // body, proof, event data, revoked state
}

// paramEncoder encodes appendSQL's parameters in binary into buffers it
// keeps; what it returns is valid until the next call. The byte fields of
// the report are passed as they are: the pipeline copies them into its
// send buffer at once.
type paramEncoder struct {
	vals [16][]byte
	ints [16 * 8]byte
	text []byte
}

func (e *paramEncoder) params(r *store.Report, data []byte) [][]byte {
	i64 := func(i int, v int64) []byte {
		b := e.ints[i*8 : i*8+8]
		bigEndian.PutUint64(b, uint64(v))
		return b
	}
	opt := func(i int, v uint64, set bool) []byte {
		if !set {
			return nil // NULL keeps what is stored
		}
		return i64(i, int64(v))
	}
	e.text = append(e.text[:0], r.DeviceID...)
	e.vals[0] = e.text
	e.vals[1] = i64(1, int64(r.Seq))
	e.vals[2] = blob(r.Digest)
	e.vals[3] = i64(3, nanos(r.ReceivedAt))
	var clock store.TPMClock
	if r.TPM != nil {
		clock = *r.TPM
	}
	e.vals[4] = opt(4, clock.Clock, r.TPM != nil)
	e.vals[5] = opt(5, uint64(clock.ResetCount), r.TPM != nil)
	e.vals[6] = opt(6, uint64(clock.RestartCount), r.TPM != nil)
	reboot := int64(0)
	if r.Reboot {
		reboot = 1
	}
	e.vals[7] = i64(7, reboot)
	e.vals[8] = r.MeasuredBoot // nil: NULL keeps the stored reading
	e.vals[9] = i64(9, int64(r.Stream))
	e.vals[10] = blob(r.PrevDigest)
	e.vals[11] = blob(r.Nonce)
	e.vals[12] = blob(r.Body)
	e.vals[13] = blob(r.Proof)
	e.vals[14] = blob(data)
	b := e.ints[15*8 : 15*8+4]
	bigEndian.PutUint32(b, uint32(store.StateRevoked))
	e.vals[15] = b
	return e.vals[:]
}
