package sqlite

// Migrations 9 and up: certificates bound to their keys, grace and
// enforcement, and what leaves Posture.

// migration9: a device certificate counts only with the public key it
// was issued for: the SHA-256 of its SubjectPublicKeyInfo, beside its
// serial. NULL for certificates issued before, until the device's next
// call records it (store.Store.BindCertKey).
const migration9 = `
ALTER TABLE devices ADD COLUMN cert_key_sha256 BLOB;
ALTER TABLE devices ADD COLUMN prev_cert_key_sha256 BLOB;
`

// migrationStandings (10): each device's standing under the policy (see
// store.Standing), as JSON: since when each failing check fails, and the
// levels it meets. A device without a row has none of either.
const migrationStandings = `
CREATE TABLE standings (
	device_id TEXT PRIMARY KEY,
	data      BLOB NOT NULL
) STRICT;
`

// migrationOutbox (11): the outbox and its receivers (see store.Receiver),
// leases that say which collector does what one at a time, devices bound
// to their users, Shared Signals receivers' API clients, and the public
// keys Security Event Tokens are signed with. Outbox sequence numbers are
// never given out again (AUTOINCREMENT), as event IDs.
const migrationOutbox = `
CREATE TABLE outbox (
	seq       INTEGER PRIMARY KEY AUTOINCREMENT,
	id        TEXT NOT NULL,
	at        INTEGER NOT NULL,
	kind      TEXT NOT NULL,
	device_id TEXT NOT NULL,
	event_id  INTEGER NOT NULL,
	receiver  TEXT NOT NULL,
	data      BLOB NOT NULL
) STRICT;
CREATE INDEX outbox_at ON outbox (at);

CREATE TABLE receivers (
	id            TEXT PRIMARY KEY,
	kind          TEXT NOT NULL,
	config        BLOB,
	created_at    INTEGER NOT NULL,
	cursor        INTEGER NOT NULL,
	holder        TEXT NOT NULL DEFAULT '',
	lease_until   INTEGER NOT NULL DEFAULT 0,
	delivered     INTEGER NOT NULL DEFAULT 0,
	delivered_at  INTEGER NOT NULL DEFAULT 0,
	failing_since INTEGER NOT NULL DEFAULT 0,
	attempts      INTEGER NOT NULL DEFAULT 0,
	last_error    TEXT NOT NULL DEFAULT ''
) STRICT;

CREATE TABLE leases (
	name   TEXT PRIMARY KEY,
	holder TEXT NOT NULL,
	until  INTEGER NOT NULL
) STRICT;

CREATE TABLE device_users (
	device_id TEXT PRIMARY KEY,
	email     TEXT NOT NULL,
	issuer    TEXT NOT NULL,
	subject   TEXT NOT NULL,
	bound_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE ssf_clients (
	name       TEXT PRIMARY KEY,
	token_hash BLOB NOT NULL UNIQUE,
	audience   TEXT NOT NULL,
	level      TEXT NOT NULL,
	created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE signing_keys (
	kid        TEXT PRIMARY KEY,
	jwk        BLOB NOT NULL,
	created_at INTEGER NOT NULL
) STRICT;
`

// migrationBrowserCerts (13): the newest browser certificate of each user
// of each device (see store.BrowserCert), with the serial and key hash of
// the device certificate it was issued under.
const migrationBrowserCerts = `
CREATE TABLE browser_certs (
	device_id        TEXT NOT NULL,
	user_name        TEXT NOT NULL,
	serial           TEXT NOT NULL,
	key_sha256       BLOB NOT NULL,
	issued_under     TEXT NOT NULL,
	issued_under_key BLOB NOT NULL,
	issued_at        INTEGER NOT NULL,
	not_after        INTEGER NOT NULL,
	PRIMARY KEY (device_id, user_name)
) STRICT;
`
