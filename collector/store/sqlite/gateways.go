package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// AddGateway records an issued gateway certificate.
func (s *Store) AddGateway(ctx context.Context, g store.Gateway) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO gateways (serial, name, issued_at, expires_at) VALUES (?, ?, ?, ?)`,
			g.Serial, g.Name, nanos(g.IssuedAt), nanos(g.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("record gateway certificate %s: %w", g.Serial, err)
	}
	return nil
}

// Gateways lists the recorded gateway certificates by name and issue time.
func (s *Store) Gateways(ctx context.Context) ([]store.Gateway, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT serial, name, issued_at, expires_at, revoked_at, revoke_reason
		FROM gateways ORDER BY name, issued_at`)
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	defer rows.Close()
	var out []store.Gateway
	for rows.Next() {
		var (
			g                        store.Gateway
			issued, expires, revoked int64
		)
		if err := rows.Scan(&g.Serial, &g.Name, &issued, &expires, &revoked, &g.RevokeReason); err != nil {
			return nil, fmt.Errorf("list gateways: %w", err)
		}
		g.IssuedAt, g.ExpiresAt = fromNanos(issued), fromNanos(expires)
		if revoked != 0 {
			g.RevokedAt = fromNanos(revoked)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// RevokeGateways revokes every unrevoked certificate of a gateway name,
// or the one with a serial (recorded or not), and returns the serials it
// revoked. A name with no certificate returns store.ErrNotFound.
func (s *Store) RevokeGateways(ctx context.Context, name, serial, reason string, now time.Time) ([]string, store.Event, error) {
	if (name == "") == (serial == "") {
		return nil, store.Event{}, errors.New("revoke gateway: give a name or a serial")
	}
	var (
		revoked []string
		ev      store.Event
	)
	err := s.submit(ctx, func(tx *sql.Tx) error {
		revoked, ev = nil, store.Event{}
		if err := revokeGateways(tx, name, serial, reason, now, &revoked); err != nil {
			return err
		}
		if len(revoked) == 0 {
			return nil
		}
		ev = store.Event{Kind: store.EventGatewayRevoked, Serials: revoked, Reason: reason}
		return insertEvent(tx, &ev, now, 0)
	})
	if err != nil {
		return nil, store.Event{}, fmt.Errorf("revoke gateway: %w", err)
	}
	return revoked, ev, nil
}

func revokeGateways(tx *sql.Tx, name, serial, reason string, now time.Time, revoked *[]string) error {
	{
		if serial != "" {
			var got string
			err := tx.QueryRow(`INSERT INTO gateways (serial, name, issued_at, expires_at, revoked_at, revoke_reason)
				VALUES (?, '', 0, 0, ?, ?)
				ON CONFLICT (serial) DO UPDATE SET revoked_at = excluded.revoked_at, revoke_reason = excluded.revoke_reason
				WHERE revoked_at = 0
				RETURNING serial`, serial, nanos(now), reason).Scan(&got)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return nil // revoked before
			case err != nil:
				return err
			}
			*revoked = append(*revoked, got)
			return nil
		}
		var known int
		if err := tx.QueryRow(`SELECT count(*) FROM gateways WHERE name = ?`, name).Scan(&known); err != nil {
			return err
		}
		if known == 0 {
			return store.ErrNotFound
		}
		rows, err := tx.Query(`UPDATE gateways SET revoked_at = ?, revoke_reason = ? WHERE name = ? AND revoked_at = 0 RETURNING serial`, nanos(now), reason, name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return err
			}
			*revoked = append(*revoked, s)
		}
		return rows.Err()
	}
}
