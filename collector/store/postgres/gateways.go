package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// AddGateway records an issued gateway certificate.
func (s *Store) AddGateway(ctx context.Context, g store.Gateway) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO gateways (serial, name, issued_at, expires_at) VALUES ($1, $2, $3, $4)`,
			g.Serial, g.Name, nanos(g.IssuedAt), nanos(g.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("record gateway certificate %s: %w", g.Serial, err)
	}
	return nil
}

// Gateways lists the recorded gateway certificates by name and issue time
// (names by their bytes, as in SQLite).
func (s *Store) Gateways(ctx context.Context) ([]store.Gateway, error) {
	var out []store.Gateway
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT serial, name, issued_at, expires_at, revoked_at, revoke_reason
			FROM gateways ORDER BY name COLLATE "C", issued_at`)
		if err != nil {
			return err
		}
		var (
			g                        store.Gateway
			issued, expires, revoked int64
		)
		_, err = pgx.ForEachRow(rows, []any{&g.Serial, &g.Name, &issued, &expires, &revoked, &g.RevokeReason}, func() error {
			g.IssuedAt, g.ExpiresAt, g.RevokedAt = fromNanos(issued), fromNanos(expires), fromNanos(revoked)
			out = append(out, g)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	return out, nil
}

// RevokeGateways revokes every unrevoked certificate of a gateway name, or
// the one with a serial (recorded or not), and returns the serials it
// revoked with their event. A name with no certificate returns
// store.ErrNotFound.
func (s *Store) RevokeGateways(ctx context.Context, name, serial, reason string, now time.Time) ([]string, store.Event, error) {
	if (name == "") == (serial == "") {
		return nil, store.Event{}, errors.New("revoke gateway: give a name or a serial")
	}
	var (
		revoked []string
		ev      store.Event
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		revoked, ev = nil, store.Event{}
		if serial != "" {
			var got string
			err := tx.QueryRow(ctx, `INSERT INTO gateways (serial, name, issued_at, expires_at, revoked_at, revoke_reason)
				VALUES ($1, '', 0, 0, $2, $3)
				ON CONFLICT (serial) DO UPDATE SET revoked_at = excluded.revoked_at, revoke_reason = excluded.revoke_reason
				WHERE gateways.revoked_at = 0
				RETURNING serial`, serial, nanos(now), reason).Scan(&got)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				return nil // revoked before
			case err != nil:
				return err
			}
			revoked = append(revoked, got)
		} else {
			var known bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gateways WHERE name = $1)`, name).Scan(&known); err != nil {
				return err
			}
			if !known {
				return store.ErrNotFound
			}
			rows, err := tx.Query(ctx, `UPDATE gateways SET revoked_at = $1, revoke_reason = $2
				WHERE name = $3 AND revoked_at = 0 RETURNING serial`, nanos(now), reason, name)
			if err != nil {
				return err
			}
			if revoked, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return err
			}
		}
		if len(revoked) == 0 {
			return nil
		}
		ev = store.Event{Kind: store.EventGatewayRevoked, Serials: revoked, Reason: reason}
		return insertEvent(ctx, tx, &ev, now)
	})
	if err != nil {
		return nil, store.Event{}, fmt.Errorf("revoke gateway: %w", err)
	}
	return revoked, ev, nil
}
