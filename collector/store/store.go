// Package store is the collector's storage contract: what it keeps in its
// database (enrollment tokens, devices, posture reports, gateways, saved
// decisions, the replicas sharing the database) and the change feed that
// keeps every collector's memory current.
//
// Two backends implement Store: store/sqlite (one file in the data
// directory, the default for one collector) and store/postgres (a database
// that several collectors share). store/storetest is the one contract
// suite both pass; no behaviour exists in one backend only.
//
// Every change that a collector keeps in memory is written together with
// an Event in the same transaction. The database issues event IDs; they
// only grow, are never reused, and are the revisions gateways resume their
// watch from. A change a collector makes and one another collector made
// reach memory the same way: by applying the event.
//
// This package does not import the wire contract (posturev1): states and
// assurances are stored as the numbers the contract gives them.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotFound is returned when the requested token, device or report does
	// not exist.
	ErrNotFound = errors.New("not found")
	// ErrTokenUnknown is returned by EnrollDevice when no token has the given
	// hash.
	ErrTokenUnknown = errors.New("enrollment token not recognised")
	// ErrTokenExpired is returned by EnrollDevice when the token's expiry has
	// passed.
	ErrTokenExpired = errors.New("enrollment token expired")
	// ErrTokenUsedUp is returned by EnrollDevice when the token has no uses
	// left.
	ErrTokenUsedUp = errors.New("enrollment token already used")
	// ErrTokenRevoked is returned by EnrollDevice when an admin revoked
	// the token, and by RevokeToken when it was revoked already.
	ErrTokenRevoked = errors.New("enrollment token revoked")
	// ErrDeviceRevoked is returned when an operation would change or
	// re-enroll a revoked device, or store its report; revocation is final.
	ErrDeviceRevoked = errors.New("device is revoked")
	// ErrIdentityKind is returned when a device would re-enroll with
	// another kind of identity (a software key for a TPM device, or the
	// other way round).
	ErrIdentityKind = errors.New("device enrolled with another kind of identity")
	// ErrConflict is returned by AppendReport when the device already has a
	// report with the same sequence number but a different digest: two
	// reports claim one place in the chain.
	ErrConflict = errors.New("a different report with this sequence number is already stored")
	// ErrChainBroken is returned by AppendReport when the report continues
	// the device's head sequence number but not its digest (prev_digest
	// names another report).
	ErrChainBroken = errors.New("the report does not continue the stored chain head")
	// ErrSequenceGap is returned by AppendReport when the report's sequence
	// number is more than one past the stored head.
	ErrSequenceGap = errors.New("the report skips ahead of the stored chain head")
	// ErrSuperseded is returned by AppendReport when the report came on a
	// report stream that is no longer the device's newest (see
	// OpenReportStream): another stream, on this collector or another,
	// opened since. Nothing is stored; the agent sends the report again on
	// its newest stream.
	ErrSuperseded = errors.New("a newer report stream of this device replaced this one")
	// ErrDeviceNotActive is returned by RenewCertificate for a suspect or
	// pending device.
	ErrDeviceNotActive = errors.New("device is not active")
	// ErrCertReplaced is returned by RenewCertificate when the certificate
	// the renewal was asked with is neither the device's certificate nor
	// the one it replaced: an enrollment or another renewal came first.
	ErrCertReplaced = errors.New("device certificate was replaced meanwhile")
	// ErrCertKey is returned by RenewCertificate and BindCertKey when a
	// certificate carries the serial of the device's certificate but
	// another public key than the one recorded for it: the collector did
	// not issue it.
	ErrCertKey = errors.New("the certificate holds another public key than the one its serial was issued for")
	// ErrNotPending reports an approval of a device that is not pending.
	ErrNotPending = errors.New("device is not pending approval")
	// ErrIdentityMismatch is returned by ClaimIdentity when the database
	// belongs to another collector CA or trust domain.
	ErrIdentityMismatch = errors.New("the database belongs to another collector CA or trust domain")
	// ErrNotEmpty is returned by Loader.Load into a database that already
	// holds devices, tokens or reports.
	ErrNotEmpty = errors.New("the database is not empty")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("store is closed")
)

// Device states as stored; the values match posturev1.DeviceState.
const (
	StateActive  int32 = 1
	StateSuspect int32 = 2
	StateRevoked int32 = 3
	StatePending int32 = 4
)

// Token is an enrollment token. Only the hash of its secret is stored.
type Token struct {
	Hash        []byte // SHA-256 of the token secret; the secret itself is never stored
	Description string
	CreatedAt   time.Time
	ExpiresAt   time.Time
	Uses        uint32 // how many enrollments it allows
	Used        uint32
	// RevokedAt is when an admin revoked the token; zero while it is not.
	// A revoked token enrolls no device.
	RevokedAt time.Time
}

// Device is an enrolled device and the head of its report chain.
type Device struct {
	ID          string
	Hostname    string
	Platform    string
	Identity    string // "software" or "tpm"
	IdentityKey []byte // PKIX DER of the software key, or the TPM AK's public area
	Assurance   int32  // posturev1.IdentityAssurance value
	State       int32  // posturev1.DeviceState value (StateActive …)
	StateReason string
	EnrolledAt  time.Time
	CertSerial  string // hex serial of the latest issued device certificate
	// CertKeySHA256 is the SHA-256 of that certificate's
	// SubjectPublicKeyInfo: a certificate counts only with both its serial
	// and its key. Nil for a certificate issued before keys were recorded
	// (schema version 9 of SQLite, 2 of PostgreSQL), until BindCertKey
	// records it.
	CertKeySHA256 []byte
	// PrevCertSerial is the serial of the certificate the latest renewal
	// replaced, which may still ask for a renewal; empty after enrollment.
	PrevCertSerial string
	// PrevCertKeySHA256 is CertKeySHA256 of that certificate; nil when
	// there is none, or its key was not recorded.
	PrevCertKeySHA256 []byte
	LastSeq           uint64
	LastDigest        []byte    // nil until the first report
	LastSeen          time.Time // zero until the first report
	EKSHA256          string    // hex SHA-256 of the TPM EK (PKIX DER); empty for software identities
	TPMClock          TPMClock  // clock info of the latest quote; zero for software identities
	Reboots           uint64    // TPM resets seen in quotes since enrollment
}

// Cert names an issued device certificate: its serial and the SHA-256 of
// its SubjectPublicKeyInfo.
type Cert struct {
	Serial    string // hex, lowercase, without leading zeros
	KeySHA256 []byte // 32 bytes
}

// Is says whether c is the certificate recorded with serial and key
// hash key: the same serial and, once a key hash is recorded, the same
// key hash.
func (c Cert) Is(serial string, key []byte) bool {
	return serial != "" && c.Serial == serial && (key == nil || bytes.Equal(c.KeySHA256, key))
}

// TPMClock is the clock information a TPM puts in every quote. ResetCount
// grows on every TPM reset (a reboot), RestartCount on every resume from
// hibernation, and Clock (milliseconds) never runs backwards on one TPM.
type TPMClock struct {
	Clock        uint64
	ResetCount   uint32
	RestartCount uint32
}

// Report is one stored posture report with its proof.
type Report struct {
	DeviceID   string
	Seq        uint64
	Digest     []byte
	Nonce      []byte
	Body       []byte // the PostureReport bytes exactly as signed
	Proof      []byte // the serialized proof (signature or quote)
	ReceivedAt time.Time
	// TPM, when set, is the verified clock info of the report's quote; it
	// becomes the device's TPMClock in the same transaction.
	TPM *TPMClock
	// Reboot counts one more TPM reset for the device.
	Reboot bool
	// MeasuredBoot, when set, is the collector's reading of the event log
	// the report's quote carried, as the collector encodes it; it becomes
	// the device's (FleetRow.MeasuredBoot) with the head. Nil when the
	// report carried no log, which leaves the device's reading as it was.
	MeasuredBoot []byte

	// Appending only: the chain head the report continues, and the report
	// stream it came on (OpenReportStream). Not read back.
	PrevDigest []byte
	Stream     uint64
}

// StreamHead is what OpenReportStream returns: the stream's number and the
// device's chain head as stored when it opened.
type StreamHead struct {
	Stream     uint64
	LastSeq    uint64
	LastDigest []byte // nil before the first report
}

// Gateway is a gateway certificate as issued.
type Gateway struct {
	Serial       string // hex
	Name         string // '' for a serial revoked without an issue record
	IssuedAt     time.Time
	ExpiresAt    time.Time
	RevokedAt    time.Time // zero while not revoked
	RevokeReason string
}

// Decision is a saved record of a collector's decision log: one access
// decision, or a run of identical ones made Count times from FirstAt to At.
type Decision struct {
	Seq         uint64 // the record's place in its collector's log; later records have higher ones
	FirstAt, At time.Time
	Count       uint64
	Device      string
	Level       string
	Caller      string
	Allowed     bool
	Score       uint32
	State       int32  // the device's state at the decision
	Detail      []byte // reasons and failed checks, as the collector encodes them
	// Announce asks SaveDecisions to write the decision's outbox message
	// (DecisionMessage) in the same transaction: set on a record's first
	// save when a receiver takes decisions. Not read back.
	Announce bool
}

// PruneProgress says how far one call of PruneReports got.
type PruneProgress struct {
	// Next is where to continue from in the next call of the same pass:
	// every report up to it was looked at.
	Next int64
	// Pruned is how many reports this call deleted.
	Pruned int
	// Done is true when the pass reached a report received at or after the
	// cutoff, or the end of what may be pruned.
	Done bool
}

// FleetRow is one device as a collector keeps it in memory, with its latest
// report. ScanFleet reuses it and its byte slices between calls: copy what
// is kept.
type FleetRow struct {
	ID          string
	Hostname    string
	TPM         bool   // identity is "tpm"; otherwise "software"
	IdentityKey []byte // PKIX DER, or the TPM AK's public area
	Assurance   int32
	State       int32
	StateReason string
	CertSerial  string // hex serial of the device certificate last issued
	// CertKeySHA256 is the SHA-256 of its SubjectPublicKeyInfo; nil when
	// not recorded (see Device.CertKeySHA256).
	CertKeySHA256 []byte
	// PrevCertSerial is the certificate the latest renewal replaced.
	PrevCertSerial string
	// PrevCertKeySHA256 is CertKeySHA256 of that certificate.
	PrevCertKeySHA256 []byte
	LastSeq           uint64
	LastDigest        []byte // nil until the first report
	TPMClock          TPMClock
	// MeasuredBoot is the reading of the newest event log among the
	// device's reports (Report.MeasuredBoot as stored), which need not be
	// the latest report's; nil when none carried one.
	MeasuredBoot []byte
	// Report is the latest report (the one LastSeq names): Seq, Body, Proof
	// and ReceivedAt are set. Nil before the first.
	Report *Report
}

// Replica is one collector process sharing the database, as it last said.
type Replica struct {
	ID        string // random, kept in the collector's data directory
	Name      string // the host's name, or --name
	Advertise string // the address agents and gateways dial
	Version   string
	StartedAt time.Time
	SeenAt    time.Time // its last heartbeat, by its clock
	Applied   uint64    // the newest event it had applied then
}

// Store is everything a collector keeps in its database. It is safe for
// concurrent use. Methods that change what collectors keep in memory
// return the Event they committed with the change; the caller applies it
// (as every collector applies the events it reads).
type Store interface {
	BrowserStore

	// CreateToken stores a new enrollment token. Hash must be set.
	CreateToken(ctx context.Context, t Token) error
	// Token returns the token with the given hash, or ErrNotFound.
	Token(ctx context.Context, hash []byte) (Token, error)
	// Tokens lists every token, the newest first (by CreatedAt, then by
	// hash), used up, expired and revoked ones included.
	Tokens(ctx context.Context) ([]Token, error)
	// RevokeToken revokes the token with the given hash at now, so that it
	// enrolls no device from then on, and returns it as stored. It fails
	// with ErrNotFound for an unknown token, and with ErrTokenRevoked
	// (returning the token, unchanged) for one revoked already.
	RevokeToken(ctx context.Context, hash []byte, now time.Time) (Token, error)

	// EnrollDevice consumes one use of the token with hash tokenHash and
	// stores d, in one transaction: on any error nothing changes.
	//
	// The token is checked first: ErrTokenUnknown, then ErrTokenExpired
	// when its expiry is at or before now, then ErrTokenUsedUp. A new
	// device is stored with an empty report chain, state active unless
	// d.State says otherwise, and EnrolledAt = now unless d.EnrolledAt is
	// set. If a device with d.ID exists, it is re-enrolled: its hostname,
	// platform, certificate (serial and key hash), enrollment time,
	// identity key and assurance are updated, the previous certificate is
	// forgotten, while its state and report chain are kept,
	// except that a new enrollment that earned only pending approval makes
	// an active device pending, and a new identity key starts the TPM
	// clock afresh (the next quote is compared with nothing: a new AK sees
	// the TPM's counters through another offset). Re-enrolling a revoked
	// device fails with ErrDeviceRevoked, with another kind of identity
	// with ErrIdentityKind; both leave the token unused. It returns the
	// device as stored and the EventEnrolled.
	EnrollDevice(ctx context.Context, tokenHash []byte, now time.Time, d Device) (Device, Event, error)
	// Device returns the device with the given ID, or ErrNotFound.
	Device(ctx context.Context, id string) (Device, error)
	// DevicesAfter returns up to limit devices whose IDs sort after after,
	// in ID order: one page of a listing. A negative limit means all.
	DevicesAfter(ctx context.Context, after string, limit int) ([]Device, error)
	// SetDeviceState sets the state of a device and the reason for it,
	// and returns the EventState. It returns ErrNotFound for an unknown
	// device and ErrDeviceRevoked for a revoked one, since revocation is
	// final.
	SetDeviceState(ctx context.Context, id string, state int32, reason string, now time.Time) (Event, error)
	// RenewCertificate makes issued the device's certificate, in place
	// of the certificate the renewal was asked with (askedWith). That is
	// either the device's certificate, which becomes the one that may
	// still ask for a renewal, or that one itself, whose renewal's answer
	// never reached the device; it stays. A certificate is askedWith when
	// its serial is, and so is its key hash once one is recorded
	// (Cert.Is). It fails with ErrNotFound, ErrDeviceRevoked,
	// ErrDeviceNotActive for a suspect or pending device, ErrCertKey when
	// askedWith has a recorded serial with another key, or
	// ErrCertReplaced when askedWith is neither, and then changes
	// nothing. It returns the device as stored and the EventRenewed.
	RenewCertificate(ctx context.Context, id string, askedWith, issued Cert, now time.Time) (Device, Event, error)
	// BindCertKey records the key hash of a device certificate issued
	// before keys were recorded: cert names the device's certificate or
	// the one its last renewal replaced by serial, and its key hash is
	// recorded for it when none is. It returns the device as stored and
	// the EventCertBound; a zero Event when that very key hash was
	// recorded already. It fails, changing nothing, with ErrNotFound,
	// ErrDeviceRevoked, ErrCertKey when another key hash is recorded for
	// the serial, or ErrCertReplaced when the serial is neither.
	BindCertKey(ctx context.Context, id string, cert Cert, now time.Time) (Device, Event, error)
	// ApproveDevice activates a pending device in one transaction: it pins
	// the device's EK hash, sets the state to active and the assurance to
	// the given value. It returns ErrNotFound or ErrNotPending without
	// changing anything, else the device as stored and the EventApproved.
	ApproveDevice(ctx context.Context, id string, assurance int32, description string, now time.Time) (Device, Event, error)
	// PinEKs pins EK public-key hashes (hex SHA-256 of PKIX DER): devices
	// that enroll with them are trusted as tpm_ek_pinned. It returns how
	// many were not pinned before.
	PinEKs(ctx context.Context, hashes []string, description string, now time.Time) (int, error)
	// EKPinned reports whether an EK hash is pinned.
	EKPinned(ctx context.Context, hash string) (bool, error)

	// OpenReportStream starts a report stream of a device: from now on
	// only reports appended with the returned stream number are stored,
	// whichever collector the stream reached, so that a report held back
	// on an older stream cannot land after the agent moved on. It returns
	// the device's chain head as stored, which the stream's first report
	// continues. ErrNotFound for an unknown device, ErrDeviceRevoked for a
	// revoked one.
	OpenReportStream(ctx context.Context, deviceID string) (StreamHead, error)
	// AppendReport stores r as its device's new chain head, and returns
	// once the transaction holding it committed (or failed): a nil error
	// means the report is durable. The head moves by compare-and-set: r
	// must come on the device's newest stream (r.Stream) and continue the
	// stored head (r.Seq one past it, r.PrevDigest its digest), so two
	// collectors never both accept divergent reports.
	//
	// It is idempotent on (device, seq): a report already stored with the
	// same digest returns a zero Event and nil, writing nothing. Otherwise
	// it fails, changing nothing, with ErrNotFound (unknown device),
	// ErrDeviceRevoked, ErrSuperseded (r.Stream is not the newest stream),
	// ErrConflict (another report holds r.Seq), ErrChainBroken (r.Seq
	// continues the head but r.PrevDigest is not its digest) or
	// ErrSequenceGap.
	AppendReport(ctx context.Context, r Report) (Event, error)
	// Reports returns up to limit reports of a device, newest (highest
	// sequence number) first; limit <= 0 means all. An unknown device has
	// no reports.
	Reports(ctx context.Context, deviceID string, limit int) ([]Report, error)
	// CountReports returns how many reports of a device are stored.
	CountReports(ctx context.Context, deviceID string) (int, error)
	// LatestReport returns the head report of a device, or ErrNotFound
	// when it has none.
	LatestReport(ctx context.Context, deviceID string) (Report, error)
	// PruneReports deletes reports received before cutoff, in the order
	// they were stored, from where the previous call of the same pass
	// stopped (from; 0 starts a pass), looking at limit reports at most.
	// Each call is one short transaction, so reports keep being stored in
	// between. It never deletes a device's head report.
	PruneReports(ctx context.Context, cutoff time.Time, from int64, limit int) (PruneProgress, error)
	// ScanFleet calls fn for every device and its latest report. It may
	// read with up to parts connections at once, each over its own share
	// of the devices, and calls fn from that share's goroutine with the
	// share's number (0 to parts-1), so fn must be safe for concurrent use
	// across parts. It stops at the first error.
	ScanFleet(ctx context.Context, parts int, fn func(part int, row *FleetRow) error) error

	// AddGateway records an issued gateway certificate.
	AddGateway(ctx context.Context, g Gateway) error
	// Gateways lists the recorded gateway certificates by name and issue
	// time.
	Gateways(ctx context.Context) ([]Gateway, error)
	// RevokeGateways revokes every unrevoked certificate of a gateway
	// name, or the one with a serial (recorded or not), and returns the
	// serials it revoked with the EventGatewayRevoked (a zero Event when
	// it revoked none). A name with no certificate returns ErrNotFound.
	RevokeGateways(ctx context.Context, name, serial, reason string, now time.Time) ([]string, Event, error)

	// LastEventID is the newest event ID committed; 0 for none.
	LastEventID(ctx context.Context) (uint64, error)
	// EventIDs returns up to limit IDs of committed events above after,
	// in order.
	EventIDs(ctx context.Context, after uint64, limit int) ([]uint64, error)
	// Events returns the committed events among ids, in ID order, with
	// the bodies and proofs of the reports they name (when still stored);
	// IDs not committed (yet) are left out.
	Events(ctx context.Context, ids []uint64) ([]Event, error)
	// PruneEvents deletes events committed before cutoff (by their At)
	// whose IDs are below below (the newest event every running collector
	// applied: none prunes what another still has to read), and returns
	// how many.
	PruneEvents(ctx context.Context, cutoff time.Time, below uint64) (int, error)
	// Wake receives, without blocking its sender, when events may have
	// been committed: by this process, or (where the database tells) by
	// another one. Pollers wait on it between polls.
	Wake() <-chan struct{}

	// SaveDecisions writes the decisions of one collector's log (by its
	// replica ID), replacing saved records with the same Seq (a run that
	// grew), and then deletes that collector's records older than its
	// newest keep. Either all of ds is saved or none of it.
	SaveDecisions(ctx context.Context, collector string, ds []Decision, keep int) error
	// Decisions returns a collector's newest limit saved records, oldest
	// first.
	Decisions(ctx context.Context, collector string, limit int) ([]Decision, error)

	// ClaimIdentity records the CA fingerprint and trust domain of the
	// collectors sharing the database, on first use, and fails with
	// ErrIdentityMismatch when another was recorded: every replica must
	// serve with the same CA. An empty caFingerprint only checks: it fails
	// when the database belongs to a CA already, and records nothing.
	ClaimIdentity(ctx context.Context, caFingerprint, trustDomain string) error
	// Heartbeat records what a replica says of itself (replacing what it
	// said before).
	Heartbeat(ctx context.Context, r Replica) error
	// Replicas lists every replica that has sent a heartbeat, by name.
	Replicas(ctx context.Context) ([]Replica, error)
	// ForgetReplica removes a replica's record (one that was retired).
	ForgetReplica(ctx context.Context, id string) error

	// RecordStanding replaces a device's recorded standing (see Standing)
	// by next, by compare-and-set: unless the stored standing is prev
	// (Standing.Equal), it fails with ErrStandingChanged and changes
	// nothing. A device that is not active is recorded without levels.
	// It returns the EventStanding, which carries next, and writes the
	// messages of what changed (OutboxOf, with reasons saying why the
	// failing checks fail) in the same transaction; recording what is
	// stored already returns a zero Event and writes nothing. ErrNotFound
	// for an unknown device.
	RecordStanding(ctx context.Context, id string, prev, next Standing, reasons map[string]string, now time.Time) (Event, error)
	// Standings calls fn with the recorded standing of every device that
	// has one (the others have the zero standing), by device ID. It stops
	// at the first error.
	Standings(ctx context.Context, fn func(id string, s Standing) error) error

	// AppendOutbox writes messages that no event makes (a verification one
	// receiver asked for), giving each a sequence number and an ID, and
	// returns them so.
	AppendOutbox(ctx context.Context, msgs []OutboxMessage) ([]OutboxMessage, error)
	// OutboxAfter returns up to limit messages with sequence numbers above
	// after, in order: those for every receiver and those for receiver
	// alone. Messages commit in the order of their sequence numbers, so
	// one that is missing now is never committed later.
	OutboxAfter(ctx context.Context, after uint64, receiver string, limit int) ([]OutboxMessage, error)
	// LastOutboxSeq is the newest sequence number given out; 0 for none.
	LastOutboxSeq(ctx context.Context) (uint64, error)
	// PruneOutbox deletes the messages every receiver's cursor has passed
	// (all of them when there is no receiver), and every message written
	// before cutoff, and returns how many.
	PruneOutbox(ctx context.Context, cutoff time.Time) (int, error)

	// AddReceiver records a receiver unless one with the ID is recorded,
	// and returns it as stored. A new one starts at the end of the
	// outbox, its cursor at LastOutboxSeq.
	AddReceiver(ctx context.Context, id, kind string, config []byte, now time.Time) (Receiver, error)
	// SetReceiverConfig replaces a receiver's settings; ErrNotFound for an
	// unknown receiver.
	SetReceiverConfig(ctx context.Context, id string, config []byte) error
	// DeleteReceiver forgets a receiver; ErrNotFound for an unknown one.
	DeleteReceiver(ctx context.Context, id string) error
	// Receiver returns one receiver, or ErrNotFound.
	Receiver(ctx context.Context, id string) (Receiver, error)
	// Receivers lists every receiver by ID.
	Receivers(ctx context.Context) ([]Receiver, error)
	// ClaimReceivers takes, for holder until until, the lease of every
	// receiver among ids whose lease no other holder has at now (or none
	// had), renews holder's own, and returns the receivers holder holds.
	// Collectors claiming at once never wait for each other: a receiver
	// another is claiming is left to it.
	ClaimReceivers(ctx context.Context, holder string, ids []string, until, now time.Time) ([]Receiver, error)
	// ReleaseReceivers ends holder's leases.
	ReleaseReceivers(ctx context.Context, holder string) error
	// ReceiverDelivered moves a receiver's cursor to through (never
	// back), counts delivered messages (the last at now, when there were
	// any) and clears its failures, provided holder holds its lease;
	// otherwise ErrLeaseLost, and nothing changes.
	ReceiverDelivered(ctx context.Context, id, holder string, through uint64, delivered int, now time.Time) error
	// ReceiverFailed records a failed attempt to deliver to a receiver,
	// provided holder holds its lease (ErrLeaseLost otherwise).
	ReceiverFailed(ctx context.Context, id, holder, why string, now time.Time) error

	// ClaimLease takes the named lease for holder until until when no
	// other holder's lease runs at now, or renews holder's, and says
	// whether holder holds it.
	ClaimLease(ctx context.Context, name, holder string, until, now time.Time) (bool, error)
	// ReleaseLease ends holder's named lease.
	ReleaseLease(ctx context.Context, name, holder string) error

	// BindDeviceUser binds a device to its user in place of any binding
	// (ErrNotFound for an unknown device).
	BindDeviceUser(ctx context.Context, u DeviceUser) error
	// UnbindDeviceUser removes a device's binding (ErrNotFound for none).
	UnbindDeviceUser(ctx context.Context, id string) error
	// DeviceUser returns a device's binding, or ErrNotFound.
	DeviceUser(ctx context.Context, id string) (DeviceUser, error)

	// AddSSFClient records a Shared Signals receiver's API client; a name
	// or token in use fails.
	AddSSFClient(ctx context.Context, c SSFClient) error
	// RemoveSSFClient forgets one (ErrNotFound for an unknown name).
	RemoveSSFClient(ctx context.Context, name string) error
	// SSFClients lists them by name.
	SSFClients(ctx context.Context) ([]SSFClient, error)
	// PublishSigningKey records a collector's public signing key (a KID
	// recorded already is kept as it was).
	PublishSigningKey(ctx context.Context, k SigningKey) error
	// SigningKeys lists the published keys, oldest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)

	// The console's sessions and sign-in links, and the audit log.
	ConsoleStore

	// Close stops accepting writes, waits until every write already under
	// way has committed or failed, and closes the database. Later calls
	// to any method return ErrClosed; a second Close returns nil.
	Close() error
}

// IdentityMismatch is the ErrIdentityMismatch of a setting (ca_fingerprint,
// trust_domain) that was recorded as got and claimed as want.
func IdentityMismatch(setting, got, want string) error {
	switch setting {
	case "ca_fingerprint":
		if want == "" {
			return fmt.Errorf("%w: it belongs to collectors with CA fingerprint %s", ErrIdentityMismatch, got)
		}
		return fmt.Errorf("%w: it was first used by collectors with CA fingerprint %s, and this collector's CA is %s; give every collector sharing a database the same CA (copy ca.crt and ca.key from a running collector's data directory)", ErrIdentityMismatch, got, want)
	case "trust_domain":
		return fmt.Errorf("%w: it was first used with trust domain %q, and this collector runs %q; start it with --trust-domain %s", ErrIdentityMismatch, got, want, got)
	}
	return fmt.Errorf("%w: %s is %q, not %q", ErrIdentityMismatch, setting, got, want)
}
