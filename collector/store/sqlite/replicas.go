package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/posture-project/posture/collector/store"
)

// ClaimIdentity records the CA fingerprint and trust domain the database
// belongs to, or checks them against what was recorded.
func (s *Store) ClaimIdentity(ctx context.Context, caFingerprint, trustDomain string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		for _, kv := range [][2]string{{"ca_fingerprint", caFingerprint}, {"trust_domain", trustDomain}} {
			var got string
			err := tx.QueryRow(`SELECT value FROM settings WHERE key = ?`, kv[0]).Scan(&got)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if caFingerprint == "" {
					continue // a check only
				}
				if _, err := tx.Exec(`INSERT INTO settings (key, value) VALUES (?, ?)`, kv[0], kv[1]); err != nil {
					return err
				}
			case err != nil:
				return err
			case got != kv[1]:
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
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO replicas (id, name, advertise, version, started_at, seen_at, applied) VALUES (?, ?, ?, ?, ?, ?, ?)
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

// Replicas lists the replicas that sent a heartbeat, by name.
func (s *Store) Replicas(ctx context.Context) ([]store.Replica, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT id, name, advertise, version, started_at, seen_at, applied FROM replicas ORDER BY name, id`)
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	defer rows.Close()
	var out []store.Replica
	for rows.Next() {
		var (
			r                      store.Replica
			started, seen, applied int64
		)
		if err := rows.Scan(&r.ID, &r.Name, &r.Advertise, &r.Version, &started, &seen, &applied); err != nil {
			return nil, fmt.Errorf("list replicas: %w", err)
		}
		r.StartedAt, r.SeenAt, r.Applied = fromNanos(started), fromNanos(seen), uint64(applied)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	return out, nil
}

// ForgetReplica removes a replica's record.
func (s *Store) ForgetReplica(ctx context.Context, id string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM replicas WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget replica %s: %w", id, err)
	}
	return nil
}
