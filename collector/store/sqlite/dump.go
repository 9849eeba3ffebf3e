package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/posture-project/posture/collector/store"
)

var (
	_ store.Dumper = (*Store)(nil)
	_ store.Loader = (*Store)(nil)
)

// Dump calls fn with every record of the database, read in one read
// transaction, so from one snapshot.
func (s *Store) Dump(ctx context.Context, fn func(store.Record) error) error {
	if err := s.readable(); err != nil {
		return err
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("dump database: %w", err)
	}
	defer tx.Rollback()
	each := func(what, query string, scan func(scanner) (store.Record, error)) error {
		rows, err := tx.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("dump %s: %w", what, err)
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scan(rows)
			if err == nil {
				err = fn(r)
			}
			if err != nil {
				return fmt.Errorf("dump %s: %w", what, err)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("dump %s: %w", what, err)
		}
		return nil
	}
	steps := []struct {
		what, query string
		scan        func(scanner) (store.Record, error)
	}{
		{"settings", `SELECT key, value FROM settings ORDER BY key`, func(row scanner) (store.Record, error) {
			var kv store.Setting
			err := row.Scan(&kv.Key, &kv.Value)
			return store.Record{Setting: &kv}, err
		}},
		{"tokens", selectToken + ` ORDER BY hash`, func(row scanner) (store.Record, error) {
			t, err := scanToken(row)
			return store.Record{Token: &t}, err
		}},
		{"pinned EKs", `SELECT ek_sha256, description, created_at FROM pinned_eks ORDER BY ek_sha256`, func(row scanner) (store.Record, error) {
			var (
				e  store.PinnedEK
				at int64
			)
			err := row.Scan(&e.Hash, &e.Description, &at)
			e.CreatedAt = fromNanos(at)
			return store.Record{PinnedEK: &e}, err
		}},
		{"gateways", `SELECT serial, name, issued_at, expires_at, revoked_at, revoke_reason FROM gateways ORDER BY serial`, func(row scanner) (store.Record, error) {
			var (
				g                        store.Gateway
				issued, expires, revoked int64
			)
			err := row.Scan(&g.Serial, &g.Name, &issued, &expires, &revoked, &g.RevokeReason)
			g.IssuedAt, g.ExpiresAt, g.RevokedAt = fromNanos(issued), fromNanos(expires), fromNanos(revoked)
			return store.Record{Gateway: &g}, err
		}},
		{"devices", `SELECT ` + deviceColumns + `, stream_epoch, measured_boot FROM devices ORDER BY rowid`, func(row scanner) (store.Record, error) {
			var (
				d     store.DeviceRecord
				epoch int64
			)
			var err error
			d.Device, err = scanDevice(extraColumns{row, []any{&epoch, &d.MeasuredBoot}})
			d.StreamEpoch, d.MeasuredBoot = uint64(epoch), nilIfEmpty(d.MeasuredBoot)
			return store.Record{Device: &d}, err
		}},
		// In the order they were stored (the log's), which the loader
		// keeps: pruning walks reports in that order.
		{"reports", `SELECT ` + reportColumns + ` FROM reports r ORDER BY r.id`, func(row scanner) (store.Record, error) {
			r, err := scanReport(row)
			return store.Record{Report: &r}, err
		}},
		{"decisions", `SELECT collector, seq, first_at, at, count, device, level, caller, allowed, score, state, detail
			FROM decisions ORDER BY collector, seq`, func(row scanner) (store.Record, error) {
			var (
				d                 store.DecisionRecord
				seq, first, at, n int64
			)
			err := row.Scan(&d.Collector, &seq, &first, &at, &n, &d.Device, &d.Level, &d.Caller, &d.Allowed, &d.Score, &d.State, &d.Detail)
			d.Seq, d.FirstAt, d.At, d.Count, d.Detail = uint64(seq), fromNanos(first), fromNanos(at), uint64(n), nilIfEmpty(d.Detail)
			return store.Record{Decision: &d}, err
		}},
		{"standings", `SELECT device_id, data FROM standings ORDER BY device_id`, func(row scanner) (store.Record, error) {
			var (
				r    store.StandingRecord
				data []byte
			)
			if err := row.Scan(&r.DeviceID, &data); err != nil {
				return store.Record{}, err
			}
			st, err := store.DecodeStanding(data)
			r.Standing = st
			return store.Record{Standing: &r}, err
		}},
		{"device users", `SELECT device_id, email, issuer, subject, bound_at FROM device_users ORDER BY device_id`, func(row scanner) (store.Record, error) {
			var (
				u  store.DeviceUser
				at int64
			)
			err := row.Scan(&u.DeviceID, &u.Email, &u.Issuer, &u.Subject, &at)
			u.BoundAt = fromNanos(at)
			return store.Record{DeviceUser: &u}, err
		}},
		{"browser certificates", `SELECT device_id, user_name, serial, key_sha256, issued_under, issued_under_key, issued_at, not_after
			FROM browser_certs ORDER BY device_id, user_name`, func(row scanner) (store.Record, error) {
			var (
				c                store.BrowserCert
				issued, notAfter int64
			)
			err := row.Scan(&c.DeviceID, &c.User, &c.Serial, &c.KeySHA256, &c.IssuedUnder, &c.IssuedUnderKeySHA256, &issued, &notAfter)
			c.IssuedAt, c.NotAfter = fromNanos(issued), fromNanos(notAfter)
			return store.Record{BrowserCert: &c}, err
		}},
		{"SSF receivers", `SELECT name, token_hash, audience, level, created_at FROM ssf_clients ORDER BY name`, func(row scanner) (store.Record, error) {
			var (
				c  store.SSFClient
				at int64
			)
			err := row.Scan(&c.Name, &c.TokenHash, &c.Audience, &c.Level, &at)
			c.CreatedAt = fromNanos(at)
			return store.Record{SSFClient: &c}, err
		}},
		{"receivers", selectReceiver + ` WHERE config IS NOT NULL ORDER BY id`, func(row scanner) (store.Record, error) {
			r, err := scanReceiver(row)
			return store.Record{Receiver: &r}, err
		}},
		{"audit log", `SELECT at, actor, role, via, source, action, target, detail, outcome FROM audit ORDER BY id`, func(row scanner) (store.Record, error) {
			var (
				a  store.AuditRecord
				at int64
			)
			err := row.Scan(&at, &a.Actor, &a.Role, &a.Via, &a.From, &a.Action, &a.Target, &a.Detail, &a.Outcome)
			a.At = fromNanos(at)
			return store.Record{Audit: &a}, err
		}},
		{"event mark", `SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
			coalesce((SELECT max(id) FROM events), 0))`, func(row scanner) (store.Record, error) {
			var last int64
			err := row.Scan(&last)
			return store.Record{Events: &store.EventMark{LastEventID: uint64(last)}}, err
		}},
	}
	for _, st := range steps {
		if err := each(st.what, st.query, st.scan); err != nil {
			return err
		}
	}
	return nil
}

// extraColumns scans the columns scanDevice reads, then extra.
type extraColumns struct {
	row   scanner
	extra []any
}

func (e extraColumns) Scan(dest ...any) error { return e.row.Scan(append(dest, e.extra...)...) }

// Load stores the records next returns into this empty database, as one
// operation of the writer (one transaction). The reports are indexed in
// the history as they are loaded.
func (s *Store) Load(ctx context.Context, next func() (store.Record, bool, error)) error {
	ran := false
	err := s.submit(ctx, func(tx *sql.Tx) error {
		// next cannot be read again: a load that a failed batch would run
		// a second time fails instead. Nothing else writes a database
		// that is being loaded, so no batch fails.
		if ran {
			return errors.New("the load was interrupted; load again into an empty database")
		}
		ran = true
		return load(tx, next)
	})
	if err != nil {
		return fmt.Errorf("load database: %w", err)
	}
	// The writer knows how far the history reaches; it moved.
	err = s.submit(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT value FROM meta WHERE key = 'history_through'`).Scan(&s.historyThrough)
	})
	if err != nil {
		return fmt.Errorf("load database: %w", err)
	}
	return nil
}

func load(tx *sql.Tx, next func() (store.Record, bool, error)) error {
	var full bool
	if err := tx.QueryRow(`SELECT EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM tokens)
		OR EXISTS (SELECT 1 FROM reports)`).Scan(&full); err != nil {
		return err
	}
	if full {
		return store.ErrNotEmpty
	}
	var mark uint64
	for {
		r, ok, err := next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch {
		case r.Setting != nil:
			var got string
			if _, err := tx.Exec(`INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, r.Setting.Key, r.Setting.Value); err != nil {
				return fmt.Errorf("load setting %s: %w", r.Setting.Key, err)
			}
			if err := tx.QueryRow(`SELECT value FROM settings WHERE key = ?`, r.Setting.Key).Scan(&got); err != nil {
				return fmt.Errorf("load setting %s: %w", r.Setting.Key, err)
			}
			if got != r.Setting.Value {
				return store.IdentityMismatch(r.Setting.Key, got, r.Setting.Value)
			}
		case r.Token != nil:
			t := r.Token
			if _, err := tx.Exec(`INSERT INTO tokens (hash, description, created_at, expires_at, uses, used, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				t.Hash, t.Description, nanos(t.CreatedAt), nanos(t.ExpiresAt), int64(t.Uses), int64(t.Used), nanos(t.RevokedAt)); err != nil {
				return fmt.Errorf("load token: %w", err)
			}
		case r.PinnedEK != nil:
			e := r.PinnedEK
			if _, err := tx.Exec(`INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES (?, ?, ?)
				ON CONFLICT (ek_sha256) DO NOTHING`, e.Hash, e.Description, nanos(e.CreatedAt)); err != nil {
				return fmt.Errorf("load pinned EK %s: %w", e.Hash, err)
			}
		case r.Gateway != nil:
			g := r.Gateway
			if _, err := tx.Exec(`INSERT INTO gateways (serial, name, issued_at, expires_at, revoked_at, revoke_reason) VALUES (?, ?, ?, ?, ?, ?)`,
				g.Serial, g.Name, nanos(g.IssuedAt), nanos(g.ExpiresAt), nanos(g.RevokedAt), g.RevokeReason); err != nil {
				return fmt.Errorf("load gateway certificate %s: %w", g.Serial, err)
			}
		case r.Device != nil:
			d := r.Device
			if _, err := tx.Exec(`INSERT INTO devices (id, hostname, platform, identity, identity_key, assurance, state,
				state_reason, enrolled_at, cert_serial, cert_key_sha256, prev_cert_serial, prev_cert_key_sha256, ek_sha256,
				stream_epoch, last_seq, last_digest, last_seen, tpm_clock, tpm_reset_count, tpm_restart_count, reboots, measured_boot)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				d.ID, d.Hostname, d.Platform, d.Identity, blob(d.IdentityKey), d.Assurance, d.State,
				d.StateReason, nanos(d.EnrolledAt), d.CertSerial, d.CertKeySHA256, d.PrevCertSerial, d.PrevCertKeySHA256, d.EKSHA256, int64(d.StreamEpoch), int64(d.LastSeq),
				d.LastDigest, nanos(d.LastSeen), int64(d.TPMClock.Clock), int64(d.TPMClock.ResetCount), int64(d.TPMClock.RestartCount),
				int64(d.Reboots), d.MeasuredBoot); err != nil {
				return fmt.Errorf("load device %s: %w", d.ID, err)
			}
		case r.Report != nil:
			p := r.Report
			if _, err := tx.Exec(`INSERT INTO reports (device_id, seq, digest, nonce, body, proof, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				p.DeviceID, int64(p.Seq), blob(p.Digest), blob(p.Nonce), blob(p.Body), blob(p.Proof), nanos(p.ReceivedAt)); err != nil {
				return fmt.Errorf("load report %s/%d: %w", p.DeviceID, p.Seq, err)
			}
		case r.Decision != nil:
			d := r.Decision
			if _, err := tx.Exec(`INSERT INTO decisions (collector, seq, first_at, at, count, device, level, caller, allowed, score, state, detail)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				d.Collector, int64(d.Seq), nanos(d.FirstAt), nanos(d.At), int64(d.Count), d.Device, d.Level, d.Caller,
				d.Allowed, d.Score, d.State, blob(d.Detail)); err != nil {
				return fmt.Errorf("load decision %s/%d: %w", d.Collector, d.Seq, err)
			}
		case r.Events != nil:
			mark = max(mark, r.Events.LastEventID)
		case r.Standing != nil:
			if err := writeStanding(tx, r.Standing.DeviceID, r.Standing.Standing); err != nil {
				return fmt.Errorf("load standing of %s: %w", r.Standing.DeviceID, err)
			}
		case r.DeviceUser != nil:
			u := r.DeviceUser
			if _, err := tx.Exec(`INSERT INTO device_users (device_id, email, issuer, subject, bound_at) VALUES (?, ?, ?, ?, ?)`,
				u.DeviceID, u.Email, u.Issuer, u.Subject, nanos(u.BoundAt)); err != nil {
				return fmt.Errorf("load user of %s: %w", u.DeviceID, err)
			}
		case r.Audit != nil:
			if _, err := insertAudit(tx, *r.Audit); err != nil {
				return fmt.Errorf("load audit record: %w", err)
			}
		case r.BrowserCert != nil:
			c := r.BrowserCert
			if _, err := tx.Exec(`INSERT INTO browser_certs (device_id, user_name, serial, key_sha256, issued_under, issued_under_key, issued_at, not_after)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
				c.DeviceID, c.User, c.Serial, blob(c.KeySHA256), c.IssuedUnder, blob(c.IssuedUnderKeySHA256), nanos(c.IssuedAt), nanos(c.NotAfter)); err != nil {
				return fmt.Errorf("load browser certificate of %s on %s: %w", c.User, c.DeviceID, err)
			}
		case r.SSFClient != nil:
			c := r.SSFClient
			if _, err := tx.Exec(`INSERT INTO ssf_clients (name, token_hash, audience, level, created_at) VALUES (?, ?, ?, ?, ?)`,
				c.Name, blob(c.TokenHash), c.Audience, c.Level, nanos(c.CreatedAt)); err != nil {
				return fmt.Errorf("load SSF receiver %s: %w", c.Name, err)
			}
		case r.Receiver != nil:
			rc := r.Receiver
			if _, err := tx.Exec(`INSERT INTO receivers (id, kind, config, created_at, cursor) VALUES (?, ?, ?, ?, 0)`,
				rc.ID, rc.Kind, rc.Config, nanos(rc.CreatedAt)); err != nil {
				return fmt.Errorf("load receiver %s: %w", rc.ID, err)
			}
		default:
			return errors.New("load: a record with nothing in it")
		}
	}
	// The history indexes every report, and names each device's head.
	for _, q := range []string{
		`INSERT OR IGNORE INTO report_history (device_id, seq, report_id)
			SELECT device_id, seq, id FROM reports ORDER BY device_id, seq`,
		`UPDATE meta SET value = (SELECT coalesce(max(id), 0) FROM reports) WHERE key = 'history_through'`,
		`UPDATE devices SET last_report = coalesce((SELECT report_id FROM report_history h
			WHERE h.device_id = devices.id AND h.seq = devices.last_seq), 0) WHERE last_digest IS NOT NULL`,
	} {
		if _, err := tx.Exec(q); err != nil {
			return fmt.Errorf("load: index reports: %w", err)
		}
	}
	// Event IDs continue above the source's (AUTOINCREMENT reads
	// sqlite_sequence).
	if mark > 0 {
		if _, err := tx.Exec(`INSERT INTO sqlite_sequence (name, seq) SELECT 'events', 0
			WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')`); err != nil {
			return fmt.Errorf("load: continue event IDs: %w", err)
		}
		if _, err := tx.Exec(`UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'`, int64(mark)); err != nil {
			return fmt.Errorf("load: continue event IDs: %w", err)
		}
	}
	return nil
}
