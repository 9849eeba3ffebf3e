package store

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
)

// AppendReport stores r and advances its device's report head, and returns
// once the transaction holding it has committed (or failed): a nil error
// means the report is durable.
//
// It is idempotent on (device, seq): a report whose sequence number is
// already stored with the same digest returns nil and writes nothing; with a
// different digest it returns ErrConflict. An unknown device returns
// ErrNotFound. The head (LastSeq, LastDigest, LastSeen, TPMClock, and
// MeasuredBoot when the report has one) only moves forward, to the highest
// sequence number stored: a report older than the head is stored without
// changing it.
func (s *Store) AppendReport(ctx context.Context, r Report) error {
	if r.Seq > math.MaxInt64 {
		return fmt.Errorf("append report %s/%d: sequence number exceeds the storable range", r.DeviceID, r.Seq)
	}
	if err := s.submitAtomic(ctx, func(tx *sql.Tx) error { return s.appendReport(tx, r) }); err != nil {
		return fmt.Errorf("append report %s/%d: %w", r.DeviceID, r.Seq, err)
	}
	return nil
}

// appendReport writes r within tx. It runs without a savepoint: every
// error it returns either left nothing behind or is marked dirty, which
// makes the writer roll the whole batch back.
//
// The common case is two statements: the report is appended to the log and
// the device head moves to it. Only a report that does not become the head
// (an unknown device, a repeat, an older report) takes the slower path.
func (s *Store) appendReport(tx *sql.Tx, r Report) error {
	res, err := tx.Exec(`INSERT INTO reports (device_id, seq, digest, nonce, body, proof, received_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		r.DeviceID, int64(r.Seq), blob(r.Digest), blob(r.Nonce), blob(r.Body), blob(r.Proof), nanos(r.ReceivedAt))
	if err != nil {
		return err // a failed statement changes nothing
	}
	id, err := res.LastInsertId()
	if err != nil {
		return dirty(err)
	}

	// The head moves only forward; a NULL digest means no report yet,
	// which lets seq 0 be a head.
	var clock, resets, restarts sql.NullInt64
	if r.TPM != nil {
		clock = sql.NullInt64{Int64: int64(r.TPM.Clock), Valid: true}
		resets = sql.NullInt64{Int64: int64(r.TPM.ResetCount), Valid: true}
		restarts = sql.NullInt64{Int64: int64(r.TPM.RestartCount), Valid: true}
	}
	reboot := 0
	if r.Reboot {
		reboot = 1
	}
	// A nil MeasuredBoot binds NULL and keeps the device's reading.
	res, err = tx.Exec(`UPDATE devices SET last_report = ?1, last_seq = ?2, last_digest = ?3,
		last_seen = max(last_seen, ?4), tpm_clock = coalesce(?5, tpm_clock),
		tpm_reset_count = coalesce(?6, tpm_reset_count), tpm_restart_count = coalesce(?7, tpm_restart_count),
		reboots = reboots + ?8, measured_boot = coalesce(?10, measured_boot)
		WHERE id = ?9 AND (last_digest IS NULL OR last_seq < ?2)`,
		id, int64(r.Seq), blob(r.Digest), nanos(r.ReceivedAt), clock, resets, restarts, reboot, r.DeviceID, r.MeasuredBoot)
	if err != nil {
		return dirty(err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return dirty(err)
	} else if n == 1 {
		s.tail[tailKey{r.DeviceID, int64(r.Seq)}] = id
		return nil
	}

	// Not a new head. Every stored report of a device is at or below its
	// head, so only an unknown device or a sequence number at or below the
	// head gets here.
	var known int
	if err := tx.QueryRow(`SELECT count(*) FROM devices WHERE id = ?`, r.DeviceID).Scan(&known); err != nil {
		return dirty(err)
	}
	if known == 0 {
		return s.unappend(tx, id, ErrNotFound)
	}
	// The stored report with this sequence number, if any, is in the
	// history or among the reports appended since the last history pass.
	var digest []byte
	if prev, ok := s.tail[tailKey{r.DeviceID, int64(r.Seq)}]; ok {
		err = tx.QueryRow(`SELECT digest FROM reports WHERE id = ? AND device_id = ? AND seq = ?`,
			prev, r.DeviceID, int64(r.Seq)).Scan(&digest)
	} else {
		err = tx.QueryRow(`SELECT digest FROM reports WHERE id = (SELECT report_id FROM report_history
			WHERE device_id = ? AND seq = ?)`, r.DeviceID, int64(r.Seq)).Scan(&digest)
	}
	switch {
	case errors.Is(err, sql.ErrNoRows):
		s.tail[tailKey{r.DeviceID, int64(r.Seq)}] = id
		return nil // an older report the log lacked: kept, the head stays
	case err != nil:
		return dirty(err)
	case bytes.Equal(digest, r.Digest):
		return s.unappend(tx, id, nil)
	default:
		return s.unappend(tx, id, ErrConflict)
	}
}

// unappend removes the report just appended as id and returns result.
func (s *Store) unappend(tx *sql.Tx, id int64, result error) error {
	if _, err := tx.Exec(`DELETE FROM reports WHERE id = ?`, id); err != nil {
		return dirty(err)
	}
	return result
}

const reportColumns = `r.device_id, r.seq, r.digest, r.nonce, r.body, r.proof, r.received_at`

// Reports returns up to limit reports of a device, newest (highest
// sequence number) first; limit <= 0 means all. An unknown device has no
// reports.
func (s *Store) Reports(ctx context.Context, deviceID string, limit int) ([]Report, error) {
	var reports []Report
	err := s.readDevice(ctx, deviceID, func(tx *sql.Tx, through int64) error {
		// Reports the history does not index yet: a few seconds' worth at
		// most, found by ID.
		var err error
		reports, err = queryReports(ctx, tx, `SELECT `+reportColumns+` FROM reports r
			WHERE r.id > ? AND r.device_id = ?`, through, deviceID)
		if err != nil {
			return err
		}
		sqlLimit := -1 // SQLite reads a negative LIMIT as no limit
		if limit > 0 {
			sqlLimit = limit
		}
		indexed, err := queryReports(ctx, tx, `SELECT `+reportColumns+`
			FROM report_history h JOIN reports r ON r.id = h.report_id
			WHERE h.device_id = ? ORDER BY h.seq DESC LIMIT ?`, deviceID, sqlLimit)
		reports = append(reports, indexed...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reports of device %s: %w", deviceID, err)
	}
	slices.SortStableFunc(reports, func(a, b Report) int { return cmp.Compare(b.Seq, a.Seq) })
	if limit > 0 && len(reports) > limit {
		reports = reports[:limit]
	}
	return reports, nil
}

// CountReports returns how many reports of a device are stored.
func (s *Store) CountReports(ctx context.Context, deviceID string) (int, error) {
	var n int
	err := s.readDevice(ctx, deviceID, func(tx *sql.Tx, through int64) error {
		return tx.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM report_history WHERE device_id = ?1)
			+ (SELECT count(*) FROM reports WHERE id > ?2 AND device_id = ?1)`, deviceID, through).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("count reports of device %s: %w", deviceID, err)
	}
	return n, nil
}

// LatestReport returns the head report of a device, or ErrNotFound when it
// has none.
func (s *Store) LatestReport(ctx context.Context, deviceID string) (Report, error) {
	if err := s.readable(); err != nil {
		return Report{}, err
	}
	r, err := scanReport(s.r.QueryRowContext(ctx, `SELECT `+reportColumns+`
		FROM devices d JOIN reports r ON r.id = d.last_report WHERE d.id = ?`, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return Report{}, fmt.Errorf("latest report of device %s: %w", deviceID, ErrNotFound)
	}
	if err != nil {
		return Report{}, fmt.Errorf("latest report of device %s: %w", deviceID, err)
	}
	return r, nil
}

// readDevice runs fn in one read transaction, so that the history's
// extent and the reports fn reads come from the same snapshot.
func (s *Store) readDevice(ctx context.Context, deviceID string, fn func(tx *sql.Tx, through int64) error) error {
	if err := s.readable(); err != nil {
		return err
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var through int64
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'history_through'`).Scan(&through); err != nil {
		return err
	}
	return fn(tx, through)
}

func queryReports(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]Report, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var reports []Report
	for rows.Next() {
		r, err := scanReport(rows)
		if err != nil {
			return nil, err
		}
		reports = append(reports, r)
	}
	return reports, rows.Err()
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
