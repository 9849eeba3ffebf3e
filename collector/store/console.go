package store

import (
	"context"
	"errors"
	"time"
)

// ErrLinkUsed is returned by UseSignInLink for a link that was used
// already; ErrTokenExpired for one whose time ran out, ErrNotFound for one
// never made.
var ErrLinkUsed = errors.New("sign-in link already used")

// AuditRecord is one entry of the audit log: an admin action (a
// revocation, a token made, a policy reloaded …) or a sign-in to the
// console, whoever made it and however.
type AuditRecord struct {
	ID     uint64    // issued by the database; later records have higher ones
	At     time.Time // when the action was done
	Actor  string    // who: the person signed in to the console, or "local admin"
	Role   string    // the actor's role: "admin" or "viewer"
	Via    string    // how: "console", "admin socket"
	From   string    // where from: the browser's address, or the socket
	Action string    // what, as a command names it: "devices revoke", "console sign-in" …
	Target string    // what it was done to: a device ID, a gateway name; may be empty
	Detail string    // the action's arguments worth keeping (a reason, a TTL)
	// Outcome is empty when the action was done, otherwise why it was
	// refused or failed.
	Outcome string
}

// AuditQuery selects audit records, newest first.
type AuditQuery struct {
	// Before, when not 0, lists only records with lower IDs: the next
	// page after a listing that ended at Before.
	Before uint64
	// Since, when set, lists only records at or after it.
	Since time.Time
	// Actor and Target, when set, list only records of that actor, or
	// done to that target.
	Actor, Target string
	// Limit bounds how many; at most MaxAuditListed, 0 means 100.
	Limit int
}

// MaxAuditListed is the most audit records one Audit call returns.
const MaxAuditListed = 10000

// Session is a person signed in to the console. Only the SHA-256 of the
// session's secret (which the browser holds in its cookie) is stored.
type Session struct {
	Hash      []byte // SHA-256 of the session cookie's secret
	Subject   string // who, as the identity provider names them ("issuer#sub"), or the sign-in link's
	Name      string // who, as shown: an email address or a name
	Role      string // "admin" or "viewer"
	From      string // the address the session was opened from
	CreatedAt time.Time
	ExpiresAt time.Time
}

// SignInLink is a one-time console sign-in link (posture-collector
// console login): only the SHA-256 of its secret is stored.
type SignInLink struct {
	Hash      []byte // SHA-256 of the link's secret
	Name      string // the name the session it opens carries
	Role      string // the role the session it opens carries
	CreatedBy string // who asked for it
	CreatedAt time.Time
	ExpiresAt time.Time
}

// ConsoleStore is what the admin console and the audit log keep in the
// database, so that every collector sharing it shares them: a session
// opened on one collector is good on all, and a sign-out ends it on all.
type ConsoleStore interface {
	// AppendAudit stores an audit record and returns its ID. A.ID is
	// ignored.
	AppendAudit(ctx context.Context, a AuditRecord) (uint64, error)
	// Audit lists audit records, newest first (AuditQuery).
	Audit(ctx context.Context, q AuditQuery) ([]AuditRecord, error)

	// CreateSession stores a session. Hash must be set and new.
	CreateSession(ctx context.Context, s Session) error
	// Session returns the session with the given hash while it lasts
	// (now before its ExpiresAt), otherwise ErrNotFound.
	Session(ctx context.Context, hash []byte, now time.Time) (Session, error)
	// DeleteSession ends a session (signing out); ending one that does not
	// exist is no error.
	DeleteSession(ctx context.Context, hash []byte) error

	// CreateSignInLink stores a one-time sign-in link. Hash must be set
	// and new.
	CreateSignInLink(ctx context.Context, l SignInLink) error
	// UseSignInLink marks the link with the given hash used and returns
	// it, in one transaction: a link opens one session only. It fails
	// with ErrNotFound (never made), ErrLinkUsed, or ErrTokenExpired (at
	// or after its ExpiresAt), changing nothing.
	UseSignInLink(ctx context.Context, hash []byte, now time.Time) (SignInLink, error)

	// SampleReports returns up to n (at least 2) of a device's stored
	// reports, oldest first, spread evenly over its sequence numbers from
	// the oldest stored to the latest, both included: every report when
	// the device has at most n. Reports missing from the spread (pruned,
	// or never stored) are left out, so there may be fewer. It reads a
	// bounded number of reports however long the device's history is: the
	// console's score chart draws from it.
	SampleReports(ctx context.Context, deviceID string, n int) ([]Report, error)

	// PruneConsole deletes sessions and sign-in links that expired before
	// now, and audit records older than auditBefore (the zero time keeps
	// them all), and returns how many rows it deleted.
	PruneConsole(ctx context.Context, now, auditBefore time.Time) (int, error)
}

// CheckSignInLink is the rule both backends apply, inside the transaction
// that would use the link l (used says whether it was used before): a link
// opens one session, before it expires.
func CheckSignInLink(l SignInLink, used bool, now time.Time) error {
	switch {
	case used:
		return ErrLinkUsed
	case !now.Before(l.ExpiresAt):
		return ErrTokenExpired
	}
	return nil
}

// SampleSeqs picks up to n (at least 2) sequence numbers spread evenly
// from first to last, both included, in order: SampleReports' rule.
func SampleSeqs(first, last uint64, n int) []uint64 {
	n = max(n, 2)
	if last < first {
		return nil
	}
	span := last - first
	if span < uint64(n) {
		seqs := make([]uint64, 0, span+1)
		for s := first; s <= last; s++ {
			seqs = append(seqs, s)
		}
		return seqs
	}
	seqs := make([]uint64, n)
	for i := range n {
		// first + span*i/(n-1), without overflowing span*i.
		q, r := span/uint64(n-1), span%uint64(n-1)
		seqs[i] = first + q*uint64(i) + r*uint64(i)/uint64(n-1)
	}
	return seqs
}
