package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// CreateToken stores a new enrollment token.
func (s *Store) CreateToken(ctx context.Context, t store.Token) error {
	if len(t.Hash) == 0 {
		return errors.New("create token: the token hash is empty")
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO tokens (hash, description, created_at, expires_at, uses, used)
			VALUES ($1, $2, $3, $4, $5, $6)`,
			t.Hash, t.Description, nanos(t.CreatedAt), nanos(t.ExpiresAt), int64(t.Uses), int64(t.Used))
		return err
	})
	if err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	return nil
}

// Token returns the token with the given hash, or store.ErrNotFound.
func (s *Store) Token(ctx context.Context, hash []byte) (store.Token, error) {
	var t store.Token
	err := s.read(func() (err error) {
		t, err = scanToken(s.pool.QueryRow(ctx, selectToken+` WHERE hash = $1`, blob(hash)))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Token{}, fmt.Errorf("token: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Token{}, fmt.Errorf("token: %w", err)
	}
	return t, nil
}

const selectToken = `SELECT hash, description, created_at, expires_at, uses, used FROM tokens`

func scanToken(row pgx.Row) (store.Token, error) {
	var (
		t                store.Token
		created, expires int64
		uses, used       int64
	)
	if err := row.Scan(&t.Hash, &t.Description, &created, &expires, &uses, &used); err != nil {
		return store.Token{}, err
	}
	t.CreatedAt, t.ExpiresAt = fromNanos(created), fromNanos(expires)
	t.Uses, t.Used = uint32(uses), uint32(used)
	return t, nil
}

// EnrollDevice consumes one use of a token and stores d (store.Enrolled
// says how), with its event.
//
// It locks the token's row first, so that enrollments with one token
// take its uses one at a time, then the device's (see insertEventSQL).
func (s *Store) EnrollDevice(ctx context.Context, tokenHash []byte, now time.Time, d store.Device) (store.Device, store.Event, error) {
	if d.ID == "" {
		return store.Device{}, store.Event{}, errors.New("enroll device: the device ID is empty")
	}
	var (
		stored store.Device
		ev     store.Event
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tok, err := scanToken(tx.QueryRow(ctx, selectToken+` WHERE hash = $1 FOR UPDATE`, blob(tokenHash)))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return store.ErrTokenUnknown
		case err != nil:
			return err
		}
		if err := store.CheckToken(tok, now); err != nil {
			return err
		}
		for {
			existing, err := scanDevice(tx.QueryRow(ctx, selectDevice+` WHERE id = $1 FOR UPDATE`, d.ID))
			if errors.Is(err, pgx.ErrNoRows) {
				if stored, err = store.Enrolled(nil, d, now); err != nil {
					return err
				}
				tag, err := tx.Exec(ctx, `INSERT INTO devices (id, hostname, platform, identity, identity_key,
					assurance, state, state_reason, enrolled_at, cert_serial, cert_key_sha256, ek_sha256)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING`,
					stored.ID, []byte(stored.Hostname), []byte(stored.Platform), stored.Identity, blob(stored.IdentityKey),
					stored.Assurance, stored.State, []byte(stored.StateReason), nanos(stored.EnrolledAt), stored.CertSerial, stored.CertKeySHA256, stored.EKSHA256)
				if err != nil {
					return err
				}
				if tag.RowsAffected() == 0 {
					// Enrolled meanwhile with another token; that enrollment
					// has committed (the insert waited for it): lock the row
					// and enroll again.
					continue
				}
				break
			}
			if err != nil {
				return err
			}
			if stored, err = store.Enrolled(&existing, d, now); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE devices SET hostname = $1, platform = $2, cert_serial = $3, prev_cert_serial = $4, enrolled_at = $5,
				identity = $6, identity_key = $7, assurance = $8, ek_sha256 = $9, state = $10, state_reason = $11,
				tpm_clock = $12, tpm_reset_count = $13, tpm_restart_count = $14, cert_key_sha256 = $15, prev_cert_key_sha256 = $16
				WHERE id = $17`,
				[]byte(stored.Hostname), []byte(stored.Platform), stored.CertSerial, stored.PrevCertSerial, nanos(stored.EnrolledAt),
				stored.Identity, blob(stored.IdentityKey), stored.Assurance, stored.EKSHA256, stored.State, []byte(stored.StateReason),
				int64(stored.TPMClock.Clock), int64(stored.TPMClock.ResetCount), int64(stored.TPMClock.RestartCount),
				stored.CertKeySHA256, stored.PrevCertKeySHA256, stored.ID); err != nil {
				return err
			}
			break
		}
		if _, err := tx.Exec(ctx, `UPDATE tokens SET used = used + 1 WHERE hash = $1`, blob(tokenHash)); err != nil {
			return err
		}
		ev = deviceEvent(store.EventEnrolled, stored)
		prev, err := loseLevels(ctx, tx, &ev, stored.State)
		if err != nil {
			return err
		}
		return recordEvent(ctx, tx, &ev, now, prev)
	})
	if err != nil {
		return store.Device{}, store.Event{}, fmt.Errorf("enroll device %s: %w", d.ID, err)
	}
	return stored, ev, nil
}

// deviceEvent is the event of a change to device d, as stored after it.
func deviceEvent(kind store.EventKind, d store.Device) store.Event {
	return store.Event{Kind: kind, DeviceID: d.ID, Device: &d}
}

// Device returns the device with the given ID, or store.ErrNotFound.
func (s *Store) Device(ctx context.Context, id string) (store.Device, error) {
	var d store.Device
	err := s.read(func() (err error) {
		d, err = scanDevice(s.pool.QueryRow(ctx, selectDevice+` WHERE id = $1`, id))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Device{}, fmt.Errorf("device %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// DevicesAfter returns up to limit devices whose IDs sort after after, in
// ID order. A negative limit means all.
func (s *Store) DevicesAfter(ctx context.Context, after string, limit int) ([]store.Device, error) {
	var devices []store.Device
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, selectDevice+` WHERE id > $1 ORDER BY id LIMIT $2`, after, limitArg(limit))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			d, err := scanDevice(rows)
			if err != nil {
				return err
			}
			devices = append(devices, d)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return devices, nil
}

// changeDevice locks a device's row within tx, asks change what the
// device becomes, writes that with the state and certificate columns it
// may change, and records the event of kind; when change says nothing
// changed, it writes nothing and returns a zero event.
func changeDevice(ctx context.Context, tx pgx.Tx, id string, kind store.EventKind, now time.Time, change func(store.Device) (store.Device, bool, error)) (store.Device, store.Event, error) {
	d, err := scanDevice(tx.QueryRow(ctx, selectDevice+` WHERE id = $1 FOR UPDATE`, id))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.Device{}, store.Event{}, store.ErrNotFound
	case err != nil:
		return store.Device{}, store.Event{}, err
	}
	d, changed, err := change(d)
	switch {
	case err != nil:
		return store.Device{}, store.Event{}, err
	case !changed:
		return d, store.Event{}, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE devices SET state = $1, state_reason = $2, assurance = $3, cert_serial = $4, prev_cert_serial = $5,
		cert_key_sha256 = $6, prev_cert_key_sha256 = $7 WHERE id = $8`,
		d.State, []byte(d.StateReason), d.Assurance, d.CertSerial, d.PrevCertSerial, d.CertKeySHA256, d.PrevCertKeySHA256, id); err != nil {
		return store.Device{}, store.Event{}, err
	}
	ev := deviceEvent(kind, d)
	prev, err := loseLevels(ctx, tx, &ev, d.State)
	if err != nil {
		return store.Device{}, store.Event{}, err
	}
	if err := recordEvent(ctx, tx, &ev, now, prev); err != nil {
		return store.Device{}, store.Event{}, err
	}
	return d, ev, nil
}

// SetDeviceState sets the state of a device and the reason for it.
func (s *Store) SetDeviceState(ctx context.Context, id string, state int32, reason string, now time.Time) (store.Event, error) {
	if state == 0 {
		return store.Event{}, fmt.Errorf("set state of device %s: the state is unspecified", id)
	}
	var ev store.Event
	err := s.inTx(ctx, func(tx pgx.Tx) (err error) {
		_, ev, err = changeDevice(ctx, tx, id, store.EventState, now, func(d store.Device) (store.Device, bool, error) {
			d, err := store.WithState(d, state, reason)
			return d, true, err
		})
		return err
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("set state of device %s: %w", id, err)
	}
	return ev, nil
}

// RenewCertificate makes issued the device's certificate in place of
// askedWith (store.Renewed says how).
func (s *Store) RenewCertificate(ctx context.Context, id string, askedWith, issued store.Cert, now time.Time) (store.Device, store.Event, error) {
	if askedWith.Serial == "" {
		return store.Device{}, store.Event{}, fmt.Errorf("renew certificate of device %s: the serial it was asked with is empty", id)
	}
	var (
		d  store.Device
		ev store.Event
	)
	err := s.inTx(ctx, func(tx pgx.Tx) (err error) {
		d, ev, err = changeDevice(ctx, tx, id, store.EventRenewed, now, func(d store.Device) (store.Device, bool, error) {
			d, err := store.Renewed(d, askedWith, issued)
			return d, true, err
		})
		return err
	})
	if err != nil {
		return store.Device{}, store.Event{}, fmt.Errorf("renew certificate of device %s: %w", id, err)
	}
	return d, ev, nil
}

// BindCertKey records the key hash of a device certificate issued before
// keys were (store.Bound says how).
func (s *Store) BindCertKey(ctx context.Context, id string, cert store.Cert, now time.Time) (store.Device, store.Event, error) {
	var (
		d  store.Device
		ev store.Event
	)
	err := s.inTx(ctx, func(tx pgx.Tx) (err error) {
		d, ev, err = changeDevice(ctx, tx, id, store.EventCertBound, now, func(d store.Device) (store.Device, bool, error) {
			return store.Bound(d, cert)
		})
		return err
	})
	if err != nil {
		return store.Device{}, store.Event{}, fmt.Errorf("record the certificate key of device %s: %w", id, err)
	}
	return d, ev, nil
}

// ApproveDevice pins a pending device's EK and activates it.
func (s *Store) ApproveDevice(ctx context.Context, id string, assurance int32, description string, now time.Time) (store.Device, store.Event, error) {
	var (
		d  store.Device
		ev store.Event
	)
	err := s.inTx(ctx, func(tx pgx.Tx) (err error) {
		// The EK is pinned first: writing to the outbox (in changeDevice)
		// is the transaction's last step (see recordEvent). Should the
		// approval be refused, the pin rolls back with it.
		var ek string
		if err := tx.QueryRow(ctx, `SELECT ek_sha256 FROM devices WHERE id = $1 FOR UPDATE`, id).Scan(&ek); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if ek != "" {
			if _, err := tx.Exec(ctx, `INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES ($1, $2, $3)
				ON CONFLICT (ek_sha256) DO NOTHING`, ek, description, nanos(now)); err != nil {
				return err
			}
		}
		d, ev, err = changeDevice(ctx, tx, id, store.EventApproved, now, func(d store.Device) (store.Device, bool, error) {
			d, err := store.Approved(d, assurance)
			return d, true, err
		})
		return err
	})
	if err != nil {
		return store.Device{}, store.Event{}, fmt.Errorf("approve device %s: %w", id, err)
	}
	return d, ev, nil
}

// deviceColumns are the columns scanDevice reads.
const deviceColumns = `id, hostname, platform, identity, identity_key, assurance, state,
	state_reason, enrolled_at, cert_serial, cert_key_sha256, prev_cert_serial, prev_cert_key_sha256,
	last_seq, last_digest, last_seen, ek_sha256, tpm_clock, tpm_reset_count, tpm_restart_count, reboots`

const selectDevice = `SELECT ` + deviceColumns + ` FROM devices`

// scanDevice reads one row of deviceColumns, followed by the columns of
// extra.
func scanDevice(row pgx.Row, extra ...any) (store.Device, error) {
	var (
		d                          store.Device
		hostname, platform, reason []byte
		enrolled, lastSeen         int64
		lastSeq, clock, reboots    int64
		resets, restarts           int64
	)
	dest := append([]any{&d.ID, &hostname, &platform, &d.Identity, &d.IdentityKey, &d.Assurance,
		&d.State, &reason, &enrolled, &d.CertSerial, &d.CertKeySHA256, &d.PrevCertSerial, &d.PrevCertKeySHA256,
		&lastSeq, &d.LastDigest, &lastSeen, &d.EKSHA256, &clock, &resets, &restarts, &reboots}, extra...)
	err := row.Scan(dest...)
	if err != nil {
		return store.Device{}, err
	}
	d.Hostname, d.Platform, d.StateReason = string(hostname), string(platform), string(reason)
	d.IdentityKey = nilIfEmpty(d.IdentityKey)
	d.LastDigest = nilIfEmpty(d.LastDigest)
	d.CertKeySHA256, d.PrevCertKeySHA256 = nilIfEmpty(d.CertKeySHA256), nilIfEmpty(d.PrevCertKeySHA256)
	d.EnrolledAt, d.LastSeen = fromNanos(enrolled), fromNanos(lastSeen)
	d.LastSeq = uint64(lastSeq)
	d.TPMClock = store.TPMClock{Clock: uint64(clock), ResetCount: uint32(resets), RestartCount: uint32(restarts)}
	d.Reboots = uint64(reboots)
	return d, nil
}

// PinEKs pins EK public-key hashes and returns how many were new.
func (s *Store) PinEKs(ctx context.Context, hashes []string, description string, now time.Time) (int, error) {
	// In one order, so that two pinning transactions cannot each wait for
	// a hash the other inserted.
	hashes = slices.Compact(slices.Sorted(slices.Values(hashes)))
	var added int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO pinned_eks (ek_sha256, description, created_at)
			SELECT h, $2, $3 FROM unnest($1::text[]) AS h ORDER BY h
			ON CONFLICT (ek_sha256) DO NOTHING`, hashes, description, nanos(now))
		added = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("pin EKs: %w", err)
	}
	return int(added), nil
}

// EKPinned reports whether an EK hash is pinned.
func (s *Store) EKPinned(ctx context.Context, hash string) (bool, error) {
	var pinned bool
	err := s.read(func() error {
		return s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pinned_eks WHERE ek_sha256 = $1)`, hash).Scan(&pinned)
	})
	if err != nil {
		return false, fmt.Errorf("look up pinned EK: %w", err)
	}
	return pinned, nil
}
