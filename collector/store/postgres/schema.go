package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations[i] moves the schema from version i to version i+1. Append new
// steps; never edit a released one, since databases in the field already
// ran it.
//
// Times are Unix nanoseconds in BIGINT columns, as in the SQLite store, so
// that both backends keep them exactly (timestamptz keeps microseconds).
// Device IDs sort by their bytes (COLLATE "C"), as in SQLite, whatever the
// database's collation, so that listings page alike in both. Text that
// devices send (hostname, platform) and state reasons, which may
// quote it, are bytea: text columns refuse NUL and bytes that are not
// UTF-8, which the store must keep as it got them.
var migrations = []string{
	`
CREATE TABLE tokens (
	hash        bytea PRIMARY KEY,
	description text NOT NULL,
	created_at  bigint NOT NULL,
	expires_at  bigint NOT NULL,
	uses        bigint NOT NULL CHECK (uses >= 0),
	used        bigint NOT NULL DEFAULT 0 CHECK (used >= 0)
);

-- scan_id splits the table into ranges for ScanFleet's parallel parts; it
-- never changes, so an update cannot move a device from one part into
-- another. last_report is the head report's id (NULL before the first),
-- stream_epoch the device's newest report stream. Free space in each page
-- lets the head's frequent updates stay on their page (HOT updates).
CREATE TABLE devices (
	id                text COLLATE "C" PRIMARY KEY,
	scan_id           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
	hostname          bytea NOT NULL,
	platform          bytea NOT NULL,
	identity          text NOT NULL,
	identity_key      bytea NOT NULL,
	assurance         integer NOT NULL,
	state             integer NOT NULL,
	state_reason      bytea NOT NULL,
	enrolled_at       bigint NOT NULL,
	cert_serial       text NOT NULL,
	prev_cert_serial  text NOT NULL DEFAULT '',
	ek_sha256         text NOT NULL DEFAULT '',
	stream_epoch      bigint NOT NULL DEFAULT 0,
	last_seq          bigint NOT NULL DEFAULT 0,
	last_digest       bytea,
	last_seen         bigint NOT NULL DEFAULT 0,
	last_report       bigint,
	tpm_clock         bigint NOT NULL DEFAULT 0,
	tpm_reset_count   bigint NOT NULL DEFAULT 0,
	tpm_restart_count bigint NOT NULL DEFAULT 0,
	reboots           bigint NOT NULL DEFAULT 0,
	measured_boot     bytea
) WITH (fillfactor = 70);

-- Reports in arrival order: pruning walks the primary key from the
-- oldest, so received_at needs no index of its own.
CREATE TABLE reports (
	id          bigserial PRIMARY KEY,
	device_id   text COLLATE "C" NOT NULL,
	seq         bigint NOT NULL,
	digest      bytea NOT NULL,
	nonce       bytea NOT NULL,
	body        bytea NOT NULL,
	proof       bytea NOT NULL,
	received_at bigint NOT NULL,
	UNIQUE (device_id, seq)
);

CREATE TABLE pinned_eks (
	ek_sha256   text PRIMARY KEY,
	description text NOT NULL,
	created_at  bigint NOT NULL
);

CREATE TABLE gateways (
	serial        text PRIMARY KEY,
	name          text NOT NULL,
	issued_at     bigint NOT NULL,
	expires_at    bigint NOT NULL,
	revoked_at    bigint NOT NULL DEFAULT 0,
	revoke_reason text NOT NULL DEFAULT ''
);

CREATE TABLE decisions (
	collector text NOT NULL,
	seq       bigint NOT NULL,
	first_at  bigint NOT NULL,
	at        bigint NOT NULL,
	count     bigint NOT NULL,
	device    text NOT NULL,
	level     text NOT NULL,
	caller    text NOT NULL,
	allowed   boolean NOT NULL,
	score     bigint NOT NULL,
	state     integer NOT NULL,
	detail    bytea NOT NULL,
	PRIMARY KEY (collector, seq)
);

CREATE TABLE replicas (
	id         text PRIMARY KEY,
	name       text NOT NULL,
	advertise  text NOT NULL,
	version    text NOT NULL,
	started_at bigint NOT NULL,
	seen_at    bigint NOT NULL,
	applied    bigint NOT NULL
);

CREATE TABLE settings (
	key   text PRIMARY KEY,
	value text NOT NULL
);

-- Event IDs come from an identity sequence, which never gives a number
-- out twice. data is store.EncodeEventData's JSON, kept as bytes: jsonb
-- would refuse the \u0000 that a hostile hostname encodes to.
CREATE TABLE events (
	id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at        bigint NOT NULL,
	kind      text NOT NULL,
	device_id text COLLATE "C" NOT NULL,
	report_id bigint,
	data      bytea NOT NULL
);
-- Pruning deletes by time, and events arrive in time order: a BRIN
-- index finds them at a fraction of a btree's cost per insert.
CREATE INDEX events_at ON events USING brin (at);

-- The highest event ID pruned or loaded from another database: the floor
-- of LastEventID once the events table no longer holds it.
INSERT INTO meta (key, value) VALUES ('events_floor', 0);
`,
	migration2,
	migrationStandings,
	migrationOutbox,
	migrationConsole,
	migrationBrowserCerts,
}

// migrationLock is the advisory lock key that serializes schema
// migrations of collectors starting at once: "posture" in ASCII.
const migrationLock = 0x706f7374757265

// migrate applies the missing migrations in one transaction, holding an
// advisory lock so that collectors starting together migrate one after
// the other (the second finds the work done); a failed upgrade leaves the
// database at its previous version.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
			return fmt.Errorf("lock the schema for migration: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL)`); err != nil {
			return fmt.Errorf("create the meta table (the user needs CREATE on the database's schema): %w", err)
		}
		var version int
		err := tx.QueryRow(ctx, `SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read the schema version: %w", err)
		}
		if version > len(migrations) {
			return fmt.Errorf("the database schema is at version %d, newer than this collector supports (%d): a newer collector upgraded it; run that version or newer", version, len(migrations))
		}
		for v := version; v < len(migrations); v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrate the schema to version %d: %w", v+1, err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ('schema_version', $1)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, len(migrations)); err != nil {
			return fmt.Errorf("record the schema version: %w", err)
		}
		return nil
	})
}
