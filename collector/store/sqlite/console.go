package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// migrationConsole (schema version 12) holds the audit log, the
// console's sessions and its one-time sign-in links, and when an admin
// revoked an enrollment token (0: not revoked).
const migrationConsole = `
ALTER TABLE tokens ADD COLUMN revoked_at INTEGER NOT NULL DEFAULT 0;

CREATE TABLE audit (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	at      INTEGER NOT NULL,
	actor   TEXT NOT NULL,
	role    TEXT NOT NULL,
	via     TEXT NOT NULL,
	source  TEXT NOT NULL,
	action  TEXT NOT NULL,
	target  TEXT NOT NULL,
	detail  TEXT NOT NULL,
	outcome TEXT NOT NULL
) STRICT;
CREATE INDEX audit_at ON audit (at);

CREATE TABLE console_sessions (
	hash       BLOB PRIMARY KEY,
	subject    TEXT NOT NULL,
	name       TEXT NOT NULL,
	role       TEXT NOT NULL,
	source     TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE console_links (
	hash       BLOB PRIMARY KEY,
	name       TEXT NOT NULL,
	role       TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER NOT NULL DEFAULT 0
) STRICT;
`

// AppendAudit stores an audit record and returns its ID.
func (s *Store) AppendAudit(ctx context.Context, a store.AuditRecord) (uint64, error) {
	var id uint64
	err := s.submit(ctx, func(tx *sql.Tx) (err error) {
		id, err = insertAudit(tx, a)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("record audit entry: %w", err)
	}
	return id, nil
}

// insertAudit writes an audit record (AppendAudit, Load) and returns the
// ID the database gave it.
func insertAudit(tx *sql.Tx, a store.AuditRecord) (uint64, error) {
	var id int64
	err := tx.QueryRow(`INSERT INTO audit (at, actor, role, via, source, action, target, detail, outcome)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		nanos(a.At), a.Actor, a.Role, a.Via, a.From, a.Action, a.Target, a.Detail, a.Outcome).Scan(&id)
	return uint64(id), err
}

// Audit lists audit records, newest first.
func (s *Store) Audit(ctx context.Context, q store.AuditQuery) ([]store.AuditRecord, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	where, args := []string{"1"}, []any{}
	if q.Before != 0 {
		where, args = append(where, "id < ?"), append(args, int64(min(q.Before, 1<<63-1)))
	}
	if !q.Since.IsZero() {
		where, args = append(where, "at >= ?"), append(args, nanos(q.Since))
	}
	if q.Actor != "" {
		where, args = append(where, "actor = ?"), append(args, q.Actor)
	}
	if q.Target != "" {
		where, args = append(where, "target = ?"), append(args, q.Target)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT id, at, actor, role, via, source, action, target, detail, outcome
		FROM audit WHERE `+strings.Join(where, " AND ")+` ORDER BY id DESC LIMIT ?`, append(args, auditLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("list audit entries: %w", err)
	}
	defer rows.Close()
	var out []store.AuditRecord
	for rows.Next() {
		var (
			a      store.AuditRecord
			id, at int64
		)
		if err := rows.Scan(&id, &at, &a.Actor, &a.Role, &a.Via, &a.From, &a.Action, &a.Target, &a.Detail, &a.Outcome); err != nil {
			return nil, fmt.Errorf("list audit entries: %w", err)
		}
		a.ID, a.At = uint64(id), fromNanos(at)
		out = append(out, a)
	}
	return out, rows.Err()
}

// auditLimit is the LIMIT of an audit listing.
func auditLimit(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > store.MaxAuditListed:
		return store.MaxAuditListed
	}
	return n
}

// CreateSession stores a console session.
func (s *Store) CreateSession(ctx context.Context, se store.Session) error {
	if len(se.Hash) == 0 {
		return errors.New("create session: no hash")
	}
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO console_sessions (hash, subject, name, role, source, created_at, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, se.Hash, se.Subject, se.Name, se.Role, se.From, nanos(se.CreatedAt), nanos(se.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// Session returns the session with the given hash while it lasts.
func (s *Store) Session(ctx context.Context, hash []byte, now time.Time) (store.Session, error) {
	if err := s.readable(); err != nil {
		return store.Session{}, err
	}
	se := store.Session{Hash: hash}
	var created, expires int64
	err := s.r.QueryRowContext(ctx, `SELECT subject, name, role, source, created_at, expires_at FROM console_sessions
		WHERE hash = ? AND expires_at > ?`, blob(hash), nanos(now)).Scan(&se.Subject, &se.Name, &se.Role, &se.From, &created, &expires)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.Session{}, store.ErrNotFound
	case err != nil:
		return store.Session{}, fmt.Errorf("read session: %w", err)
	}
	se.CreatedAt, se.ExpiresAt = fromNanos(created), fromNanos(expires)
	return se, nil
}

// DeleteSession ends a session.
func (s *Store) DeleteSession(ctx context.Context, hash []byte) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`DELETE FROM console_sessions WHERE hash = ?`, blob(hash))
		return err
	})
	if err != nil {
		return fmt.Errorf("end session: %w", err)
	}
	return nil
}

// CreateSignInLink stores a one-time sign-in link.
func (s *Store) CreateSignInLink(ctx context.Context, l store.SignInLink) error {
	if len(l.Hash) == 0 {
		return errors.New("create sign-in link: no hash")
	}
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO console_links (hash, name, role, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			l.Hash, l.Name, l.Role, l.CreatedBy, nanos(l.CreatedAt), nanos(l.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("create sign-in link: %w", err)
	}
	return nil
}

// UseSignInLink marks a sign-in link used and returns it.
func (s *Store) UseSignInLink(ctx context.Context, hash []byte, now time.Time) (store.SignInLink, error) {
	var l store.SignInLink
	err := s.submit(ctx, func(tx *sql.Tx) error {
		l = store.SignInLink{Hash: hash}
		var created, expires, used int64
		err := tx.QueryRow(`SELECT name, role, created_by, created_at, expires_at, used_at FROM console_links WHERE hash = ?`, blob(hash)).
			Scan(&l.Name, &l.Role, &l.CreatedBy, &created, &expires, &used)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		}
		l.CreatedAt, l.ExpiresAt = fromNanos(created), fromNanos(expires)
		if err := store.CheckSignInLink(l, used != 0, now); err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE console_links SET used_at = ? WHERE hash = ?`, max(nanos(now), 1), blob(hash))
		return err
	})
	if err != nil {
		return store.SignInLink{}, fmt.Errorf("use sign-in link: %w", err)
	}
	return l, nil
}

// PruneConsole deletes expired sessions and links, and old audit records.
func (s *Store) PruneConsole(ctx context.Context, now, auditBefore time.Time) (int, error) {
	var n int64
	err := s.submit(ctx, func(tx *sql.Tx) error {
		n = 0
		for _, q := range []struct {
			sql string
			arg int64
		}{
			{`DELETE FROM console_sessions WHERE expires_at <= ?`, nanos(now)},
			{`DELETE FROM console_links WHERE expires_at <= ?`, nanos(now)},
			{`DELETE FROM audit WHERE at < ?`, nanos(auditBefore)},
		} {
			res, err := tx.Exec(q.sql, q.arg)
			if err != nil {
				return err
			}
			d, _ := res.RowsAffected()
			n += d
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune console sessions and audit: %w", err)
	}
	return int(n), nil
}

// SampleReports returns up to n of a device's reports, spread evenly over
// its sequence numbers.
func (s *Store) SampleReports(ctx context.Context, deviceID string, n int) ([]store.Report, error) {
	var reports []store.Report
	err := s.readDevice(ctx, deviceID, func(tx *sql.Tx, through int64) error {
		var first, last sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT min(seq), max(seq) FROM (
			SELECT min(seq) AS seq FROM report_history WHERE device_id = ?1
			UNION ALL SELECT max(seq) FROM report_history WHERE device_id = ?1
			UNION ALL SELECT seq FROM reports WHERE id > ?2 AND device_id = ?1)`, deviceID, through).Scan(&first, &last); err != nil {
			return err
		}
		if !first.Valid {
			return nil
		}
		seqs := store.SampleSeqs(uint64(first.Int64), uint64(last.Int64), n)
		marks := strings.Repeat(",?", len(seqs))[1:]
		args := make([]any, 0, len(seqs)+2)
		args = append(args, deviceID, through)
		for _, q := range seqs {
			args = append(args, int64(q))
		}
		var err error
		reports, err = queryReports(ctx, tx, `SELECT `+reportColumns+` FROM reports r WHERE r.id > ?2 AND r.device_id = ?1 AND r.seq IN (`+marks+`)
			UNION ALL SELECT `+reportColumns+` FROM report_history h JOIN reports r ON r.id = h.report_id
			WHERE h.device_id = ?1 AND h.seq IN (`+marks+`)`, append(args, args[2:]...)...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sample reports of device %s: %w", deviceID, err)
	}
	slices.SortFunc(reports, func(a, b store.Report) int { return cmp.Compare(a.Seq, b.Seq) })
	return slices.CompactFunc(reports, func(a, b store.Report) bool { return a.Seq == b.Seq }), nil
}
