package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"

	"github.com/posture-project/posture/collector/store"
)

// ScanFleet calls fn for every device and its latest report. It reads with
// parts connections at once, each over its own share of the devices and
// each in its own snapshot, and calls fn from that share's goroutine with
// the share's number (0 to parts-1), so fn must be safe for concurrent use
// across parts. It stops at the first error.
func (s *Store) ScanFleet(ctx context.Context, parts int, fn func(part int, row *store.FleetRow) error) error {
	if err := s.readable(); err != nil {
		return err
	}
	var lo, hi sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT min(rowid), max(rowid) FROM devices`).Scan(&lo, &hi); err != nil {
		return fmt.Errorf("scan fleet: %w", err)
	}
	if !lo.Valid {
		return nil // no devices
	}
	parts = max(1, min(parts, int(hi.Int64-lo.Int64+1)))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, parts)
	var wg sync.WaitGroup
	span := (hi.Int64 - lo.Int64 + 1 + int64(parts) - 1) / int64(parts)
	for p := range parts {
		from := lo.Int64 + int64(p)*span
		to := min(from+span-1, hi.Int64)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[p] = s.scanFleetPart(ctx, from, to, func(r *store.FleetRow) error { return fn(p, r) }); errs[p] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && err != context.Canceled {
			return fmt.Errorf("scan fleet: %w", err)
		}
	}
	return ctx.Err()
}

func (s *Store) scanFleetPart(ctx context.Context, from, to int64, fn func(*store.FleetRow) error) error {
	// last_report names the head report (0, matching none, before the
	// first), so the join reads one report per device by its ID.
	rows, err := s.r.QueryContext(ctx, `SELECT d.id, d.hostname, d.identity, d.identity_key, d.assurance,
		d.state, d.state_reason, d.cert_serial, d.cert_key_sha256, d.prev_cert_serial, d.prev_cert_key_sha256, d.last_seq, d.last_digest, d.tpm_clock, d.tpm_reset_count, d.tpm_restart_count,
		d.measured_boot, r.body, r.proof, r.received_at
		FROM devices d LEFT JOIN reports r ON r.id = d.last_report
		WHERE d.rowid BETWEEN ? AND ?`, from, to)
	if err != nil {
		return err
	}
	defer rows.Close()
	var (
		row             store.FleetRow
		report          store.Report
		identity        sql.RawBytes
		lastSeq, clock  int64
		received        sql.NullInt64
		body, proof     sql.RawBytes
		key, lastDigest sql.RawBytes
		certKey         sql.RawBytes
		prevCertKey     sql.RawBytes
		boot            sql.RawBytes
	)
	for rows.Next() {
		if err := rows.Scan(&row.ID, &row.Hostname, &identity, &key, &row.Assurance,
			&row.State, &row.StateReason, &row.CertSerial, &certKey, &row.PrevCertSerial, &prevCertKey, &lastSeq, &lastDigest, &clock, &row.TPMClock.ResetCount, &row.TPMClock.RestartCount,
			&boot, &body, &proof, &received); err != nil {
			return err
		}
		row.TPM = string(identity) == "tpm"
		row.IdentityKey, row.LastDigest, row.MeasuredBoot = key, nilIfEmpty(lastDigest), nilIfEmpty(boot)
		row.CertKeySHA256, row.PrevCertKeySHA256 = nilIfEmpty(certKey), nilIfEmpty(prevCertKey)
		row.LastSeq, row.TPMClock.Clock = uint64(lastSeq), uint64(clock)
		row.Report = nil
		if received.Valid {
			report = store.Report{DeviceID: row.ID, Seq: row.LastSeq, Digest: row.LastDigest, Body: nilIfEmpty(body), Proof: nilIfEmpty(proof), ReceivedAt: fromNanos(received.Int64)}
			row.Report = &report
		}
		if err := fn(&row); err != nil {
			return err
		}
	}
	return rows.Err()
}
