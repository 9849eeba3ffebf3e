package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/posture-project/posture/collector/store"
)

// OpenReportStream starts a report stream of a device and returns its
// number with the device's chain head.
func (s *Store) OpenReportStream(ctx context.Context, deviceID string) (store.StreamHead, error) {
	var h store.StreamHead
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var (
			state      int32
			epoch, seq int64
			digest     []byte
		)
		err := tx.QueryRow(`SELECT state, stream_epoch, last_seq, last_digest FROM devices WHERE id = ?`, deviceID).Scan(&state, &epoch, &seq, &digest)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		case state == stateRevoked:
			return store.ErrDeviceRevoked
		}
		if _, err := tx.Exec(`UPDATE devices SET stream_epoch = ? WHERE id = ?`, epoch+1, deviceID); err != nil {
			return err
		}
		h = store.StreamHead{Stream: uint64(epoch + 1), LastSeq: uint64(seq), LastDigest: nilIfEmpty(digest)}
		return nil
	})
	if err != nil {
		return store.StreamHead{}, fmt.Errorf("open report stream of device %s: %w", deviceID, err)
	}
	return h, nil
}

// AppendReport stores r as its device's new chain head, by
// compare-and-set on the device's newest stream and head, with its event.
func (s *Store) AppendReport(ctx context.Context, r store.Report) (store.Event, error) {
	if r.Seq > math.MaxInt64 || r.Stream > math.MaxInt64 {
		return store.Event{}, fmt.Errorf("append report %s/%d: sequence or stream number exceeds the storable range", r.DeviceID, r.Seq)
	}
	var ev store.Event
	if err := s.submitAtomic(ctx, func(tx *sql.Tx) (err error) {
		ev, err = s.appendReport(tx, r)
		return err
	}); err != nil {
		return store.Event{}, fmt.Errorf("append report %s/%d: %w", r.DeviceID, r.Seq, err)
	}
	return ev, nil
}

// appendReport writes r within tx. It runs without a savepoint: every
// error it returns either left nothing behind or is marked dirty, which
// makes the writer roll the whole batch back.
//
// The common case is three statements: the report is appended to the log,
// the device head moves to it by compare-and-set, and the event is
// recorded. Only a report that does not move the head takes the slower
// path, which finds out why.
func (s *Store) appendReport(tx *sql.Tx, r store.Report) (store.Event, error) {
	res, err := tx.Exec(`INSERT INTO reports (device_id, seq, digest, nonce, body, proof, received_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		r.DeviceID, int64(r.Seq), blob(r.Digest), blob(r.Nonce), blob(r.Body), blob(r.Proof), nanos(r.ReceivedAt))
	if err != nil {
		return store.Event{}, err // a failed statement changes nothing
	}
	id, err := res.LastInsertId()
	if err != nil {
		return store.Event{}, dirty(err)
	}

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
	// The head moves from exactly the head the report continues (a NULL
	// digest is no report yet), on the device's newest stream, of a
	// device that is not revoked. A nil MeasuredBoot binds NULL and keeps
	// the device's reading.
	res, err = tx.Exec(`UPDATE devices SET last_report = ?1, last_seq = ?2, last_digest = ?3,
		last_seen = max(last_seen, ?4), tpm_clock = coalesce(?5, tpm_clock),
		tpm_reset_count = coalesce(?6, tpm_reset_count), tpm_restart_count = coalesce(?7, tpm_restart_count),
		reboots = reboots + ?8, measured_boot = coalesce(?10, measured_boot)
		WHERE id = ?9 AND stream_epoch = ?11 AND state != ?13 AND last_seq = ?2 - 1 AND coalesce(last_digest, x'') = ?12`,
		id, int64(r.Seq), blob(r.Digest), nanos(r.ReceivedAt), clock, resets, restarts, reboot, r.DeviceID, r.MeasuredBoot,
		int64(r.Stream), blob(r.PrevDigest), stateRevoked)
	if err != nil {
		return store.Event{}, dirty(err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return store.Event{}, dirty(err)
	} else if n == 1 {
		ev := store.Event{Kind: store.EventReport, DeviceID: r.DeviceID, Report: &r}
		if err := insertEvent(tx, &ev, r.ReceivedAt, id); err != nil {
			return store.Event{}, dirty(err)
		}
		s.tail[tailKey{r.DeviceID, int64(r.Seq)}] = id
		return ev, nil
	}

	// Not the new head: find out why from what is stored.
	var (
		state          int32
		epoch, lastSeq int64
		lastDigest     []byte
	)
	err = tx.QueryRow(`SELECT state, stream_epoch, last_seq, last_digest FROM devices WHERE id = ?`, r.DeviceID).Scan(&state, &epoch, &lastSeq, &lastDigest)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.Event{}, s.unappend(tx, id, store.ErrNotFound)
	case err != nil:
		return store.Event{}, dirty(err)
	}
	// The stored report with this sequence number, if any, is in the
	// history or among the reports appended since the last history pass.
	var stored []byte
	if prev, ok := s.tail[tailKey{r.DeviceID, int64(r.Seq)}]; ok {
		err = tx.QueryRow(`SELECT digest FROM reports WHERE id = ? AND device_id = ? AND seq = ?`,
			prev, r.DeviceID, int64(r.Seq)).Scan(&stored)
	} else {
		err = tx.QueryRow(`SELECT digest FROM reports WHERE id = (SELECT report_id FROM report_history
			WHERE device_id = ? AND seq = ?)`, r.DeviceID, int64(r.Seq)).Scan(&stored)
	}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return store.Event{}, dirty(err)
	}
	if stored != nil {
		stored = blob(stored) // stored, even if empty
	}
	refusal := store.AppendRefusal(state, uint64(epoch), uint64(lastSeq), nilIfEmpty(lastDigest), lastDigest != nil, stored, r)
	return store.Event{}, s.unappend(tx, id, refusal)
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
func (s *Store) Reports(ctx context.Context, deviceID string, limit int) ([]store.Report, error) {
	var reports []store.Report
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
	slices.SortStableFunc(reports, func(a, b store.Report) int { return cmp.Compare(b.Seq, a.Seq) })
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

// LatestReport returns the head report of a device, or store.ErrNotFound when it
// has none.
func (s *Store) LatestReport(ctx context.Context, deviceID string) (store.Report, error) {
	if err := s.readable(); err != nil {
		return store.Report{}, err
	}
	r, err := scanReport(s.r.QueryRowContext(ctx, `SELECT `+reportColumns+`
		FROM devices d JOIN reports r ON r.id = d.last_report WHERE d.id = ?`, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Report{}, fmt.Errorf("latest report of device %s: %w", deviceID, store.ErrNotFound)
	}
	if err != nil {
		return store.Report{}, fmt.Errorf("latest report of device %s: %w", deviceID, err)
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

func queryReports(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]store.Report, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var reports []store.Report
	for rows.Next() {
		r, err := scanReport(rows)
		if err != nil {
			return nil, err
		}
		reports = append(reports, r)
	}
	return reports, rows.Err()
}

func scanReport(row scanner) (store.Report, error) {
	var (
		r             store.Report
		seq, received int64
	)
	if err := row.Scan(&r.DeviceID, &seq, &r.Digest, &r.Nonce, &r.Body, &r.Proof, &received); err != nil {
		return store.Report{}, err
	}
	r.Seq, r.ReceivedAt = uint64(seq), fromNanos(received)
	r.Digest, r.Nonce = nilIfEmpty(r.Digest), nilIfEmpty(r.Nonce)
	r.Body, r.Proof = nilIfEmpty(r.Body), nilIfEmpty(r.Proof)
	return r, nil
}
