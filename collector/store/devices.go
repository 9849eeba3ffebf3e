package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// CreateToken stores a new enrollment token. Hash must be set; Used is
// stored as given (normally 0).
func (s *Store) CreateToken(ctx context.Context, t Token) error {
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

// Token returns the token with the given hash, or ErrNotFound.
func (s *Store) Token(ctx context.Context, hash []byte) (Token, error) {
	if err := s.readable(); err != nil {
		return Token{}, err
	}
	var (
		t                Token
		created, expires int64
		uses, used       int64
	)
	err := s.r.QueryRowContext(ctx, `SELECT hash, description, created_at, expires_at, uses, used
		FROM tokens WHERE hash = ?`, blob(hash)).
		Scan(&t.Hash, &t.Description, &created, &expires, &uses, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("token: %w", ErrNotFound)
	}
	if err != nil {
		return Token{}, fmt.Errorf("token: %w", err)
	}
	t.CreatedAt, t.ExpiresAt = fromNanos(created), fromNanos(expires)
	t.Uses, t.Used = uint32(uses), uint32(used)
	return t, nil
}

// EnrollDevice consumes one use of the token with hash tokenHash and stores
// d, in one transaction: on any error nothing changes.
//
// The token is checked first: ErrTokenUnknown, then ErrTokenExpired when its
// expiry is at or before now, then ErrTokenUsedUp. A new device is stored
// with an empty report chain, state active unless d.State says otherwise,
// and EnrolledAt = now unless d.EnrolledAt is set. If a device with d.ID
// exists, it is re-enrolled: its hostname, platform, certificate serial,
// enrollment time, identity key and assurance are updated, while its state
// and report chain are kept, except that a new enrollment that earned only
// pending approval makes an active device pending, and a new identity key
// starts the TPM clock afresh (the next quote is compared with nothing: a
// new AK sees the TPM's counters through another offset). Re-enrolling a
// revoked device fails with ErrDeviceRevoked, with another kind of
// identity with ErrIdentityKind; both leave the token unused.
// EnrollDevice returns the device as stored.
func (s *Store) EnrollDevice(ctx context.Context, tokenHash []byte, now time.Time, d Device) (Device, error) {
	if d.ID == "" {
		return Device{}, errors.New("enroll device: the device ID is empty")
	}
	if d.EnrolledAt.IsZero() {
		d.EnrolledAt = now
	}
	d.EnrolledAt = d.EnrolledAt.UTC()
	if d.State == 0 {
		d.State = stateActive
	}

	var stored Device
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var expires, uses, used int64
		err := tx.QueryRow(`SELECT expires_at, uses, used FROM tokens WHERE hash = ?`, blob(tokenHash)).
			Scan(&expires, &uses, &used)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrTokenUnknown
		case err != nil:
			return err
		case expires <= now.UnixNano():
			return ErrTokenExpired
		case used >= uses:
			return ErrTokenUsedUp
		}

		existing, err := scanDevice(tx.QueryRow(selectDevice+` WHERE id = ?`, d.ID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			stored = d
			stored.PrevCertSerial = ""
			stored.LastSeq, stored.LastDigest, stored.LastSeen = 0, nil, time.Time{}
			stored.TPMClock, stored.Reboots = TPMClock{}, 0
			_, err = tx.Exec(`INSERT INTO devices (id, hostname, platform, identity, identity_key,
				assurance, state, state_reason, enrolled_at, cert_serial, ek_sha256)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				d.ID, d.Hostname, d.Platform, d.Identity, blob(d.IdentityKey),
				d.Assurance, d.State, d.StateReason, nanos(d.EnrolledAt), d.CertSerial, d.EKSHA256)
		case err != nil:
			return err
		case existing.State == stateRevoked:
			return ErrDeviceRevoked
		case existing.Identity != d.Identity:
			return ErrIdentityKind
		default:
			// The collector has just proven the identity again (for a TPM,
			// a new AK in the same TPM), so the key and its assurance are
			// replaced; the state and report chain are kept, except that a
			// pending device takes the state the new enrollment earned.
			stored = existing
			stored.Hostname, stored.Platform = d.Hostname, d.Platform
			stored.CertSerial, stored.PrevCertSerial, stored.EnrolledAt = d.CertSerial, "", d.EnrolledAt
			stored.Identity, stored.IdentityKey, stored.Assurance, stored.EKSHA256 = d.Identity, d.IdentityKey, d.Assurance, d.EKSHA256
			if existing.State == statePending || (existing.State == stateActive && d.State == statePending) {
				stored.State, stored.StateReason = d.State, d.StateReason
			}
			if !bytes.Equal(existing.IdentityKey, d.IdentityKey) {
				stored.TPMClock = TPMClock{}
			}
			_, err = tx.Exec(`UPDATE devices SET hostname = ?, platform = ?, cert_serial = ?, prev_cert_serial = '', enrolled_at = ?,
				identity = ?, identity_key = ?, assurance = ?, ek_sha256 = ?, state = ?, state_reason = ?,
				tpm_clock = ?, tpm_reset_count = ?, tpm_restart_count = ?
				WHERE id = ?`,
				d.Hostname, d.Platform, d.CertSerial, nanos(d.EnrolledAt),
				d.Identity, blob(d.IdentityKey), d.Assurance, d.EKSHA256, stored.State, stored.StateReason,
				int64(stored.TPMClock.Clock), int64(stored.TPMClock.ResetCount), int64(stored.TPMClock.RestartCount), d.ID)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE tokens SET used = used + 1 WHERE hash = ?`, blob(tokenHash))
		return err
	})
	if err != nil {
		return Device{}, fmt.Errorf("enroll device %s: %w", d.ID, err)
	}
	return stored, nil
}

// Device returns the device with the given ID, or ErrNotFound.
func (s *Store) Device(ctx context.Context, id string) (Device, error) {
	if err := s.readable(); err != nil {
		return Device{}, err
	}
	d, err := scanDevice(s.r.QueryRowContext(ctx, selectDevice+` WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// Devices returns all devices ordered by ID.
func (s *Store) Devices(ctx context.Context) ([]Device, error) {
	return s.DevicesAfter(ctx, "", -1) // SQLite reads a negative LIMIT as no limit
}

// DevicesAfter returns up to limit devices whose IDs sort after after, in
// ID order: one page of a listing. A negative limit means all.
func (s *Store) DevicesAfter(ctx context.Context, after string, limit int) ([]Device, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, selectDevice+` WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var devices []Device
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

// SetDeviceState sets the state of a device and the reason for it. It
// returns ErrNotFound for an unknown device and ErrDeviceRevoked for a
// revoked one, since revocation is final.
func (s *Store) SetDeviceState(ctx context.Context, id string, state int32, reason string) error {
	if state == 0 {
		return fmt.Errorf("set state of device %s: the state is unspecified", id)
	}
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var current int32
		err := tx.QueryRow(`SELECT state FROM devices WHERE id = ?`, id).Scan(&current)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case current == stateRevoked:
			return ErrDeviceRevoked
		}
		_, err = tx.Exec(`UPDATE devices SET state = ?, state_reason = ? WHERE id = ?`, state, reason, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("set state of device %s: %w", id, err)
	}
	return nil
}

// RenewCertificate makes newSerial the device's certificate, in place of
// the certificate the renewal was asked with (askedWith). That is either
// the device's certificate, which becomes the one that may still ask for a
// renewal, or that one itself, whose renewal's answer never reached the
// device; it stays. It fails with ErrNotFound, ErrDeviceRevoked,
// ErrDeviceNotActive for a suspect or pending device, or ErrCertReplaced
// when askedWith is neither, and then changes nothing. It returns the
// device as stored.
func (s *Store) RenewCertificate(ctx context.Context, id, askedWith, newSerial string) (Device, error) {
	if askedWith == "" || newSerial == "" {
		return Device{}, fmt.Errorf("renew certificate of device %s: a serial is empty", id)
	}
	var d Device
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = scanDevice(tx.QueryRow(selectDevice+` WHERE id = ?`, id))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case d.State == stateRevoked:
			return ErrDeviceRevoked
		case d.State != stateActive:
			return ErrDeviceNotActive
		case askedWith == d.CertSerial:
			d.PrevCertSerial = d.CertSerial
		case askedWith != d.PrevCertSerial:
			return ErrCertReplaced
		}
		d.CertSerial = newSerial
		_, err = tx.Exec(`UPDATE devices SET cert_serial = ?, prev_cert_serial = ? WHERE id = ?`, d.CertSerial, d.PrevCertSerial, id)
		return err
	})
	if err != nil {
		return Device{}, fmt.Errorf("renew certificate of device %s: %w", id, err)
	}
	return d, nil
}

const selectDevice = `SELECT id, hostname, platform, identity, identity_key, assurance, state,
	state_reason, enrolled_at, cert_serial, prev_cert_serial, last_seq, last_digest, last_seen,
	ek_sha256, tpm_clock, tpm_reset_count, tpm_restart_count, reboots FROM devices`

// scanner is satisfied by *sql.Row and *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// scanDevice reads one row of selectDevice.
func scanDevice(row scanner) (Device, error) {
	var (
		d                  Device
		enrolled, lastSeen int64
		lastSeq, clock     int64
		reboots            int64
	)
	err := row.Scan(&d.ID, &d.Hostname, &d.Platform, &d.Identity, &d.IdentityKey, &d.Assurance,
		&d.State, &d.StateReason, &enrolled, &d.CertSerial, &d.PrevCertSerial, &lastSeq, &d.LastDigest, &lastSeen,
		&d.EKSHA256, &clock, &d.TPMClock.ResetCount, &d.TPMClock.RestartCount, &reboots)
	if err != nil {
		return Device{}, err
	}
	d.IdentityKey = nilIfEmpty(d.IdentityKey)
	d.LastDigest = nilIfEmpty(d.LastDigest)
	d.EnrolledAt, d.LastSeen = fromNanos(enrolled), fromNanos(lastSeen)
	d.LastSeq = uint64(lastSeq)
	d.TPMClock.Clock, d.Reboots = uint64(clock), uint64(reboots)
	return d, nil
}

// PinEKs pins EK public-key hashes (hex SHA-256 of PKIX DER): devices that
// enroll with them are trusted as tpm_ek_pinned. It returns how many were
// not pinned before.
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

// ErrNotPending reports an approval of a device that is not pending.
var ErrNotPending = errors.New("device is not pending approval")

// ApproveDevice activates a pending device in one transaction: it pins the
// device's EK hash, sets the state to active and the assurance to the given
// value. It returns ErrNotFound or ErrNotPending without changing anything.
func (s *Store) ApproveDevice(ctx context.Context, id string, assurance int32, description string, now time.Time) (Device, error) {
	var d Device
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = scanDevice(tx.QueryRow(selectDevice+` WHERE id = ?`, id))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case d.State != statePending:
			return ErrNotPending
		case d.EKSHA256 == "":
			return fmt.Errorf("device %s has no TPM endorsement key to pin", id)
		}
		if _, err := tx.Exec(`INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES (?, ?, ?)
			ON CONFLICT (ek_sha256) DO NOTHING`, d.EKSHA256, description, nanos(now)); err != nil {
			return err
		}
		d.State, d.StateReason, d.Assurance = stateActive, "", assurance
		_, err = tx.Exec(`UPDATE devices SET state = ?, state_reason = '', assurance = ? WHERE id = ?`, d.State, d.Assurance, id)
		return err
	})
	if err != nil {
		return Device{}, fmt.Errorf("approve device %s: %w", id, err)
	}
	return d, nil
}
