package postgres

// Migrations 2 and up: certificates bound to their keys (version 9 of
// the SQLite store), grace and enforcement, and what leaves Posture
// (versions 10 and 11).

// migration2: a device certificate counts only with the public key it
// was issued for: the SHA-256 of its SubjectPublicKeyInfo, beside its
// serial. NULL for certificates issued before, until the device's next
// call records it (store.Store.BindCertKey).
const migration2 = `
ALTER TABLE devices ADD COLUMN cert_key_sha256 bytea, ADD COLUMN prev_cert_key_sha256 bytea;
`

// migrationStandings (3): each device's standing under the policy (see
// store.Standing), as JSON bytes: since when each failing check fails,
// and the levels it meets. A device without a row has none of either.
const migrationStandings = `
CREATE TABLE standings (
	device_id text COLLATE "C" PRIMARY KEY,
	data      bytea NOT NULL
);
`

// migrationOutbox (4): the outbox and its receivers (see store.Receiver),
// leases that say which collector does what one at a time, devices bound
// to their users, Shared Signals receivers' API clients, and the public
// keys Security Event Tokens are signed with. Outbox sequence numbers
// come from an identity sequence and are taken under an advisory lock
// held to the commit (see writeOutbox), so that they commit in order.
const migrationOutbox = `
CREATE TABLE outbox (
	seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id        text NOT NULL,
	at        bigint NOT NULL,
	kind      text NOT NULL,
	device_id text COLLATE "C" NOT NULL,
	event_id  bigint NOT NULL,
	receiver  text NOT NULL,
	data      bytea NOT NULL
);
CREATE INDEX outbox_at ON outbox USING brin (at);

CREATE TABLE receivers (
	id            text PRIMARY KEY,
	kind          text NOT NULL,
	config        bytea,
	created_at    bigint NOT NULL,
	cursor        bigint NOT NULL,
	holder        text NOT NULL DEFAULT '',
	lease_until   bigint NOT NULL DEFAULT 0,
	delivered     bigint NOT NULL DEFAULT 0,
	delivered_at  bigint NOT NULL DEFAULT 0,
	failing_since bigint NOT NULL DEFAULT 0,
	attempts      bigint NOT NULL DEFAULT 0,
	last_error    text NOT NULL DEFAULT ''
);

CREATE TABLE leases (
	name   text PRIMARY KEY,
	holder text NOT NULL,
	until  bigint NOT NULL
);

CREATE TABLE device_users (
	device_id text COLLATE "C" PRIMARY KEY,
	email     text NOT NULL,
	issuer    text NOT NULL,
	subject   text NOT NULL,
	bound_at  bigint NOT NULL
);

CREATE TABLE ssf_clients (
	name       text PRIMARY KEY,
	token_hash bytea NOT NULL UNIQUE,
	audience   text NOT NULL,
	level      text NOT NULL,
	created_at bigint NOT NULL
);

CREATE TABLE signing_keys (
	kid        text PRIMARY KEY,
	jwk        bytea NOT NULL,
	created_at bigint NOT NULL
);
`

// migrationBrowserCerts (6): the newest browser certificate of each user
// of each device (see store.BrowserCert), with the serial and key hash of
// the device certificate it was issued under.
const migrationBrowserCerts = `
CREATE TABLE browser_certs (
	device_id        text NOT NULL,
	user_name        text NOT NULL,
	serial           text NOT NULL,
	key_sha256       bytea NOT NULL,
	issued_under     text NOT NULL,
	issued_under_key bytea NOT NULL,
	issued_at        bigint NOT NULL,
	not_after        bigint NOT NULL,
	PRIMARY KEY (device_id, user_name)
);
`
