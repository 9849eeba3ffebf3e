package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// outboxLock is the advisory lock key every transaction that writes to
// the outbox holds from taking its sequence numbers to its commit
// ("outbox" in ASCII). Sequence numbers then commit in order, so a
// receiver's cursor never passes one that commits later. Only device
// changes, standings and saved decisions write to the outbox, a few
// transactions a second; reports never do.
const outboxLock = 0x6f7574626f78

// recordEvent writes a device's event within tx, with the messages it
// sends (store.OutboxOf; prev is the device's standing before the
// change): the change, its event and its messages commit together. The
// caller holds the device's row lock (see insertEventSQL); writing the
// messages is the transaction's last step, so the outbox lock is held
// only while it commits.
func recordEvent(ctx context.Context, tx pgx.Tx, ev *store.Event, now time.Time, prev store.Standing) error {
	if err := insertEvent(ctx, tx, ev, now); err != nil {
		return err
	}
	msgs, err := store.OutboxOf(*ev, prev)
	if err != nil {
		return err
	}
	return writeOutbox(ctx, tx, msgs)
}

// writeOutbox appends messages to the outbox within tx under the outbox
// lock, giving each its sequence number and stable ID.
func writeOutbox(ctx context.Context, tx pgx.Tx, msgs []store.OutboxMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(outboxLock)); err != nil {
		return fmt.Errorf("write outbox: %w", err)
	}
	for i := range msgs {
		m := &msgs[i]
		if m.ID == "" {
			m.ID = store.NewMessageID()
		}
		var seq int64
		if err := tx.QueryRow(ctx, `INSERT INTO outbox (id, at, kind, device_id, event_id, receiver, data) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq`,
			m.ID, nanos(m.At), m.Kind, m.DeviceID, int64(m.EventID), m.Receiver, blob(m.Data)).Scan(&seq); err != nil {
			return fmt.Errorf("write outbox: %w", err)
		}
		m.Seq = uint64(seq)
	}
	return nil
}

// AppendOutbox writes messages that no event makes and returns them with
// their sequence numbers and IDs.
func (s *Store) AppendOutbox(ctx context.Context, msgs []store.OutboxMessage) ([]store.OutboxMessage, error) {
	out := append([]store.OutboxMessage(nil), msgs...)
	err := s.inTx(ctx, func(tx pgx.Tx) error { return writeOutbox(ctx, tx, out) })
	if err != nil {
		return nil, fmt.Errorf("append to the outbox: %w", err)
	}
	return out, nil
}

// OutboxAfter returns up to limit messages after seq after, in order.
func (s *Store) OutboxAfter(ctx context.Context, after uint64, receiver string, limit int) ([]store.OutboxMessage, error) {
	var out []store.OutboxMessage
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT seq, id, at, kind, device_id, event_id, receiver, data FROM outbox
			WHERE seq > $1 AND (receiver = '' OR receiver = $2) ORDER BY seq LIMIT $3`, int64(after), receiver, limitArg(limit))
		if err != nil {
			return err
		}
		var (
			m            store.OutboxMessage
			seq, at, evt int64
		)
		_, err = pgx.ForEachRow(rows, []any{&seq, &m.ID, &at, &m.Kind, &m.DeviceID, &evt, &m.Receiver, &m.Data}, func() error {
			m.Seq, m.At, m.EventID = uint64(seq), fromNanos(at), uint64(evt)
			out = append(out, m)
			m = store.OutboxMessage{}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read the outbox: %w", err)
	}
	return out, nil
}

// LastOutboxSeq is the newest sequence number committed, or when the
// messages up to it were pruned, the highest pruned (meta's
// outbox_floor).
func (s *Store) LastOutboxSeq(ctx context.Context) (uint64, error) {
	var seq int64
	err := s.read(func() error {
		return s.pool.QueryRow(ctx, `SELECT greatest((SELECT coalesce(max(seq), 0) FROM outbox),
			(SELECT coalesce((SELECT value FROM meta WHERE key = 'outbox_floor'), 0)))`).Scan(&seq)
	})
	if err != nil {
		return 0, fmt.Errorf("read the outbox: %w", err)
	}
	return uint64(seq), nil
}

// PruneOutbox deletes the messages every receiver has had, and those
// written before cutoff, and returns how many.
func (s *Store) PruneOutbox(ctx context.Context, cutoff time.Time) (int, error) {
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `WITH gone AS (
				DELETE FROM outbox WHERE at < $1
					OR seq <= coalesce((SELECT min(cursor) FROM receivers), (SELECT max(seq) FROM outbox))
				RETURNING seq
			), floor AS (
				INSERT INTO meta (key, value) VALUES ('outbox_floor', (SELECT coalesce(max(seq), 0) FROM gone))
				ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)
			)
			SELECT count(*) FROM gone`, nanos(cutoff)).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("prune the outbox: %w", err)
	}
	return n, nil
}

const receiverColumns = `id, kind, config, created_at, cursor, holder, lease_until, delivered, delivered_at,
	failing_since, attempts, last_error`

func scanReceiver(row pgx.Row) (store.Receiver, error) {
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

// AddReceiver records a receiver, unless one with its ID is recorded, and
// returns it as stored; a new one starts at the end of the outbox.
func (s *Store) AddReceiver(ctx context.Context, id, kind string, config []byte, now time.Time) (store.Receiver, error) {
	var r store.Receiver
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO receivers (id, kind, config, created_at, cursor)
			VALUES ($1, $2, $3, $4, greatest((SELECT coalesce(max(seq), 0) FROM outbox),
				(SELECT coalesce((SELECT value FROM meta WHERE key = 'outbox_floor'), 0))))
			ON CONFLICT (id) DO NOTHING`, id, kind, config, nanos(now)); err != nil {
			return err
		}
		var err error
		r, err = scanReceiver(tx.QueryRow(ctx, `SELECT `+receiverColumns+` FROM receivers WHERE id = $1`, id))
		return err
	})
	if err != nil {
		return store.Receiver{}, fmt.Errorf("add receiver %s: %w", id, err)
	}
	return r, nil
}

// SetReceiverConfig replaces a receiver's settings.
func (s *Store) SetReceiverConfig(ctx context.Context, id string, config []byte) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE receivers SET config = $1 WHERE id = $2`, config, id)
		if err == nil && tag.RowsAffected() == 0 {
			err = store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("configure receiver %s: %w", id, err)
	}
	return nil
}

// DeleteReceiver forgets a receiver.
func (s *Store) DeleteReceiver(ctx context.Context, id string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM receivers WHERE id = $1`, id)
		if err == nil && tag.RowsAffected() == 0 {
			err = store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete receiver %s: %w", id, err)
	}
	return nil
}

// Receiver returns one receiver.
func (s *Store) Receiver(ctx context.Context, id string) (store.Receiver, error) {
	var r store.Receiver
	err := s.read(func() (err error) {
		r, err = scanReceiver(s.pool.QueryRow(ctx, `SELECT `+receiverColumns+` FROM receivers WHERE id = $1`, id))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Receiver{}, fmt.Errorf("receiver %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Receiver{}, fmt.Errorf("receiver %s: %w", id, err)
	}
	return r, nil
}

// Receivers lists every receiver, by ID.
func (s *Store) Receivers(ctx context.Context) ([]store.Receiver, error) {
	var out []store.Receiver
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT `+receiverColumns+` FROM receivers ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanReceiver(rows)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list receivers: %w", err)
	}
	return out, nil
}

// ClaimReceivers takes or renews the leases of receivers among ids. A
// receiver another collector is claiming at the same moment (its row
// locked) is skipped rather than waited for: SKIP LOCKED.
func (s *Store) ClaimReceivers(ctx context.Context, holder string, ids []string, until, now time.Time) ([]store.Receiver, error) {
	var out []store.Receiver
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = nil
		rows, err := tx.Query(ctx, `WITH claimable AS (
				SELECT id FROM receivers WHERE id = ANY($1) AND (holder = $2 OR lease_until <= $4)
				ORDER BY id FOR UPDATE SKIP LOCKED
			)
			UPDATE receivers r SET holder = $2, lease_until = $3 FROM claimable c WHERE r.id = c.id
			RETURNING `+prefixed("r.", receiverColumns), ids, holder, nanos(until), nanos(now))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanReceiver(rows)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claim receivers: %w", err)
	}
	return out, nil
}

// prefixed qualifies a list of columns.
func prefixed(prefix, columns string) string {
	var b []byte
	start := true
	for i := 0; i < len(columns); i++ {
		c := columns[i]
		if start && c != ' ' && c != '\t' && c != '\n' {
			b = append(b, prefix...)
			start = false
		}
		b = append(b, c)
		if c == ',' {
			start = true
		}
	}
	return string(b)
}

// ReleaseReceivers ends holder's leases.
func (s *Store) ReleaseReceivers(ctx context.Context, holder string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE receivers SET lease_until = 0 WHERE holder = $1`, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("release receivers: %w", err)
	}
	return nil
}

// ReceiverDelivered moves a receiver's cursor after a delivery.
func (s *Store) ReceiverDelivered(ctx context.Context, id, holder string, through uint64, delivered int, now time.Time) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE receivers SET cursor = greatest(cursor, $3), delivered = delivered + $4,
			delivered_at = CASE WHEN $4 > 0 THEN $5 ELSE delivered_at END,
			failing_since = 0, attempts = 0, last_error = '' WHERE id = $1 AND holder = $2`,
			id, holder, int64(through), int64(delivered), nanos(now))
		if err == nil && tag.RowsAffected() == 0 {
			err = store.ErrLeaseLost
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("record delivery to %s: %w", id, err)
	}
	return nil
}

// ReceiverFailed records a failed attempt.
func (s *Store) ReceiverFailed(ctx context.Context, id, holder, why string, now time.Time) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE receivers SET failing_since = CASE WHEN failing_since = 0 THEN $3 ELSE failing_since END,
			attempts = attempts + 1, last_error = $4 WHERE id = $1 AND holder = $2`, id, holder, nanos(now), why)
		if err == nil && tag.RowsAffected() == 0 {
			err = store.ErrLeaseLost
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("record failed delivery to %s: %w", id, err)
	}
	return nil
}

// ClaimLease takes or renews a named lease.
func (s *Store) ClaimLease(ctx context.Context, name, holder string, until, now time.Time) (bool, error) {
	var held bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
			WHERE leases.holder = excluded.holder OR leases.until <= $4`, name, holder, nanos(until), nanos(now))
		held = err == nil && tag.RowsAffected() == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("claim lease %s: %w", name, err)
	}
	return held, nil
}

// ReleaseLease ends holder's named lease.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE leases SET until = 0 WHERE name = $1 AND holder = $2`, name, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}

// BindDeviceUser binds a device to its user.
func (s *Store) BindDeviceUser(ctx context.Context, u store.DeviceUser) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var known bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)`, u.DeviceID).Scan(&known); err != nil {
			return err
		}
		if !known {
			return store.ErrNotFound
		}
		_, err := tx.Exec(ctx, `INSERT INTO device_users (device_id, email, issuer, subject, bound_at) VALUES ($1, $2, $3, $4, $5)
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM device_users WHERE device_id = $1`, id)
		if err == nil && tag.RowsAffected() == 0 {
			err = store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("unbind device %s: %w", id, err)
	}
	return nil
}

// DeviceUser returns a device's binding.
func (s *Store) DeviceUser(ctx context.Context, id string) (store.DeviceUser, error) {
	u := store.DeviceUser{DeviceID: id}
	var at int64
	err := s.read(func() error {
		return s.pool.QueryRow(ctx, `SELECT email, issuer, subject, bound_at FROM device_users WHERE device_id = $1`, id).Scan(&u.Email, &u.Issuer, &u.Subject, &at)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return store.DeviceUser{}, fmt.Errorf("user of device %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.DeviceUser{}, fmt.Errorf("user of device %s: %w", id, err)
	}
	u.BoundAt = fromNanos(at)
	return u, nil
}

// AddSSFClient records a Shared Signals receiver's API client.
func (s *Store) AddSSFClient(ctx context.Context, c store.SSFClient) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO ssf_clients (name, token_hash, audience, level, created_at) VALUES ($1, $2, $3, $4, $5)`,
			c.Name, blob(c.TokenHash), c.Audience, c.Level, nanos(c.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("add SSF receiver %s: %w", c.Name, err)
	}
	return nil
}

// RemoveSSFClient forgets a client.
func (s *Store) RemoveSSFClient(ctx context.Context, name string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM ssf_clients WHERE name = $1`, name)
		if err == nil && tag.RowsAffected() == 0 {
			err = store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("remove SSF receiver %s: %w", name, err)
	}
	return nil
}

// SSFClients lists the clients, by name.
func (s *Store) SSFClients(ctx context.Context) ([]store.SSFClient, error) {
	var out []store.SSFClient
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT name, token_hash, audience, level, created_at FROM ssf_clients ORDER BY name`)
		if err != nil {
			return err
		}
		var (
			c  store.SSFClient
			at int64
		)
		_, err = pgx.ForEachRow(rows, []any{&c.Name, &c.TokenHash, &c.Audience, &c.Level, &at}, func() error {
			c.CreatedAt = fromNanos(at)
			out = append(out, c)
			c = store.SSFClient{}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list SSF receivers: %w", err)
	}
	return out, nil
}

// PublishSigningKey records a collector's public signing key.
func (s *Store) PublishSigningKey(ctx context.Context, k store.SigningKey) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO signing_keys (kid, jwk, created_at) VALUES ($1, $2, $3) ON CONFLICT (kid) DO NOTHING`,
			k.KID, blob(k.JWK), nanos(k.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("publish signing key %s: %w", k.KID, err)
	}
	return nil
}

// SigningKeys lists the published keys, oldest first.
func (s *Store) SigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	var out []store.SigningKey
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT kid, jwk, created_at FROM signing_keys ORDER BY created_at, kid`)
		if err != nil {
			return err
		}
		var (
			k  store.SigningKey
			at int64
		)
		_, err = pgx.ForEachRow(rows, []any{&k.KID, &k.JWK, &at}, func() error {
			k.CreatedAt = fromNanos(at)
			out = append(out, k)
			k = store.SigningKey{}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	return out, nil
}
