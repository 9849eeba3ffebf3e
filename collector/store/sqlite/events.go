package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// insertEvent writes ev within tx and sets its ID and time. The events
// table numbers its rows with AUTOINCREMENT: an ID is never given out
// again, not even after the newest events were pruned.
func insertEvent(tx *sql.Tx, ev *store.Event, now time.Time, reportID int64) error {
	data, err := store.EncodeEventData(*ev)
	if err != nil {
		return err
	}
	var report sql.NullInt64
	if reportID != 0 {
		report = sql.NullInt64{Int64: reportID, Valid: true}
	}
	res, err := tx.Exec(`INSERT INTO events (at, kind, device_id, report_id, data) VALUES (?, ?, ?, ?, ?)`,
		nanos(now), string(ev.Kind), ev.DeviceID, report, data)
	if err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	ev.ID, ev.At = uint64(id), now.UTC()
	return nil
}

// LastEventID is the newest event ID committed; 0 for none.
func (s *Store) LastEventID(ctx context.Context) (uint64, error) {
	if err := s.readable(); err != nil {
		return 0, err
	}
	// sqlite_sequence holds the last ID given out, which stays after the
	// event itself was pruned.
	var id sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
		coalesce((SELECT max(id) FROM events), 0))`).Scan(&id); err != nil {
		return 0, fmt.Errorf("last event: %w", err)
	}
	return uint64(id.Int64), nil
}

// EventIDs returns up to limit IDs of committed events above after.
func (s *Store) EventIDs(ctx context.Context, after uint64, limit int) ([]uint64, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?`, int64(after), limit)
	if err != nil {
		return nil, fmt.Errorf("read event IDs: %w", err)
	}
	defer rows.Close()
	var ids []uint64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("read event IDs: %w", err)
		}
		ids = append(ids, uint64(id))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read event IDs: %w", err)
	}
	return ids, nil
}

// Events returns the committed events among ids, in ID order.
func (s *Store) Events(ctx context.Context, ids []uint64) ([]store.Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if err := s.readable(); err != nil {
		return nil, err
	}
	var out []store.Event
	// In chunks: SQLite bounds the parameters of one statement.
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = int64(id)
		}
		rows, err := s.r.QueryContext(ctx, `SELECT e.id, e.at, e.kind, e.device_id, e.data, r.nonce, r.body, r.proof
			FROM events e LEFT JOIN reports r ON r.id = e.report_id
			WHERE e.id IN (?`+strings.Repeat(",?", len(chunk)-1)+`) ORDER BY e.id`, args...)
		if err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		for rows.Next() {
			var (
				ev                 store.Event
				id, at             int64
				kind               string
				data               []byte
				nonce, body, proof []byte
			)
			if err := rows.Scan(&id, &at, &kind, &ev.DeviceID, &data, &nonce, &body, &proof); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read events: %w", err)
			}
			ev.ID, ev.At, ev.Kind = uint64(id), fromNanos(at), store.EventKind(kind)
			if err := store.DecodeEventData(data, &ev); err != nil {
				rows.Close()
				return nil, err
			}
			if ev.Report != nil {
				ev.Report.Nonce, ev.Report.Body, ev.Report.Proof = nilIfEmpty(nonce), nilIfEmpty(body), nilIfEmpty(proof)
			}
			out = append(out, ev)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
	}
	return out, nil
}

// PruneEvents deletes events committed before cutoff with IDs below below.
func (s *Store) PruneEvents(ctx context.Context, cutoff time.Time, below uint64) (int, error) {
	if below > math.MaxInt64 {
		below = math.MaxInt64
	}
	var n int64
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM events WHERE at < ? AND id < ?`, nanos(cutoff), int64(below))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return int(n), nil
}

// Wake never fires: only this process writes the database file (the data
// directory's admin socket keeps a second collector out), and it applies
// its own changes as they commit. Pollers poll.
func (s *Store) Wake() <-chan struct{} { return nil }
