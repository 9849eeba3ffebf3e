package postgres

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/posture-project/posture/collector/store"
)

// ScanFleet calls fn for every device and its latest report. It reads
// with up to parts connections at once, each over its own range of
// scan_id and in its own snapshot, and calls fn from that range's
// goroutine with its number (0 to parts-1), so fn must be safe for
// concurrent use across parts. It stops at the first error.
func (s *Store) ScanFleet(ctx context.Context, parts int, fn func(part int, row *store.FleetRow) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	var lo, hi *int64
	if err := s.pool.QueryRow(ctx, `SELECT min(scan_id), max(scan_id) FROM devices`).Scan(&lo, &hi); err != nil {
		return fmt.Errorf("scan fleet: %w", err)
	}
	if lo == nil {
		return nil // no devices
	}
	parts = int(max(1, min(int64(parts), *hi-*lo+1)))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, parts)
	var wg sync.WaitGroup
	span := (*hi - *lo + 1 + int64(parts) - 1) / int64(parts)
	for p := range parts {
		from := *lo + int64(p)*span
		to := min(from+span-1, *hi)
		wg.Go(func() {
			if errs[p] = s.scanFleetPart(ctx, from, to, func(r *store.FleetRow) error { return fn(p, r) }); errs[p] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("scan fleet: %w", err)
		}
	}
	return ctx.Err()
}

// fleetColumns are the columns scanFleetPart decodes, in order.
const fleetColumns = `d.id, d.hostname, d.identity, d.identity_key, d.assurance, d.state, d.state_reason,
	d.cert_serial, d.prev_cert_serial, d.last_seq, d.last_digest, d.tpm_clock, d.tpm_reset_count, d.tpm_restart_count,
	d.measured_boot, r.body, r.proof, r.received_at, d.cert_key_sha256, d.prev_cert_key_sha256`

// fleetSQL reads the devices with scan_id from $1 to $2, each with its
// head report, which last_report names (NULL before the first). The
// report is looked up by its ID, device by device: OFFSET 0 keeps the
// planner from turning the lookup into a join that hashes the whole
// reports table, history included, for every part.
const fleetSQL = `SELECT ` + fleetColumns + `
	FROM devices d LEFT JOIN LATERAL (
		SELECT body, proof, received_at FROM reports WHERE id = d.last_report OFFSET 0
	) r ON true
	WHERE d.scan_id BETWEEN $1 AND $2`

// scanFleetPart reads the devices with scan_id from..to. A start-up reads
// every device, so rows are decoded from the wire bytes pgx hands out,
// into one FleetRow and buffers reused from row to row: the only
// allocation per row is the string holding the row's text fields.
func (s *Store) scanFleetPart(ctx context.Context, from, to int64, fn func(*store.FleetRow) error) error {
	rows, err := s.pool.Query(ctx, fleetSQL, from, to)
	if err != nil {
		return err
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	if len(fields) != 20 {
		// Most likely the query failed (another part's error ended it).
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return fmt.Errorf("the fleet query returned %d columns, want 20", len(fields))
	}
	var (
		row    store.FleetRow
		report store.Report
		d      decoder
		text   []byte // the row's text fields, back to back
		// Where the bytea fields land; kept between rows.
		key, digest, boot, body, proof []byte
		certKey, prevCertKey           []byte
	)
	for rows.Next() {
		v := rows.RawValues()
		d.fields = fields
		text = append(text[:0], v[0]...)
		text = append(text, v[1]...)
		text = append(text, v[6]...)
		text = append(text, v[7]...)
		text = append(text, v[8]...)
		all := string(text)
		at := 0
		cut := func(i int) string {
			sub := all[at : at+len(v[i])]
			at += len(v[i])
			return sub
		}
		row.ID, row.Hostname, row.StateReason, row.CertSerial, row.PrevCertSerial = cut(0), cut(1), cut(6), cut(7), cut(8)
		row.TPM = string(v[2]) == "tpm"
		key = d.bytes(3, v[3], key)
		row.IdentityKey = key
		row.Assurance = int32(d.int(4, v[4]))
		row.State = int32(d.int(5, v[5]))
		row.LastSeq = uint64(d.int(9, v[9]))
		digest = d.bytes(10, v[10], digest)
		row.LastDigest = nilIfEmpty(digest)
		row.TPMClock = store.TPMClock{Clock: uint64(d.int(11, v[11])), ResetCount: uint32(d.int(12, v[12])), RestartCount: uint32(d.int(13, v[13]))}
		boot = d.bytes(14, v[14], boot)
		row.MeasuredBoot = nilIfEmpty(boot)
		certKey, prevCertKey = d.bytes(18, v[18], certKey), d.bytes(19, v[19], prevCertKey)
		row.CertKeySHA256, row.PrevCertKeySHA256 = nilIfEmpty(certKey), nilIfEmpty(prevCertKey)
		row.Report = nil
		if v[17] != nil {
			body, proof = d.bytes(15, v[15], body), d.bytes(16, v[16], proof)
			report = store.Report{DeviceID: row.ID, Seq: row.LastSeq, Digest: row.LastDigest, Body: nilIfEmpty(body),
				Proof: nilIfEmpty(proof), ReceivedAt: fromNanos(d.int(17, v[17]))}
			row.Report = &report
		}
		if d.err != nil {
			return d.err
		}
		if err := fn(&row); err != nil {
			return err
		}
	}
	return rows.Err()
}

// decoder decodes raw column values in the format the server sent them:
// binary as pgx asks for it, or text under the simple protocol (a DSN
// may choose that, for a connection pooler).
type decoder struct {
	fields []pgconn.FieldDescription
	err    error
}

// int decodes an integer column (int4 or int8); NULL is 0.
func (d *decoder) int(i int, v []byte) int64 {
	if v == nil {
		return 0
	}
	if d.fields[i].Format == pgtype.BinaryFormatCode {
		switch len(v) {
		case 8:
			return int64(binary.BigEndian.Uint64(v))
		case 4:
			return int64(int32(binary.BigEndian.Uint32(v)))
		}
		d.fail(fmt.Errorf("column %s: %d bytes for an integer", d.fields[i].Name, len(v)))
		return 0
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		d.fail(fmt.Errorf("column %s: %w", d.fields[i].Name, err))
	}
	return n
}

// bytes decodes a bytea column into buf's array and returns it; NULL is
// nil.
func (d *decoder) bytes(i int, v, buf []byte) []byte {
	if v == nil {
		return nil
	}
	if d.fields[i].Format == pgtype.BinaryFormatCode {
		return append(buf[:0], v...)
	}
	// Text format: \x followed by hex digits.
	if len(v) < 2 || v[0] != '\\' || v[1] != 'x' {
		d.fail(fmt.Errorf("column %s: bytea text not in hex format", d.fields[i].Name))
		return nil
	}
	out := slices.Grow(buf[:0], hex.DecodedLen(len(v)-2))[:hex.DecodedLen(len(v)-2)]
	if _, err := hex.Decode(out, v[2:]); err != nil {
		d.fail(fmt.Errorf("column %s: %w", d.fields[i].Name, err))
	}
	return out
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}
