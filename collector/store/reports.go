package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	"github.com/mattn/go-sqlite3"
)

// AppendReport stores r and advances its device's report head, and returns
// once the transaction holding it has committed (or failed): a nil error
// means the report is durable.
//
// It is idempotent on (device, seq): a report whose sequence number is
// already stored with the same digest returns nil and writes nothing; with a
// different digest it returns ErrConflict. An unknown device returns
// ErrNotFound. The head (LastSeq, LastDigest) only moves forward, to the
// highest sequence number stored; LastSeen becomes the latest ReceivedAt.
func (s *Store) AppendReport(ctx context.Context, r Report) error {
	if r.Seq > math.MaxInt64 {
		return fmt.Errorf("append report %s/%d: sequence number exceeds the storable range", r.DeviceID, r.Seq)
	}
	if err := s.submit(ctx, func(tx *sql.Tx) error { return appendReport(tx, r) }); err != nil {
		return fmt.Errorf("append report %s/%d: %w", r.DeviceID, r.Seq, err)
	}
	return nil
}

// appendReport writes r within tx; the caller provides the transaction and
// the savepoint that undoes a partial write on error.
func appendReport(tx *sql.Tx, r Report) error {
	// The foreign key, checked inside SQLite, stands in for a separate
	// lookup of the device: an unknown device fails the insert.
	res, err := tx.Exec(`INSERT INTO reports (device_id, seq, digest, nonce, body, proof, received_at)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING`,
		r.DeviceID, int64(r.Seq), blob(r.Digest), blob(r.Nonce), blob(r.Body), blob(r.Proof), nanos(r.ReceivedAt))
	var sqliteErr sqlite3.Error
	if errors.As(err, &sqliteErr) && sqliteErr.ExtendedCode == sqlite3.ErrConstraintForeignKey {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		var digest []byte
		if err := tx.QueryRow(`SELECT digest FROM reports WHERE device_id = ? AND seq = ?`,
			r.DeviceID, int64(r.Seq)).Scan(&digest); err != nil {
			return err
		}
		if !bytes.Equal(digest, r.Digest) {
			return ErrConflict
		}
		return nil
	}

	// SET expressions all see the row as it was, so both CASEs test the old
	// head. A NULL digest means no report yet, which lets seq 0 be a head.
	_, err = tx.Exec(`UPDATE devices SET
		last_digest = CASE WHEN last_digest IS NULL OR ?1 > last_seq THEN ?2 ELSE last_digest END,
		last_seq    = CASE WHEN last_digest IS NULL OR ?1 > last_seq THEN ?1 ELSE last_seq END,
		last_seen   = max(last_seen, ?3)
		WHERE id = ?4`,
		int64(r.Seq), blob(r.Digest), nanos(r.ReceivedAt), r.DeviceID)
	if err != nil || r.TPM == nil {
		return err
	}
	reboot := 0
	if r.Reboot {
		reboot = 1
	}
	_, err = tx.Exec(`UPDATE devices SET tpm_clock = ?, tpm_reset_count = ?, tpm_restart_count = ?,
		reboots = reboots + ? WHERE id = ?`,
		int64(r.TPM.Clock), r.TPM.ResetCount, r.TPM.RestartCount, reboot, r.DeviceID)
	return err
}

// Reports returns up to limit reports of a device, newest first; limit <= 0
// means all. An unknown device has no reports.
func (s *Store) Reports(ctx context.Context, deviceID string, limit int) ([]Report, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = -1 // SQLite reads a negative LIMIT as no limit
	}
	rows, err := s.r.QueryContext(ctx, `SELECT device_id, seq, digest, nonce, body, proof, received_at
		FROM reports WHERE device_id = ? ORDER BY seq DESC LIMIT ?`, deviceID, limit)
	if err != nil {
		return nil, fmt.Errorf("reports of device %s: %w", deviceID, err)
	}
	defer rows.Close()
	var reports []Report
	for rows.Next() {
		r, err := scanReport(rows)
		if err != nil {
			return nil, fmt.Errorf("reports of device %s: %w", deviceID, err)
		}
		reports = append(reports, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reports of device %s: %w", deviceID, err)
	}
	return reports, nil
}

// CountReports returns how many reports of a device are stored.
func (s *Store) CountReports(ctx context.Context, deviceID string) (int, error) {
	if err := s.readable(); err != nil {
		return 0, err
	}
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM reports WHERE device_id = ?`, deviceID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count reports of device %s: %w", deviceID, err)
	}
	return n, nil
}

func scanReport(row scanner) (Report, error) {
	var (
		r             Report
		seq, received int64
	)
	if err := row.Scan(&r.DeviceID, &seq, &r.Digest, &r.Nonce, &r.Body, &r.Proof, &received); err != nil {
		return Report{}, err
	}
	r.Seq, r.ReceivedAt = uint64(seq), fromNanos(received)
	r.Digest, r.Nonce = nilIfEmpty(r.Digest), nilIfEmpty(r.Nonce)
	r.Body, r.Proof = nilIfEmpty(r.Body), nilIfEmpty(r.Proof)
	return r, nil
}
