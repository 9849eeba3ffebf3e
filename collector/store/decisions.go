package store

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"time"
)

// Decision is a saved record of the collector's decision log: one access
// decision, or a run of identical ones made Count times from FirstAt to At.
type Decision struct {
	Seq         uint64 // the record's place in the log; later records have higher ones
	FirstAt, At time.Time
	Count       uint64
	Device      string
	Level       string
	Caller      string
	Allowed     bool
	Score       uint32
	State       int32  // the device's state at the decision
	Detail      []byte // reasons and failed checks, as the collector encodes them
}

// SaveDecisions writes ds, replacing saved records with the same Seq (a
// run that grew), and then deletes the records older than the newest keep.
// Either all of ds is saved or none of it.
func (s *Store) SaveDecisions(ctx context.Context, ds []Decision, keep int) error {
	if len(ds) == 0 {
		return nil
	}
	for _, d := range ds {
		if d.Seq == 0 || d.Seq > math.MaxInt64 || d.Count > math.MaxInt64 {
			return fmt.Errorf("save decisions: record %d (count %d) is outside the storable range", d.Seq, d.Count)
		}
	}
	err := s.submit(ctx, func(tx *sql.Tx) error {
		for _, d := range ds {
			allowed := 0
			if d.Allowed {
				allowed = 1
			}
			if _, err := tx.Exec(`INSERT OR REPLACE INTO decisions (seq, first_at, at, count, device, level, caller, allowed, score, state, detail)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				int64(d.Seq), nanos(d.FirstAt), nanos(d.At), int64(d.Count), d.Device, d.Level, d.Caller, allowed, d.Score, d.State, blob(d.Detail)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(`DELETE FROM decisions WHERE seq <= (SELECT max(seq) FROM decisions) - ?`, keep)
		return err
	})
	if err != nil {
		return fmt.Errorf("save %d decisions: %w", len(ds), err)
	}
	return nil
}

// Decisions returns the newest limit saved records, oldest first.
func (s *Store) Decisions(ctx context.Context, limit int) ([]Decision, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, first_at, at, count, device, level, caller, allowed, score, state, detail
		FROM (SELECT * FROM decisions ORDER BY seq DESC LIMIT ?) ORDER BY seq`, limit)
	if err != nil {
		return nil, fmt.Errorf("load decisions: %w", err)
	}
	defer rows.Close()
	var out []Decision
	for rows.Next() {
		var (
			d                 Decision
			seq, first, at, n int64
			allowed           int
		)
		if err := rows.Scan(&seq, &first, &at, &n, &d.Device, &d.Level, &d.Caller, &allowed, &d.Score, &d.State, &d.Detail); err != nil {
			return nil, fmt.Errorf("load decisions: %w", err)
		}
		d.Seq, d.FirstAt, d.At, d.Count, d.Allowed = uint64(seq), fromNanos(first), fromNanos(at), uint64(n), allowed != 0
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load decisions: %w", err)
	}
	return out, nil
}

// watchGap separates the watch revisions of one collector process from the
// next: more events than a process ever publishes.
const watchGap = 1 << 40

// NextWatchBase returns the first watch revision for a collector starting
// now (in microseconds), and records it: above every revision a process
// before it can have published, even when the clock has been set back
// since, so that a watcher's revision from before never passes for a new
// one.
func (s *Store) NextWatchBase(ctx context.Context, nowMicros uint64) (uint64, error) {
	var base uint64
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var prev int64
		err := tx.QueryRow(`SELECT value FROM meta WHERE key = 'watch_base'`).Scan(&prev)
		if err != nil && err != sql.ErrNoRows {
			return err
		}
		base = nowMicros
		if err == nil && uint64(prev)+watchGap > base {
			base = uint64(prev) + watchGap
		}
		if base > math.MaxInt64 {
			return fmt.Errorf("watch revisions exhausted (%d)", base)
		}
		_, err = tx.Exec(`INSERT INTO meta (key, value) VALUES ('watch_base', ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, int64(base))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("next watch revision: %w", err)
	}
	return base, nil
}
