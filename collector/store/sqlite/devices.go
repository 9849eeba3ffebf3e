package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// CreateToken stores a new enrollment token.
func (s *Store) CreateToken(ctx context.Context, t store.Token) error {
	if len(t.Hash) == 0 {
		return errors.New("create token: the token hash is empty")
	}
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO tokens (hash, description, created_at, expires_at, uses, used)
			VALUES (?, ?, ?, ?, ?, ?)`,
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
	if err := s.readable(); err != nil {
		return store.Token{}, err
	}
	t, err := scanToken(s.r.QueryRowContext(ctx, selectToken+` WHERE hash = ?`, blob(hash)))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Token{}, fmt.Errorf("token: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Token{}, fmt.Errorf("token: %w", err)
	}
	return t, nil
}

const selectToken = `SELECT hash, description, created_at, expires_at, uses, used FROM tokens`

func scanToken(row scanner) (store.Token, error) {
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
func (s *Store) EnrollDevice(ctx context.Context, tokenHash []byte, now time.Time, d store.Device) (store.Device, store.Event, error) {
	if d.ID == "" {
		return store.Device{}, store.Event{}, errors.New("enroll device: the device ID is empty")
	}
	var (
		stored store.Device
		ev     store.Event
	)
	err := s.submit(ctx, func(tx *sql.Tx) error {
		tok, err := scanToken(tx.QueryRow(selectToken+` WHERE hash = ?`, blob(tokenHash)))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return store.ErrTokenUnknown
		case err != nil:
			return err
		}
		if err := store.CheckToken(tok, now); err != nil {
			return err
		}
		existing, err := scanDevice(tx.QueryRow(selectDevice+` WHERE id = ?`, d.ID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if stored, err = store.Enrolled(nil, d, now); err != nil {
				return err
			}
			_, err = tx.Exec(`INSERT INTO devices (id, hostname, platform, identity, identity_key,
				assurance, state, state_reason, enrolled_at, cert_serial, cert_key_sha256, ek_sha256)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				stored.ID, stored.Hostname, stored.Platform, stored.Identity, blob(stored.IdentityKey),
				stored.Assurance, stored.State, stored.StateReason, nanos(stored.EnrolledAt), stored.CertSerial, stored.CertKeySHA256, stored.EKSHA256)
		case err != nil:
			return err
		default:
			if stored, err = store.Enrolled(&existing, d, now); err != nil {
				return err
			}
			_, err = tx.Exec(`UPDATE devices SET hostname = ?, platform = ?, cert_serial = ?, cert_key_sha256 = ?,
				prev_cert_serial = ?, prev_cert_key_sha256 = ?, enrolled_at = ?,
				identity = ?, identity_key = ?, assurance = ?, ek_sha256 = ?, state = ?, state_reason = ?,
				tpm_clock = ?, tpm_reset_count = ?, tpm_restart_count = ?
				WHERE id = ?`,
				stored.Hostname, stored.Platform, stored.CertSerial, stored.CertKeySHA256,
				stored.PrevCertSerial, stored.PrevCertKeySHA256, nanos(stored.EnrolledAt),
				stored.Identity, blob(stored.IdentityKey), stored.Assurance, stored.EKSHA256, stored.State, stored.StateReason,
				int64(stored.TPMClock.Clock), int64(stored.TPMClock.ResetCount), int64(stored.TPMClock.RestartCount), stored.ID)
		}
		if err != nil {
			return err
		}
		if _, err = tx.Exec(`UPDATE tokens SET used = used + 1 WHERE hash = ?`, blob(tokenHash)); err != nil {
			return err
		}
		ev = deviceEvent(store.EventEnrolled, stored)
		prev, err := loseLevels(tx, &ev, stored.State)
		if err != nil {
			return err
		}
		return recordEvent(tx, &ev, now, prev)
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
	if err := s.readable(); err != nil {
		return store.Device{}, err
	}
	d, err := scanDevice(s.r.QueryRowContext(ctx, selectDevice+` WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
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
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, selectDevice+` WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var devices []store.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		devices = append(devices, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return devices, nil
}

// changeDevice reads a device within tx, asks change what it becomes,
// writes that with the state and certificate columns it may change, and
// records the event of kind; when change says nothing changed, it writes
// nothing and returns a zero event.
func changeDevice(tx *sql.Tx, id string, kind store.EventKind, now time.Time, change func(store.Device) (store.Device, bool, error)) (store.Device, store.Event, error) {
	d, err := scanDevice(tx.QueryRow(selectDevice+` WHERE id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
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
	if _, err := tx.Exec(`UPDATE devices SET state = ?, state_reason = ?, assurance = ?, cert_serial = ?, cert_key_sha256 = ?,
		prev_cert_serial = ?, prev_cert_key_sha256 = ? WHERE id = ?`,
		d.State, d.StateReason, d.Assurance, d.CertSerial, d.CertKeySHA256, d.PrevCertSerial, d.PrevCertKeySHA256, id); err != nil {
		return store.Device{}, store.Event{}, err
	}
	ev := deviceEvent(kind, d)
	prev, err := loseLevels(tx, &ev, d.State)
	if err != nil {
		return store.Device{}, store.Event{}, err
	}
	if err := recordEvent(tx, &ev, now, prev); err != nil {
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
	err := s.submit(ctx, func(tx *sql.Tx) (err error) {
		_, ev, err = changeDevice(tx, id, store.EventState, now, func(d store.Device) (store.Device, bool, error) {
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
	err := s.submit(ctx, func(tx *sql.Tx) (err error) {
		d, ev, err = changeDevice(tx, id, store.EventRenewed, now, func(d store.Device) (store.Device, bool, error) {
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
	err := s.submit(ctx, func(tx *sql.Tx) (err error) {
		d, ev, err = changeDevice(tx, id, store.EventCertBound, now, func(d store.Device) (store.Device, bool, error) {
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
	err := s.submit(ctx, func(tx *sql.Tx) (err error) {
		d, ev, err = changeDevice(tx, id, store.EventApproved, now, func(d store.Device) (store.Device, bool, error) {
			d, err := store.Approved(d, assurance)
			return d, true, err
		})
		if err != nil {
			return err
		}
		_, err = tx.Exec(`INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES (?, ?, ?)
			ON CONFLICT (ek_sha256) DO NOTHING`, d.EKSHA256, description, nanos(now))
		return err
	})
	if err != nil {
		return store.Device{}, store.Event{}, fmt.Errorf("approve device %s: %w", id, err)
	}
	return d, ev, nil
}

const selectDevice = `SELECT ` + deviceColumns + ` FROM devices`

// deviceColumns are the columns scanDevice reads.
const deviceColumns = `id, hostname, platform, identity, identity_key, assurance, state,
	state_reason, enrolled_at, cert_serial, cert_key_sha256, prev_cert_serial, prev_cert_key_sha256,
	last_seq, last_digest, last_seen, ek_sha256, tpm_clock, tpm_reset_count, tpm_restart_count, reboots`

// scanner is satisfied by *sql.Row and *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// scanDevice reads one row of selectDevice.
func scanDevice(row scanner) (store.Device, error) {
	var (
		d                  store.Device
		enrolled, lastSeen int64
		lastSeq, clock     int64
		reboots            int64
	)
	err := row.Scan(&d.ID, &d.Hostname, &d.Platform, &d.Identity, &d.IdentityKey, &d.Assurance,
		&d.State, &d.StateReason, &enrolled, &d.CertSerial, &d.CertKeySHA256, &d.PrevCertSerial, &d.PrevCertKeySHA256,
		&lastSeq, &d.LastDigest, &lastSeen, &d.EKSHA256, &clock, &d.TPMClock.ResetCount, &d.TPMClock.RestartCount, &reboots)
	if err != nil {
		return store.Device{}, err
	}
	d.IdentityKey = nilIfEmpty(d.IdentityKey)
	d.LastDigest = nilIfEmpty(d.LastDigest)
	d.CertKeySHA256, d.PrevCertKeySHA256 = nilIfEmpty(d.CertKeySHA256), nilIfEmpty(d.PrevCertKeySHA256)
	d.EnrolledAt, d.LastSeen = fromNanos(enrolled), fromNanos(lastSeen)
	d.LastSeq = uint64(lastSeq)
	d.TPMClock.Clock, d.Reboots = uint64(clock), uint64(reboots)
	return d, nil
}

// PinEKs pins EK public-key hashes and returns how many were new.
func (s *Store) PinEKs(ctx context.Context, hashes []string, description string, now time.Time) (int, error) {
	added := 0
	err := s.submit(ctx, func(tx *sql.Tx) error {
		added = 0
		for _, h := range hashes {
			res, err := tx.Exec(`INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES (?, ?, ?)
				ON CONFLICT (ek_sha256) DO NOTHING`, h, description, nanos(now))
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			added += int(n)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("pin EKs: %w", err)
	}
	return added, nil
}

// EKPinned reports whether an EK hash is pinned.
func (s *Store) EKPinned(ctx context.Context, hash string) (bool, error) {
	if err := s.readable(); err != nil {
		return false, err
	}
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM pinned_eks WHERE ek_sha256 = ?`, hash).Scan(&n); err != nil {
		return false, fmt.Errorf("look up pinned EK: %w", err)
	}
	return n > 0, nil
}
