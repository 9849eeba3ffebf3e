package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// SaveDecisions writes ds, replacing saved records with the same Seq (a
// run that grew), and then deletes the collector's records older than its
// newest keep. Either all of ds is saved or none of it.
func (s *Store) SaveDecisions(ctx context.Context, collector string, ds []store.Decision, keep int) error {
	if len(ds) == 0 {
		return nil
	}
	for _, d := range ds {
		if d.Seq == 0 || d.Seq > math.MaxInt64 || d.Count > math.MaxInt64 {
			return fmt.Errorf("save decisions: record %d (count %d) is outside the storable range", d.Seq, d.Count)
		}
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, d := range ds {
			b.Queue(`INSERT INTO decisions (collector, seq, first_at, at, count, device, level, caller, allowed, score, state, detail)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
				ON CONFLICT (collector, seq) DO UPDATE SET first_at = excluded.first_at, at = excluded.at, count = excluded.count,
					device = excluded.device, level = excluded.level, caller = excluded.caller, allowed = excluded.allowed,
					score = excluded.score, state = excluded.state, detail = excluded.detail`,
				collector, int64(d.Seq), nanos(d.FirstAt), nanos(d.At), int64(d.Count), d.Device, d.Level, d.Caller,
				d.Allowed, int64(d.Score), d.State, blob(d.Detail))
		}
		b.Queue(`DELETE FROM decisions WHERE collector = $1 AND seq <= (SELECT max(seq) FROM decisions WHERE collector = $1) - $2`,
			collector, int64(keep))
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		return announceDecisions(ctx, tx, collector, ds)
	})
	if err != nil {
		return fmt.Errorf("save %d decisions: %w", len(ds), err)
	}
	return nil
}

// Decisions returns the newest limit saved records, oldest first.
func (s *Store) Decisions(ctx context.Context, collector string, limit int) ([]store.Decision, error) {
	var out []store.Decision
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT seq, first_at, at, count, device, level, caller, allowed, score, state, detail
			FROM (SELECT * FROM decisions WHERE collector = $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq`, collector, limitArg(limit))
		if err != nil {
			return err
		}
		var (
			d                        store.Decision
			seq, first, at, n, score int64
		)
		_, err = pgx.ForEachRow(rows, []any{&seq, &first, &at, &n, &d.Device, &d.Level, &d.Caller, &d.Allowed, &score, &d.State, &d.Detail}, func() error {
			d.Seq, d.FirstAt, d.At, d.Count, d.Score = uint64(seq), fromNanos(first), fromNanos(at), uint64(n), uint32(score)
			d.Detail = nilIfEmpty(d.Detail)
			out = append(out, d)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load decisions: %w", err)
	}
	return out, nil
}

// announceDecisions writes the outbox messages of the decisions marked to
// be announced, within tx, as its last step (see writeOutbox).
func announceDecisions(ctx context.Context, tx pgx.Tx, collector string, ds []store.Decision) error {
	var msgs []store.OutboxMessage
	for _, d := range ds {
		if !d.Announce {
			continue
		}
		var user *store.DeviceUser
		u := store.DeviceUser{DeviceID: d.Device}
		err := tx.QueryRow(ctx, `SELECT email, issuer, subject FROM device_users WHERE device_id = $1`, d.Device).Scan(&u.Email, &u.Issuer, &u.Subject)
		switch {
		case err == nil:
			user = &u
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		m, err := store.DecisionMessage(collector, d, user)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	return writeOutbox(ctx, tx, msgs)
}
