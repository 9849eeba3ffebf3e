package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// recordEvent writes a device's event within tx, with the messages it
// sends (store.OutboxOf; prev is the device's standing before the
// change): the change, its event and its messages commit together.
func recordEvent(tx *sql.Tx, ev *store.Event, now time.Time, prev store.Standing) error {
	if err := insertEvent(tx, ev, now, 0); err != nil {
		return err
	}
	msgs, err := store.OutboxOf(*ev, prev)
	if err != nil {
		return err
	}
	return writeOutbox(tx, msgs)
}

// writeOutbox appends messages to the outbox within tx, giving each its
// stable ID. The single writer commits them in the order of their
// sequence numbers.
func writeOutbox(tx *sql.Tx, msgs []store.OutboxMessage) error {
	for i := range msgs {
		m := &msgs[i]
		if m.ID == "" {
			m.ID = store.NewMessageID()
		}
		res, err := tx.Exec(`INSERT INTO outbox (id, at, kind, device_id, event_id, receiver, data) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			m.ID, nanos(m.At), m.Kind, m.DeviceID, int64(m.EventID), m.Receiver, blob(m.Data))
		if err != nil {
			return fmt.Errorf("write outbox: %w", err)
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("write outbox: %w", err)
		}
		m.Seq = uint64(seq)
	}
	return nil
}

// AppendOutbox writes messages that no event makes (a verification a
// receiver asked for) and returns them with their sequence numbers and IDs.
func (s *Store) AppendOutbox(ctx context.Context, msgs []store.OutboxMessage) ([]store.OutboxMessage, error) {
	out := append([]store.OutboxMessage(nil), msgs...)
	err := s.submit(ctx, func(tx *sql.Tx) error { return writeOutbox(tx, out) })
	if err != nil {
		return nil, fmt.Errorf("append to the outbox: %w", err)
	}
	return out, nil
}

// OutboxAfter returns up to limit messages after seq after, in order:
// those for every receiver and those for receiver alone.
func (s *Store) OutboxAfter(ctx context.Context, after uint64, receiver string, limit int) ([]store.OutboxMessage, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, id, at, kind, device_id, event_id, receiver, data FROM outbox
		WHERE seq > ? AND (receiver = '' OR receiver = ?) ORDER BY seq LIMIT ?`, int64(after), receiver, limit)
	if err != nil {
		return nil, fmt.Errorf("read the outbox: %w", err)
	}
	defer rows.Close()
	var out []store.OutboxMessage
	for rows.Next() {
		var (
			m            store.OutboxMessage
			seq, at, evt int64
		)
		if err := rows.Scan(&seq, &m.ID, &at, &m.Kind, &m.DeviceID, &evt, &m.Receiver, &m.Data); err != nil {
			return nil, fmt.Errorf("read the outbox: %w", err)
		}
		m.Seq, m.At, m.EventID = uint64(seq), fromNanos(at), uint64(evt)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the outbox: %w", err)
	}
	return out, nil
}

// LastOutboxSeq is the newest sequence number given out; 0 for none.
func (s *Store) LastOutboxSeq(ctx context.Context) (uint64, error) {
	if err := s.readable(); err != nil {
		return 0, err
	}
	var seq int64
	if err := s.r.QueryRowContext(ctx, `SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
		coalesce((SELECT max(seq) FROM outbox), 0))`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read the outbox: %w", err)
	}
	return uint64(seq), nil
}

// PruneOutbox deletes the messages every receiver has had, and those
// written before cutoff whatever the receivers, and returns how many.
func (s *Store) PruneOutbox(ctx context.Context, cutoff time.Time) (int, error) {
	var n int64
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM outbox WHERE at < ?
			OR seq <= coalesce((SELECT min(cursor) FROM receivers), (SELECT max(seq) FROM outbox))`, nanos(cutoff))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune the outbox: %w", err)
	}
	return int(n), nil
}

const selectReceiver = `SELECT id, kind, config, created_at, cursor, holder, lease_until, delivered, delivered_at,
	failing_since, attempts, last_error FROM receivers`

func scanReceiver(row scanner) (store.Receiver, error) {
	var (
		r                                   store.Receiver
		created, cursor, until, n, at, fail int64
		attempts                            int64
	)
	if err := row.Scan(&r.ID, &r.Kind, &r.Config, &created, &cursor, &r.Holder, &until, &n, &at, &fail, &attempts, &r.LastError); err != nil {
		return store.Receiver{}, err
	}
	r.Config = nilIfEmpty(r.Config)
	r.CreatedAt, r.Cursor, r.LeaseUntil = fromNanos(created), uint64(cursor), fromNanos(until)
	r.Delivered, r.DeliveredAt, r.FailingSince, r.Attempts = uint64(n), fromNanos(at), fromNanos(fail), uint32(attempts)
	return r, nil
}

// AddReceiver records a receiver, unless one with its ID is recorded
// already, and returns it as stored. A new receiver starts at the end of
// the outbox: it is sent what changes from now on.
func (s *Store) AddReceiver(ctx context.Context, id, kind string, config []byte, now time.Time) (store.Receiver, error) {
	var r store.Receiver
	err := s.submit(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`INSERT INTO receivers (id, kind, config, created_at, cursor)
			VALUES (?, ?, ?, ?, max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0), coalesce((SELECT max(seq) FROM outbox), 0)))
			ON CONFLICT (id) DO NOTHING`, id, kind, config, nanos(now)); err != nil {
			return err
		}
		var err error
		r, err = scanReceiver(tx.QueryRow(selectReceiver+` WHERE id = ?`, id))
		return err
	})
	if err != nil {
		return store.Receiver{}, fmt.Errorf("add receiver %s: %w", id, err)
	}
	return r, nil
}

// SetReceiverConfig replaces a receiver's settings.
func (s *Store) SetReceiverConfig(ctx context.Context, id string, config []byte) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE receivers SET config = ? WHERE id = ?`, config, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("configure receiver %s: %w", id, err)
	}
	return nil
}

// DeleteReceiver forgets a receiver.
func (s *Store) DeleteReceiver(ctx context.Context, id string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM receivers WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete receiver %s: %w", id, err)
	}
	return nil
}

// Receiver returns one receiver.
func (s *Store) Receiver(ctx context.Context, id string) (store.Receiver, error) {
	if err := s.readable(); err != nil {
		return store.Receiver{}, err
	}
	r, err := scanReceiver(s.r.QueryRowContext(ctx, selectReceiver+` WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Receiver{}, fmt.Errorf("receiver %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Receiver{}, fmt.Errorf("receiver %s: %w", id, err)
	}
	return r, nil
}

// Receivers lists every receiver, by ID.
func (s *Store) Receivers(ctx context.Context) ([]store.Receiver, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, selectReceiver+` ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list receivers: %w", err)
	}
	defer rows.Close()
	var out []store.Receiver
	for rows.Next() {
		r, err := scanReceiver(rows)
		if err != nil {
			return nil, fmt.Errorf("list receivers: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// ClaimReceivers takes the lease of every receiver among ids that no
// other collector holds (its lease ran out, or none had it), or renews
// holder's, until until, and returns the receivers holder now holds.
func (s *Store) ClaimReceivers(ctx context.Context, holder string, ids []string, until, now time.Time) ([]store.Receiver, error) {
	var out []store.Receiver
	err := s.submit(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		for _, id := range ids {
			res, err := tx.Exec(`UPDATE receivers SET holder = ?, lease_until = ? WHERE id = ? AND (holder = ? OR lease_until <= ?)`,
				holder, nanos(until), id, holder, nanos(now))
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				continue
			}
			r, err := scanReceiver(tx.QueryRow(selectReceiver+` WHERE id = ?`, id))
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim receivers: %w", err)
	}
	return out, nil
}

// ReleaseReceivers gives up holder's leases (a collector that stops).
func (s *Store) ReleaseReceivers(ctx context.Context, holder string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE receivers SET lease_until = 0 WHERE holder = ?`, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("release receivers: %w", err)
	}
	return nil
}

// ReceiverDelivered moves a receiver's cursor to through (never back)
// after delivered messages went out, and clears its failures, while
// holder holds its lease (store.ErrLeaseLost otherwise).
func (s *Store) ReceiverDelivered(ctx context.Context, id, holder string, through uint64, delivered int, now time.Time) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE receivers SET cursor = max(cursor, ?), delivered = delivered + ?,
			delivered_at = CASE WHEN ? > 0 THEN ? ELSE delivered_at END,
			failing_since = 0, attempts = 0, last_error = '' WHERE id = ? AND holder = ?`,
			int64(through), delivered, delivered, nanos(now), id, holder)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrLeaseLost
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record delivery to %s: %w", id, err)
	}
	return nil
}

// ReceiverFailed records a failed delivery attempt, while holder holds
// the receiver's lease (store.ErrLeaseLost otherwise).
func (s *Store) ReceiverFailed(ctx context.Context, id, holder, why string, now time.Time) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE receivers SET failing_since = CASE WHEN failing_since = 0 THEN ? ELSE failing_since END,
			attempts = attempts + 1, last_error = ? WHERE id = ? AND holder = ?`, nanos(now), why, id, holder)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrLeaseLost
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record failed delivery to %s: %w", id, err)
	}
	return nil
}

// ClaimLease takes the named lease for holder until until, when no other
// holder's runs at now, or renews holder's; it reports whether holder
// holds it.
func (s *Store) ClaimLease(ctx context.Context, name, holder string, until, now time.Time) (bool, error) {
	var held bool
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
			WHERE leases.holder = excluded.holder OR leases.until <= ?`, name, holder, nanos(until), nanos(now))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		held = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("claim lease %s: %w", name, err)
	}
	return held, nil
}

// ReleaseLease gives up holder's named lease.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE leases SET until = 0 WHERE name = ? AND holder = ?`, name, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}

// BindDeviceUser binds a device to its user, in place of any binding it
// had.
func (s *Store) BindDeviceUser(ctx context.Context, u store.DeviceUser) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM devices WHERE id = ?`, u.DeviceID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return store.ErrNotFound
		}
		_, err := tx.Exec(`INSERT INTO device_users (device_id, email, issuer, subject, bound_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET email = excluded.email, issuer = excluded.issuer, subject = excluded.subject, bound_at = excluded.bound_at`,
			u.DeviceID, u.Email, u.Issuer, u.Subject, nanos(u.BoundAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("bind device %s: %w", u.DeviceID, err)
	}
	return nil
}

// UnbindDeviceUser removes a device's binding.
func (s *Store) UnbindDeviceUser(ctx context.Context, id string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM device_users WHERE device_id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unbind device %s: %w", id, err)
	}
	return nil
}

// DeviceUser returns a device's binding, or store.ErrNotFound.
func (s *Store) DeviceUser(ctx context.Context, id string) (store.DeviceUser, error) {
	if err := s.readable(); err != nil {
		return store.DeviceUser{}, err
	}
	u := store.DeviceUser{DeviceID: id}
	var at int64
	err := s.r.QueryRowContext(ctx, `SELECT email, issuer, subject, bound_at FROM device_users WHERE device_id = ?`, id).Scan(&u.Email, &u.Issuer, &u.Subject, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return store.DeviceUser{}, fmt.Errorf("user of device %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.DeviceUser{}, fmt.Errorf("user of device %s: %w", id, err)
	}
	u.BoundAt = fromNanos(at)
	return u, nil
}

// AddSSFClient records a Shared Signals receiver's API client; a name or
// token hash in use fails.
func (s *Store) AddSSFClient(ctx context.Context, c store.SSFClient) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO ssf_clients (name, token_hash, audience, level, created_at) VALUES (?, ?, ?, ?, ?)`,
			c.Name, blob(c.TokenHash), c.Audience, c.Level, nanos(c.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("add SSF receiver %s: %w", c.Name, err)
	}
	return nil
}

// RemoveSSFClient forgets a client (its streams stay until deleted).
func (s *Store) RemoveSSFClient(ctx context.Context, name string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM ssf_clients WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove SSF receiver %s: %w", name, err)
	}
	return nil
}

// SSFClients lists the clients, by name.
func (s *Store) SSFClients(ctx context.Context) ([]store.SSFClient, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT name, token_hash, audience, level, created_at FROM ssf_clients ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list SSF receivers: %w", err)
	}
	defer rows.Close()
	var out []store.SSFClient
	for rows.Next() {
		var (
			c  store.SSFClient
			at int64
		)
		if err := rows.Scan(&c.Name, &c.TokenHash, &c.Audience, &c.Level, &at); err != nil {
			return nil, fmt.Errorf("list SSF receivers: %w", err)
		}
		c.CreatedAt = fromNanos(at)
		out = append(out, c)
	}
	return out, rows.Err()
}

// PublishSigningKey records a collector's public signing key.
func (s *Store) PublishSigningKey(ctx context.Context, k store.SigningKey) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO signing_keys (kid, jwk, created_at) VALUES (?, ?, ?) ON CONFLICT (kid) DO NOTHING`,
			k.KID, blob(k.JWK), nanos(k.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("publish signing key %s: %w", k.KID, err)
	}
	return nil
}

// SigningKeys lists the published signing keys, oldest first.
func (s *Store) SigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT kid, jwk, created_at FROM signing_keys ORDER BY created_at, kid`)
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	defer rows.Close()
	var out []store.SigningKey
	for rows.Next() {
		var (
			k  store.SigningKey
			at int64
		)
		if err := rows.Scan(&k.KID, &k.JWK, &at); err != nil {
			return nil, fmt.Errorf("list signing keys: %w", err)
		}
		k.CreatedAt = fromNanos(at)
		out = append(out, k)
	}
	return out, rows.Err()
}
