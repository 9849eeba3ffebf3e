package postgres

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// notifyChannel is the channel every transaction that records events
// notifies, and Wake listens on. PostgreSQL delivers a notification when
// the transaction commits, and drops it when it rolls back.
const notifyChannel = "posture_events"

// notifySQL notifies notifyChannel; several notifications of one
// transaction reach a listener as one.
const notifySQL = `SELECT pg_notify('` + notifyChannel + `', '')`

// insertEventSQL records an event, returns its ID and notifies listeners.
//
// Ordering: the events of one device must commit in the order of their
// IDs, so that the newest event of a device says how it stands. The ID
// is taken here, when the row is inserted, so every transaction that
// changes a device locks the device's row (UPDATE, or SELECT … FOR
// UPDATE) before it runs this. Otherwise two transactions could take IDs
// in one order and the row lock in the other: the one with the lower ID
// would wait for the one with the higher, commit after it, and its event,
// the older by ID, would hold the device's newer state.
const insertEventSQL = `WITH e AS (
	INSERT INTO events (at, kind, device_id, report_id, data) VALUES ($1, $2, $3, $4, $5) RETURNING id
), n AS (` + notifySQL + `)
SELECT e.id FROM e CROSS JOIN n`

// insertEvent writes ev within tx, taking its ID, and sets its ID and
// time. The caller holds the lock on the device's row, if ev has one.
func insertEvent(ctx context.Context, tx pgx.Tx, ev *store.Event, now time.Time) error {
	data, err := store.EncodeEventData(*ev)
	if err != nil {
		return err
	}
	var id int64
	if err := tx.QueryRow(ctx, insertEventSQL, nanos(now), string(ev.Kind), ev.DeviceID, nil, data).Scan(&id); err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	ev.ID, ev.At = uint64(id), now.UTC()
	return nil
}

// LastEventID is the newest event ID committed; 0 for none.
//
// It is the newest event's ID, or when the events up to it were pruned,
// the highest pruned one (meta's events_floor), so it never goes back. The
// sequence's last value would be simpler, but it counts IDs given to
// transactions that have not committed yet, or never will.
func (s *Store) LastEventID(ctx context.Context) (uint64, error) {
	var id int64
	err := s.read(func() error {
		return s.pool.QueryRow(ctx, `SELECT greatest((SELECT coalesce(max(id), 0) FROM events),
			(SELECT value FROM meta WHERE key = 'events_floor'))`).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("last event: %w", err)
	}
	return uint64(id), nil
}

// EventIDs returns up to limit IDs of committed events above after.
func (s *Store) EventIDs(ctx context.Context, after uint64, limit int) ([]uint64, error) {
	var ids []uint64
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT id FROM events WHERE id > $1 ORDER BY id LIMIT $2`, int64(after), limitArg(limit))
		if err != nil {
			return err
		}
		var id int64
		_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
			ids = append(ids, uint64(id))
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read event IDs: %w", err)
	}
	return ids, nil
}

// Events returns the committed events among ids, in ID order, with the
// bytes of the reports they name while those are stored.
func (s *Store) Events(ctx context.Context, ids []uint64) ([]store.Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]int64, len(ids))
	for i, id := range ids {
		args[i] = int64(id)
	}
	var out []store.Event
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT e.id, e.at, e.kind, e.device_id, e.data, r.nonce, r.body, r.proof
			FROM events e LEFT JOIN reports r ON r.id = e.report_id
			WHERE e.id = ANY($1) ORDER BY e.id`, args)
		if err != nil {
			return err
		}
		var (
			id, at             int64
			kind, device       string
			data               []byte
			nonce, body, proof []byte
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &at, &kind, &device, &data, &nonce, &body, &proof}, func() error {
			ev := store.Event{ID: uint64(id), At: fromNanos(at), Kind: store.EventKind(kind), DeviceID: device}
			if err := store.DecodeEventData(data, &ev); err != nil {
				return err
			}
			if ev.Report != nil {
				// Scan reuses nothing it hands out: these are the row's own.
				ev.Report.Nonce, ev.Report.Body, ev.Report.Proof = nilIfEmpty(nonce), nilIfEmpty(body), nilIfEmpty(proof)
			}
			out = append(out, ev)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return out, nil
}

// PruneEvents deletes events committed before cutoff, and raises meta's
// events_floor to the highest ID it deleted.
func (s *Store) PruneEvents(ctx context.Context, cutoff time.Time, below uint64) (int, error) {
	if below > math.MaxInt64 {
		below = math.MaxInt64
	}
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `WITH gone AS (
				DELETE FROM events WHERE at < $1 AND id < $2 RETURNING id
			), floor AS (
				UPDATE meta SET value = greatest(value, (SELECT coalesce(max(id), 0) FROM gone)) WHERE key = 'events_floor'
			)
			SELECT count(*) FROM gone`, nanos(cutoff), int64(below)).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return n, nil
}
