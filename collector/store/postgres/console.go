package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// migrationConsole (schema version 5) holds the audit log, the
// console's sessions and its one-time sign-in links, and when an admin
// revoked an enrollment token (0: not revoked). Texts that may quote what
// a person typed or a device sent are bytea, as elsewhere.
const migrationConsole = `
ALTER TABLE tokens ADD COLUMN revoked_at bigint NOT NULL DEFAULT 0;

CREATE TABLE audit (
	id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at      bigint NOT NULL,
	actor   bytea NOT NULL,
	role    text NOT NULL,
	via     text NOT NULL,
	source  bytea NOT NULL,
	action  text NOT NULL,
	target  bytea NOT NULL,
	detail  bytea NOT NULL,
	outcome bytea NOT NULL
);
CREATE INDEX audit_at ON audit USING brin (at);

CREATE TABLE console_sessions (
	hash       bytea PRIMARY KEY,
	subject    bytea NOT NULL,
	name       bytea NOT NULL,
	role       text NOT NULL,
	source     bytea NOT NULL,
	created_at bigint NOT NULL,
	expires_at bigint NOT NULL
);

CREATE TABLE console_links (
	hash       bytea PRIMARY KEY,
	name       bytea NOT NULL,
	role       text NOT NULL,
	created_by bytea NOT NULL,
	created_at bigint NOT NULL,
	expires_at bigint NOT NULL,
	used_at    bigint NOT NULL DEFAULT 0
);
`

// AppendAudit stores an audit record and returns its ID.
func (s *Store) AppendAudit(ctx context.Context, a store.AuditRecord) (uint64, error) {
	var id uint64
	err := s.inTx(ctx, func(tx pgx.Tx) (err error) {
		id, err = insertAudit(ctx, tx, a)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("record audit entry: %w", err)
	}
	return id, nil
}

// insertAudit writes an audit record (AppendAudit, Load) and returns the
// ID the database gave it.
func insertAudit(ctx context.Context, tx pgx.Tx, a store.AuditRecord) (uint64, error) {
	var id int64
	err := tx.QueryRow(ctx, `INSERT INTO audit (at, actor, role, via, source, action, target, detail, outcome)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id`,
		nanos(a.At), []byte(a.Actor), a.Role, a.Via, []byte(a.From), a.Action, []byte(a.Target), []byte(a.Detail), []byte(a.Outcome)).Scan(&id)
	return uint64(id), err
}

// Audit lists audit records, newest first.
func (s *Store) Audit(ctx context.Context, q store.AuditQuery) ([]store.AuditRecord, error) {
	var where []string
	var args []any
	arg := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	where = append(where, "true")
	if q.Before != 0 {
		arg("id < ?", int64(min(q.Before, 1<<63-1)))
	}
	if !q.Since.IsZero() {
		arg("at >= ?", nanos(q.Since))
	}
	if q.Actor != "" {
		arg("actor = ?", []byte(q.Actor))
	}
	if q.Target != "" {
		arg("target = ?", []byte(q.Target))
	}
	args = append(args, auditLimit(q.Limit))
	var out []store.AuditRecord
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT id, at, actor, role, via, source, action, target, detail, outcome
			FROM audit WHERE `+strings.Join(where, " AND ")+` ORDER BY id DESC LIMIT $`+strconv.Itoa(len(args)), args...)
		if err != nil {
			return err
		}
		var (
			a                                     store.AuditRecord
			id, at                                int64
			actor, source, target, detail, outcom []byte
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &at, &actor, &a.Role, &a.Via, &source, &a.Action, &target, &detail, &outcom}, func() error {
			a.ID, a.At = uint64(id), fromNanos(at)
			a.Actor, a.From, a.Target, a.Detail, a.Outcome = string(actor), string(source), string(target), string(detail), string(outcom)
			out = append(out, a)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list audit entries: %w", err)
	}
	return out, nil
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO console_sessions (hash, subject, name, role, source, created_at, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, se.Hash, []byte(se.Subject), []byte(se.Name), se.Role, []byte(se.From), nanos(se.CreatedAt), nanos(se.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// Session returns the session with the given hash while it lasts.
func (s *Store) Session(ctx context.Context, hash []byte, now time.Time) (store.Session, error) {
	se := store.Session{Hash: hash}
	err := s.read(func() error {
		var (
			subject, name, source []byte
			created, expires      int64
		)
		err := s.pool.QueryRow(ctx, `SELECT subject, name, role, source, created_at, expires_at FROM console_sessions
			WHERE hash = $1 AND expires_at > $2`, blob(hash), nanos(now)).Scan(&subject, &name, &se.Role, &source, &created, &expires)
		if err != nil {
			return err
		}
		se.Subject, se.Name, se.From = string(subject), string(name), string(source)
		se.CreatedAt, se.ExpiresAt = fromNanos(created), fromNanos(expires)
		return nil
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.Session{}, store.ErrNotFound
	case err != nil:
		return store.Session{}, fmt.Errorf("read session: %w", err)
	}
	return se, nil
}

// DeleteSession ends a session.
func (s *Store) DeleteSession(ctx context.Context, hash []byte) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM console_sessions WHERE hash = $1`, blob(hash))
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO console_links (hash, name, role, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)`,
			l.Hash, []byte(l.Name), l.Role, []byte(l.CreatedBy), nanos(l.CreatedAt), nanos(l.ExpiresAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("create sign-in link: %w", err)
	}
	return nil
}

// UseSignInLink marks a sign-in link used and returns it. The row is
// locked, so two collectors cannot both use one link.
func (s *Store) UseSignInLink(ctx context.Context, hash []byte, now time.Time) (store.SignInLink, error) {
	var l store.SignInLink
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l = store.SignInLink{Hash: hash}
		var (
			name, by               []byte
			created, expires, used int64
		)
		err := tx.QueryRow(ctx, `SELECT name, role, created_by, created_at, expires_at, used_at FROM console_links WHERE hash = $1 FOR UPDATE`, blob(hash)).
			Scan(&name, &l.Role, &by, &created, &expires, &used)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		}
		l.Name, l.CreatedBy = string(name), string(by)
		l.CreatedAt, l.ExpiresAt = fromNanos(created), fromNanos(expires)
		if err := store.CheckSignInLink(l, used != 0, now); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE console_links SET used_at = $1 WHERE hash = $2`, max(nanos(now), 1), blob(hash))
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		n = 0
		for _, q := range []struct {
			sql string
			arg int64
		}{
			{`DELETE FROM console_sessions WHERE expires_at <= $1`, nanos(now)},
			{`DELETE FROM console_links WHERE expires_at <= $1`, nanos(now)},
			{`DELETE FROM audit WHERE at < $1`, nanos(auditBefore)},
		} {
			tag, err := tx.Exec(ctx, q.sql, q.arg)
			if err != nil {
				return err
			}
			n += tag.RowsAffected()
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
	err := s.read(func() error {
		var first, last *int64
		if err := s.pool.QueryRow(ctx, `SELECT min(seq), max(seq) FROM reports WHERE device_id = $1`, deviceID).Scan(&first, &last); err != nil {
			return err
		}
		if first == nil {
			return nil
		}
		var seqs []int64
		for _, q := range store.SampleSeqs(uint64(*first), uint64(*last), n) {
			seqs = append(seqs, int64(q))
		}
		rows, err := s.pool.Query(ctx, `SELECT `+reportColumns+` FROM reports r WHERE r.device_id = $1 AND r.seq = ANY($2) ORDER BY r.seq`, deviceID, seqs)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanReport(rows)
			if err != nil {
				return err
			}
			reports = append(reports, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("sample reports of device %s: %w", deviceID, err)
	}
	return reports, nil
}
