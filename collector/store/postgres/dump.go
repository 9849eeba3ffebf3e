package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

var (
	_ store.Dumper = (*Store)(nil)
	_ store.Loader = (*Store)(nil)
)

// Dump calls fn with every record of the database, read in one
// REPEATABLE READ transaction, so from one snapshot.
func (s *Store) Dump(ctx context.Context, fn func(store.Record) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("dump database: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // read only: nothing to undo
	each := func(what, query string, dest []any, record func() store.Record) error {
		rows, err := tx.Query(ctx, query)
		if err != nil {
			return fmt.Errorf("dump %s: %w", what, err)
		}
		if _, err := pgx.ForEachRow(rows, dest, func() error { return fn(record()) }); err != nil {
			return fmt.Errorf("dump %s: %w", what, err)
		}
		return nil
	}

	var key, value string
	if err := each("settings", `SELECT key, value FROM settings ORDER BY key`, []any{&key, &value}, func() store.Record {
		return store.Record{Setting: &store.Setting{Key: key, Value: value}}
	}); err != nil {
		return err
	}

	var (
		t                           store.Token
		a, b, c, r, uses, used, seq int64
	)
	if err := each("tokens", `SELECT hash, description, created_at, expires_at, uses, used, revoked_at FROM tokens ORDER BY hash`,
		[]any{&t.Hash, &t.Description, &a, &b, &uses, &used, &r}, func() store.Record {
			t.CreatedAt, t.ExpiresAt, t.Uses, t.Used, t.RevokedAt = fromNanos(a), fromNanos(b), uint32(uses), uint32(used), fromNanos(r)
			tok := t
			return store.Record{Token: &tok}
		}); err != nil {
		return err
	}

	var ek store.PinnedEK
	if err := each("pinned EKs", `SELECT ek_sha256, description, created_at FROM pinned_eks ORDER BY ek_sha256`,
		[]any{&ek.Hash, &ek.Description, &a}, func() store.Record {
			ek.CreatedAt = fromNanos(a)
			e := ek
			return store.Record{PinnedEK: &e}
		}); err != nil {
		return err
	}

	var g store.Gateway
	if err := each("gateways", `SELECT serial, name, issued_at, expires_at, revoked_at, revoke_reason FROM gateways ORDER BY serial`,
		[]any{&g.Serial, &g.Name, &a, &b, &c, &g.RevokeReason}, func() store.Record {
			g.IssuedAt, g.ExpiresAt, g.RevokedAt = fromNanos(a), fromNanos(b), fromNanos(c)
			gw := g
			return store.Record{Gateway: &gw}
		}); err != nil {
		return err
	}

	rows, err := tx.Query(ctx, `SELECT `+deviceColumns+`, stream_epoch, measured_boot FROM devices ORDER BY scan_id`)
	if err != nil {
		return fmt.Errorf("dump devices: %w", err)
	}
	for rows.Next() {
		var (
			epoch int64
			boot  []byte
		)
		d, err := scanDevice(rows, &epoch, &boot)
		if err == nil {
			err = fn(store.Record{Device: &store.DeviceRecord{Device: d, StreamEpoch: uint64(epoch), MeasuredBoot: boot}})
		}
		if err != nil {
			rows.Close()
			return fmt.Errorf("dump devices: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("dump devices: %w", err)
	}

	// In the order they were stored, which the loader keeps: pruning
	// walks reports in that order.
	rows, err = tx.Query(ctx, `SELECT `+reportColumns+` FROM reports r ORDER BY r.id`)
	if err != nil {
		return fmt.Errorf("dump reports: %w", err)
	}
	for rows.Next() {
		r, err := scanReport(rows)
		if err == nil {
			err = fn(store.Record{Report: &r})
		}
		if err != nil {
			rows.Close()
			return fmt.Errorf("dump reports: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("dump reports: %w", err)
	}

	var (
		d          store.DecisionRecord
		n, score   int64
		first, atN int64
	)
	if err := each("decisions", `SELECT collector, seq, first_at, at, count, device, level, caller, allowed, score, state, detail
		FROM decisions ORDER BY collector, seq`,
		[]any{&d.Collector, &seq, &first, &atN, &n, &d.Device, &d.Level, &d.Caller, &d.Allowed, &score, &d.State, &d.Detail}, func() store.Record {
			d.Seq, d.FirstAt, d.At, d.Count, d.Score = uint64(seq), fromNanos(first), fromNanos(atN), uint64(n), uint32(score)
			d.Detail = nilIfEmpty(d.Detail)
			rec := d
			return store.Record{Decision: &rec}
		}); err != nil {
		return err
	}

	var (
		stDevice string
		stData   []byte
		stErr    error
	)
	if err := each("standings", `SELECT device_id, data FROM standings ORDER BY device_id`, []any{&stDevice, &stData}, func() store.Record {
		st, err := store.DecodeStanding(stData)
		if err != nil {
			stErr = err
		}
		return store.Record{Standing: &store.StandingRecord{DeviceID: stDevice, Standing: st}}
	}); err != nil {
		return err
	}
	if stErr != nil {
		return fmt.Errorf("dump standings: %w", stErr)
	}
	var (
		u       store.DeviceUser
		boundAt int64
	)
	if err := each("device users", `SELECT device_id, email, issuer, subject, bound_at FROM device_users ORDER BY device_id`,
		[]any{&u.DeviceID, &u.Email, &u.Issuer, &u.Subject, &boundAt}, func() store.Record {
			rec := u
			rec.BoundAt = fromNanos(boundAt)
			return store.Record{DeviceUser: &rec}
		}); err != nil {
		return err
	}
	var (
		bc               store.BrowserCert
		issued, notAfter int64
	)
	if err := each("browser certificates", `SELECT device_id, user_name, serial, key_sha256, issued_under, issued_under_key, issued_at, not_after
		FROM browser_certs ORDER BY device_id, user_name`,
		[]any{&bc.DeviceID, &bc.User, &bc.Serial, &bc.KeySHA256, &bc.IssuedUnder, &bc.IssuedUnderKeySHA256, &issued, &notAfter}, func() store.Record {
			rec := bc
			rec.KeySHA256 = append([]byte(nil), bc.KeySHA256...)
			rec.IssuedUnderKeySHA256 = append([]byte(nil), bc.IssuedUnderKeySHA256...)
			rec.IssuedAt, rec.NotAfter = fromNanos(issued), fromNanos(notAfter)
			return store.Record{BrowserCert: &rec}
		}); err != nil {
		return err
	}
	var (
		cl        store.SSFClient
		clCreated int64
	)
	if err := each("SSF receivers", `SELECT name, token_hash, audience, level, created_at FROM ssf_clients ORDER BY name`,
		[]any{&cl.Name, &cl.TokenHash, &cl.Audience, &cl.Level, &clCreated}, func() store.Record {
			rec := cl
			rec.TokenHash = append([]byte(nil), cl.TokenHash...)
			rec.CreatedAt = fromNanos(clCreated)
			return store.Record{SSFClient: &rec}
		}); err != nil {
		return err
	}
	var (
		au                                    store.AuditRecord
		aAt                                   int64
		aActor, aFrom, aTarget, aDetail, aWhy []byte
	)
	if err := each("audit log", `SELECT at, actor, role, via, source, action, target, detail, outcome FROM audit ORDER BY id`,
		[]any{&aAt, &aActor, &au.Role, &au.Via, &aFrom, &au.Action, &aTarget, &aDetail, &aWhy}, func() store.Record {
			rec := au
			rec.At, rec.Actor, rec.From, rec.Target, rec.Detail, rec.Outcome = fromNanos(aAt), string(aActor), string(aFrom), string(aTarget), string(aDetail), string(aWhy)
			return store.Record{Audit: &rec}
		}); err != nil {
		return err
	}
	rrows, err := tx.Query(ctx, `SELECT `+receiverColumns+` FROM receivers WHERE config IS NOT NULL ORDER BY id`)
	if err != nil {
		return fmt.Errorf("dump receivers: %w", err)
	}
	for rrows.Next() {
		r, err := scanReceiver(rrows)
		if err == nil {
			err = fn(store.Record{Receiver: &r})
		}
		if err != nil {
			rrows.Close()
			return fmt.Errorf("dump receivers: %w", err)
		}
	}
	if err := rrows.Err(); err != nil {
		return fmt.Errorf("dump receivers: %w", err)
	}

	var last int64
	if err := tx.QueryRow(ctx, `SELECT greatest((SELECT coalesce(max(id), 0) FROM events),
		(SELECT value FROM meta WHERE key = 'events_floor'))`).Scan(&last); err != nil {
		return fmt.Errorf("dump event mark: %w", err)
	}
	if err := fn(store.Record{Events: &store.EventMark{LastEventID: uint64(last)}}); err != nil {
		return fmt.Errorf("dump event mark: %w", err)
	}
	return nil
}

// Load stores the records next returns into this empty database, in one
// transaction; devices and reports go in with COPY. It holds the
// migration lock meanwhile, so a collector starting on the database waits
// for the load to finish, and locks the tables it fills against writes.
func (s *Store) Load(ctx context.Context, next func() (store.Record, bool, error)) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE tokens, devices, reports, pinned_eks, gateways, decisions, settings IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		var full bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM tokens)
			OR EXISTS (SELECT 1 FROM reports)`).Scan(&full); err != nil {
			return err
		}
		if full {
			return store.ErrNotEmpty
		}
		l := &loadReader{next: next}
		var mark uint64
		for {
			r, ok, err := l.read()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			switch {
			case r.Setting != nil:
				var got string
				if err := tx.QueryRow(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2)
					ON CONFLICT (key) DO UPDATE SET value = settings.value RETURNING value`, r.Setting.Key, r.Setting.Value).Scan(&got); err != nil {
					return fmt.Errorf("load setting %s: %w", r.Setting.Key, err)
				}
				if got != r.Setting.Value {
					return store.IdentityMismatch(r.Setting.Key, got, r.Setting.Value)
				}
			case r.Token != nil:
				t := r.Token
				if _, err := tx.Exec(ctx, `INSERT INTO tokens (hash, description, created_at, expires_at, uses, used, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
					t.Hash, t.Description, nanos(t.CreatedAt), nanos(t.ExpiresAt), int64(t.Uses), int64(t.Used), nanos(t.RevokedAt)); err != nil {
					return fmt.Errorf("load token: %w", err)
				}
			case r.PinnedEK != nil:
				e := r.PinnedEK
				if _, err := tx.Exec(ctx, `INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES ($1, $2, $3)
					ON CONFLICT (ek_sha256) DO NOTHING`, e.Hash, e.Description, nanos(e.CreatedAt)); err != nil {
					return fmt.Errorf("load pinned EK %s: %w", e.Hash, err)
				}
			case r.Gateway != nil:
				g := r.Gateway
				if _, err := tx.Exec(ctx, `INSERT INTO gateways (serial, name, issued_at, expires_at, revoked_at, revoke_reason)
					VALUES ($1, $2, $3, $4, $5, $6)`,
					g.Serial, g.Name, nanos(g.IssuedAt), nanos(g.ExpiresAt), nanos(g.RevokedAt), g.RevokeReason); err != nil {
					return fmt.Errorf("load gateway certificate %s: %w", g.Serial, err)
				}
			case r.Device != nil:
				l.unread(r)
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"id", "hostname", "platform", "identity",
					"identity_key", "assurance", "state", "state_reason", "enrolled_at", "cert_serial", "cert_key_sha256",
					"prev_cert_serial", "prev_cert_key_sha256", "ek_sha256", "stream_epoch", "last_seq", "last_digest", "last_seen", "tpm_clock", "tpm_reset_count",
					"tpm_restart_count", "reboots", "measured_boot"}, &copyRun{l: l, row: deviceRow}); err != nil {
					return fmt.Errorf("load devices: %w", err)
				}
			case r.Report != nil:
				l.unread(r)
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{"reports"}, []string{"device_id", "seq", "digest", "nonce",
					"body", "proof", "received_at"}, &copyRun{l: l, row: reportRow}); err != nil {
					return fmt.Errorf("load reports: %w", err)
				}
			case r.Decision != nil:
				d := r.Decision
				if _, err := tx.Exec(ctx, `INSERT INTO decisions (collector, seq, first_at, at, count, device, level, caller, allowed, score, state, detail)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
					d.Collector, int64(d.Seq), nanos(d.FirstAt), nanos(d.At), int64(d.Count), d.Device, d.Level, d.Caller,
					d.Allowed, int64(d.Score), d.State, blob(d.Detail)); err != nil {
					return fmt.Errorf("load decision %s/%d: %w", d.Collector, d.Seq, err)
				}
			case r.Events != nil:
				mark = max(mark, r.Events.LastEventID)
			case r.Standing != nil:
				if err := writeStanding(ctx, tx, r.Standing.DeviceID, r.Standing.Standing); err != nil {
					return fmt.Errorf("load standing of %s: %w", r.Standing.DeviceID, err)
				}
			case r.Audit != nil:
				if _, err := insertAudit(ctx, tx, *r.Audit); err != nil {
					return fmt.Errorf("load audit record: %w", err)
				}
			case r.DeviceUser != nil:
				u := r.DeviceUser
				if _, err := tx.Exec(ctx, `INSERT INTO device_users (device_id, email, issuer, subject, bound_at) VALUES ($1, $2, $3, $4, $5)`,
					u.DeviceID, u.Email, u.Issuer, u.Subject, nanos(u.BoundAt)); err != nil {
					return fmt.Errorf("load user of %s: %w", u.DeviceID, err)
				}
			case r.BrowserCert != nil:
				c := r.BrowserCert
				if _, err := tx.Exec(ctx, `INSERT INTO browser_certs (device_id, user_name, serial, key_sha256, issued_under, issued_under_key, issued_at, not_after)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
					c.DeviceID, c.User, c.Serial, blob(c.KeySHA256), c.IssuedUnder, blob(c.IssuedUnderKeySHA256), nanos(c.IssuedAt), nanos(c.NotAfter)); err != nil {
					return fmt.Errorf("load browser certificate of %s on %s: %w", c.User, c.DeviceID, err)
				}
			case r.SSFClient != nil:
				c := r.SSFClient
				if _, err := tx.Exec(ctx, `INSERT INTO ssf_clients (name, token_hash, audience, level, created_at) VALUES ($1, $2, $3, $4, $5)`,
					c.Name, blob(c.TokenHash), c.Audience, c.Level, nanos(c.CreatedAt)); err != nil {
					return fmt.Errorf("load SSF receiver %s: %w", c.Name, err)
				}
			case r.Receiver != nil:
				rc := r.Receiver
				if _, err := tx.Exec(ctx, `INSERT INTO receivers (id, kind, config, created_at, cursor) VALUES ($1, $2, $3, $4, 0)`,
					rc.ID, rc.Kind, rc.Config, nanos(rc.CreatedAt)); err != nil {
					return fmt.Errorf("load receiver %s: %w", rc.ID, err)
				}
			default:
				return errors.New("load: a record with nothing in it")
			}
		}
		// Each device's head is its report with its last_seq.
		if _, err := tx.Exec(ctx, `UPDATE devices d SET last_report = r.id FROM reports r
			WHERE r.device_id = d.id AND r.seq = d.last_seq AND d.last_digest IS NOT NULL`); err != nil {
			return fmt.Errorf("load: link the devices' head reports: %w", err)
		}
		// Event IDs continue above the source's: a gateway that watched
		// the old database must not take a new event for one it saw.
		if mark > 0 {
			if _, err := tx.Exec(ctx, `SELECT setval('events_id_seq', greatest($1,
					(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq)))`, int64(mark)); err != nil {
				return fmt.Errorf("load: continue event IDs: %w", err)
			}
			if _, err := tx.Exec(ctx, `UPDATE meta SET value = greatest(value, $1) WHERE key = 'events_floor'`, int64(mark)); err != nil {
				return fmt.Errorf("load: continue event IDs: %w", err)
			}
		}
		// The planner's statistics, for the first fleet scan.
		_, err := tx.Exec(ctx, `ANALYZE devices, reports`)
		return err
	})
	if err != nil {
		return fmt.Errorf("load database: %w", err)
	}
	return nil
}

// loadReader reads Load's records, one of which it can hold back for
// the next read: a run of devices or reports ends at the first record of
// another kind.
type loadReader struct {
	next func() (store.Record, bool, error)
	held *store.Record
	done bool
}

func (l *loadReader) read() (store.Record, bool, error) {
	if l.held != nil {
		r := *l.held
		l.held = nil
		return r, true, nil
	}
	if l.done {
		return store.Record{}, false, nil
	}
	r, ok, err := l.next()
	if err != nil || !ok {
		l.done = true
	}
	return r, ok, err
}

func (l *loadReader) unread(r store.Record) { l.held = &r }

// copyRun is the pgx.CopyFromSource of a run of records of one kind: row
// returns a record's values, or false for a record of another kind.
type copyRun struct {
	l    *loadReader
	row  func(store.Record) ([]any, bool)
	vals []any
	err  error
}

func (c *copyRun) Next() bool {
	r, ok, err := c.l.read()
	if err != nil {
		c.err = err
		return false
	}
	if !ok {
		return false
	}
	if c.vals, ok = c.row(r); !ok {
		c.l.unread(r)
		return false
	}
	return true
}

func (c *copyRun) Values() ([]any, error) { return c.vals, nil }
func (c *copyRun) Err() error             { return c.err }

// deviceRow is a device's row; a nil LastDigest (no report yet) and
// MeasuredBoot are NULL.
func deviceRow(r store.Record) ([]any, bool) {
	if r.Device == nil {
		return nil, false
	}
	d := r.Device
	return []any{d.ID, []byte(d.Hostname), []byte(d.Platform), d.Identity, blob(d.IdentityKey), d.Assurance, d.State,
		[]byte(d.StateReason), nanos(d.EnrolledAt), d.CertSerial, d.CertKeySHA256, d.PrevCertSerial, d.PrevCertKeySHA256,
		d.EKSHA256, int64(d.StreamEpoch),
		int64(d.LastSeq), d.LastDigest, nanos(d.LastSeen), int64(d.TPMClock.Clock), int64(d.TPMClock.ResetCount),
		int64(d.TPMClock.RestartCount), int64(d.Reboots), d.MeasuredBoot}, true
}

func reportRow(r store.Record) ([]any, bool) {
	if r.Report == nil {
		return nil, false
	}
	p := r.Report
	return []any{p.DeviceID, int64(p.Seq), blob(p.Digest), blob(p.Nonce), blob(p.Body), blob(p.Proof), nanos(p.ReceivedAt)}, true
}
