package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	"github.com/posture-project/posture/collector/store"
)

// SaveDecisions writes ds, replacing saved records with the same Seq (a
// run that grew), and then deletes the records older than the newest keep.
// Either all of ds is saved or none of it.
func (s *Store) SaveDecisions(ctx context.Context, collector string, ds []store.Decision, keep int) error {
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
			if _, err := tx.Exec(`INSERT OR REPLACE INTO decisions (collector, seq, first_at, at, count, device, level, caller, allowed, score, state, detail)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				collector, int64(d.Seq), nanos(d.FirstAt), nanos(d.At), int64(d.Count), d.Device, d.Level, d.Caller, allowed, d.Score, d.State, blob(d.Detail)); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(`DELETE FROM decisions WHERE collector = ?1 AND seq <= (SELECT max(seq) FROM decisions WHERE collector = ?1) - ?2`, collector, keep); err != nil {
			return err
		}
		return announceDecisions(tx, collector, ds)
	})
	if err != nil {
		return fmt.Errorf("save %d decisions: %w", len(ds), err)
	}
	return nil
}

// Decisions returns the newest limit saved records, oldest first.
func (s *Store) Decisions(ctx context.Context, collector string, limit int) ([]store.Decision, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, first_at, at, count, device, level, caller, allowed, score, state, detail
		FROM (SELECT * FROM decisions WHERE collector = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq`, collector, limit)
	if err != nil {
		return nil, fmt.Errorf("load decisions: %w", err)
	}
	defer rows.Close()
	var out []store.Decision
	for rows.Next() {
		var (
			d                 store.Decision
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

// announceDecisions writes the outbox messages of the decisions marked to
// be announced, within tx.
func announceDecisions(tx *sql.Tx, collector string, ds []store.Decision) error {
	var msgs []store.OutboxMessage
	for _, d := range ds {
		if !d.Announce {
			continue
		}
		var user *store.DeviceUser
		u := store.DeviceUser{DeviceID: d.Device}
		err := tx.QueryRow(`SELECT email, issuer, subject FROM device_users WHERE device_id = ?`, d.Device).Scan(&u.Email, &u.Issuer, &u.Subject)
		switch {
		case err == nil:
			user = &u
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		m, err := store.DecisionMessage(collector, d, user)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	return writeOutbox(tx, msgs)
}
