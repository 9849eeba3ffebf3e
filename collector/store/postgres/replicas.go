package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// ClaimIdentity records the CA fingerprint and trust domain the database
// belongs to, or checks them against what was recorded. Collectors that
// claim at once agree: the first insert wins, and the others compare with
// it.
func (s *Store) ClaimIdentity(ctx context.Context, caFingerprint, trustDomain string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		for _, kv := range [][2]string{{"ca_fingerprint", caFingerprint}, {"trust_domain", trustDomain}} {
			var got string
			if caFingerprint != "" { // an empty one only checks
				if _, err := tx.Exec(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, kv[0], kv[1]); err != nil {
					return err
				}
			}
			err := tx.QueryRow(ctx, `SELECT value FROM settings WHERE key = $1`, kv[0]).Scan(&got)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				continue // only when checking
			case err != nil:
				return err
			}
			if got != kv[1] {
				return store.IdentityMismatch(kv[0], got, kv[1])
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("claim database: %w", err)
	}
	return nil
}

// Heartbeat records what a replica says of itself.
func (s *Store) Heartbeat(ctx context.Context, r store.Replica) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO replicas (id, name, advertise, version, started_at, seen_at, applied) VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, advertise = excluded.advertise, version = excluded.version,
				started_at = excluded.started_at, seen_at = excluded.seen_at, applied = excluded.applied`,
			r.ID, r.Name, r.Advertise, r.Version, nanos(r.StartedAt), nanos(r.SeenAt), int64(r.Applied))
		return err
	})
	if err != nil {
		return fmt.Errorf("record replica %s: %w", r.ID, err)
	}
	return nil
}

// Replicas lists the replicas that sent a heartbeat, by name (by its
// bytes, as in SQLite).
func (s *Store) Replicas(ctx context.Context) ([]store.Replica, error) {
	var out []store.Replica
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT id, name, advertise, version, started_at, seen_at, applied
			FROM replicas ORDER BY name COLLATE "C", id COLLATE "C"`)
		if err != nil {
			return err
		}
		var (
			r                      store.Replica
			started, seen, applied int64
		)
		_, err = pgx.ForEachRow(rows, []any{&r.ID, &r.Name, &r.Advertise, &r.Version, &started, &seen, &applied}, func() error {
			r.StartedAt, r.SeenAt, r.Applied = fromNanos(started), fromNanos(seen), uint64(applied)
			out = append(out, r)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	return out, nil
}

// ForgetReplica removes a replica's record.
func (s *Store) ForgetReplica(ctx context.Context, id string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM replicas WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget replica %s: %w", id, err)
	}
	return nil
}
