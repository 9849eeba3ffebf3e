package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// migrations[i] moves the schema from version i to version i+1. Append new
// steps; never edit a released one, since databases in the field already ran it.
var migrations = []string{
	`
CREATE TABLE tokens (
	hash        BLOB PRIMARY KEY,
	description TEXT NOT NULL,
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL,
	uses        INTEGER NOT NULL CHECK (uses >= 0),
	used        INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0)
) STRICT;

CREATE TABLE devices (
	id           TEXT PRIMARY KEY,
	hostname     TEXT NOT NULL,
	platform     TEXT NOT NULL,
	identity     TEXT NOT NULL,
	identity_key BLOB NOT NULL,
	assurance    INTEGER NOT NULL,
	state        INTEGER NOT NULL,
	state_reason TEXT NOT NULL,
	enrolled_at  INTEGER NOT NULL,
	cert_serial  TEXT NOT NULL,
	last_seq     INTEGER NOT NULL DEFAULT 0,
	last_digest  BLOB,                       -- NULL until the first report
	last_seen    INTEGER NOT NULL DEFAULT 0  -- 0 until the first report
) STRICT;

CREATE TABLE reports (
	device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	seq         INTEGER NOT NULL,
	digest      BLOB NOT NULL,
	nonce       BLOB NOT NULL,
	body        BLOB NOT NULL,
	proof       BLOB NOT NULL,
	received_at INTEGER NOT NULL,
	PRIMARY KEY (device_id, seq)
) STRICT;
`,
	`
ALTER TABLE devices ADD COLUMN ek_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN tpm_clock INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN tpm_reset_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN tpm_restart_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN reboots INTEGER NOT NULL DEFAULT 0;

CREATE TABLE pinned_eks (
	ek_sha256   TEXT PRIMARY KEY,
	description TEXT NOT NULL,
	created_at  INTEGER NOT NULL
) STRICT;
`,
	// Reports become a log in arrival order, so that storing one appends
	// to the table's last page instead of writing into a page of its
	// device's; report_history, the per-device index of the log, is filled
	// in batches (see history.go). devices.last_report names the head.
	`
CREATE TABLE report_log (
	id          INTEGER PRIMARY KEY,
	device_id   TEXT NOT NULL,
	seq         INTEGER NOT NULL,
	digest      BLOB NOT NULL,
	nonce       BLOB NOT NULL,
	body        BLOB NOT NULL,
	proof       BLOB NOT NULL,
	received_at INTEGER NOT NULL
) STRICT;
INSERT INTO report_log (device_id, seq, digest, nonce, body, proof, received_at)
	SELECT device_id, seq, digest, nonce, body, proof, received_at FROM reports ORDER BY received_at, device_id, seq;
DROP TABLE reports;
ALTER TABLE report_log RENAME TO reports;

CREATE TABLE report_history (
	device_id TEXT NOT NULL,
	seq       INTEGER NOT NULL,
	report_id INTEGER NOT NULL,
	PRIMARY KEY (device_id, seq)
) STRICT, WITHOUT ROWID;
INSERT INTO report_history (device_id, seq, report_id) SELECT device_id, seq, id FROM reports;
INSERT INTO meta (key, value) VALUES ('history_through', (SELECT coalesce(max(id), 0) FROM reports));

ALTER TABLE devices ADD COLUMN last_report INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET last_report = coalesce((SELECT report_id FROM report_history h
	WHERE h.device_id = devices.id AND h.seq = devices.last_seq), 0)
	WHERE last_digest IS NOT NULL;
`,
	// The certificate a renewal replaced may ask for a renewal again, in
	// case the new one never reached the device.
	`
ALTER TABLE devices ADD COLUMN prev_cert_serial TEXT NOT NULL DEFAULT '';
`,
	// A TPM agent sends its event log about once per boot, not with every
	// quote; the collector's reading of the last log it replayed stays
	// with the device, so that a head report without a log still has one
	// at start-up. NULL until a report with a log.
	`
ALTER TABLE devices ADD COLUMN measured_boot BLOB;
`,
	// store.Gateway certificates as issued, so that they can be listed and
	// revoked; a serial revoked without an issue record has name ''.
	`
CREATE TABLE gateways (
	serial        TEXT PRIMARY KEY,
	name          TEXT NOT NULL,
	issued_at     INTEGER NOT NULL,
	expires_at    INTEGER NOT NULL,
	revoked_at    INTEGER NOT NULL DEFAULT 0,
	revoke_reason TEXT NOT NULL DEFAULT ''
) STRICT;
`,
	// Access decisions outlive a restart: the collector saves its decision
	// log here (the newest records, by seq) and reloads it at start-up.
	// detail holds the reasons and failed checks, encoded by the collector.
	`
CREATE TABLE decisions (
	seq      INTEGER PRIMARY KEY,
	first_at INTEGER NOT NULL,
	at       INTEGER NOT NULL,
	count    INTEGER NOT NULL,
	device   TEXT NOT NULL,
	level    TEXT NOT NULL,
	caller   TEXT NOT NULL,
	allowed  INTEGER NOT NULL,
	score    INTEGER NOT NULL,
	state    INTEGER NOT NULL,
	detail   BLOB NOT NULL
) STRICT;
`,
	// Several collectors: every change is recorded with an event (its ID
	// issued here, never reused: AUTOINCREMENT) that the collector applies
	// to its memory, and that is the revision gateways resume their watch
	// from; revisions continue above those given out before. A device's
	// report streams are numbered, so that only its newest stores reports.
	// Decision logs are kept per collector (replica). Replicas say what
	// they are in replicas; settings hold the CA and trust domain the
	// database belongs to.
	`
CREATE TABLE events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	at        INTEGER NOT NULL,
	kind      TEXT NOT NULL,
	device_id TEXT NOT NULL,
	report_id INTEGER,
	data      BLOB NOT NULL
) STRICT;
CREATE INDEX events_at ON events (at);
INSERT INTO sqlite_sequence (name, seq) SELECT 'events', value + (1 << 40) FROM meta WHERE key = 'watch_base';
DELETE FROM meta WHERE key = 'watch_base';

ALTER TABLE devices ADD COLUMN stream_epoch INTEGER NOT NULL DEFAULT 0;

CREATE TABLE decisions_by_collector (
	collector TEXT NOT NULL,
	seq       INTEGER NOT NULL,
	first_at  INTEGER NOT NULL,
	at        INTEGER NOT NULL,
	count     INTEGER NOT NULL,
	device    TEXT NOT NULL,
	level     TEXT NOT NULL,
	caller    TEXT NOT NULL,
	allowed   INTEGER NOT NULL,
	score     INTEGER NOT NULL,
	state     INTEGER NOT NULL,
	detail    BLOB NOT NULL,
	PRIMARY KEY (collector, seq)
) STRICT;
INSERT INTO decisions_by_collector SELECT 'local', seq, first_at, at, count, device, level, caller, allowed, score, state, detail FROM decisions;
DROP TABLE decisions;
ALTER TABLE decisions_by_collector RENAME TO decisions;

CREATE TABLE replicas (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL,
	advertise  TEXT NOT NULL,
	version    TEXT NOT NULL,
	started_at INTEGER NOT NULL,
	seen_at    INTEGER NOT NULL,
	applied    INTEGER NOT NULL
) STRICT;

CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
`,
	migration9,
	migrationStandings,
	migrationOutbox,
	migrationConsole,
	migrationBrowserCerts,
}

// initialize configures a new database file and brings the schema up to
// date. It runs on the writer before any other connection is opened.
func initialize(w *sql.DB) error {
	// page_size must precede journal_mode: switching to WAL writes the
	// database header, after which the page size is fixed.
	if _, err := w.Exec(fmt.Sprintf("PRAGMA page_size = %d", pageSize)); err != nil {
		return fmt.Errorf("set page size: %w", err)
	}
	var mode string
	if err := w.QueryRow("PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return fmt.Errorf("enable WAL: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("enable WAL: journal mode is %q; the database must be on a local file system", mode)
	}
	if err := migrate(w); err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	return nil
}

// migrate applies the missing migrations in one transaction, so a failed
// upgrade leaves the database at its previous version.
func migrate(w *sql.DB) (err error) {
	tx, err := w.Begin()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()

	if _, err := tx.Exec(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT`); err != nil {
		return err
	}
	var version int
	err = tx.QueryRow(`SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this collector supports (%d); run a newer collector or restore a backup", version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		if _, err := tx.Exec(migrations[v]); err != nil {
			return fmt.Errorf("to version %d: %w", v+1, err)
		}
	}
	if _, err := tx.Exec(`INSERT INTO meta (key, value) VALUES ('schema_version', ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, len(migrations)); err != nil {
		return err
	}
	return tx.Commit()
}
