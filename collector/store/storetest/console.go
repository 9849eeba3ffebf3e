package storetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/posture-project/posture/collector/store"
)

// Audit records come back newest first, exactly as stored (hostile text
// too), filtered and paged, and outlive a reopen.
func (c *suite) audit(t *testing.T) {
	s, reopen := c.fresh(t)
	base := time.Unix(1_700_000_000, 0).UTC()
	var want []store.AuditRecord
	for i, a := range []store.AuditRecord{
		{Actor: "alice@example.com", Role: "admin", Via: "console", From: "192.0.2.1", Action: "devices revoke", Target: "dev-a", Detail: "reason: stolen"},
		{Actor: "local admin", Role: "admin", Via: "admin socket", Action: "token create", Detail: "ttl 1h, uses 1"},
		{Actor: "bob\x00\u202e<b>", Role: "viewer", Via: "console", From: "192.0.2.2", Action: "devices revoke", Target: "dev-b\xff", Outcome: "viewer may not revoke"},
	} {
		a.At = base.Add(time.Duration(i) * time.Minute)
		id, err := s.AppendAudit(ctx, a)
		if err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
		if len(want) > 0 && id <= want[0].ID {
			t.Fatalf("AppendAudit ID %d after %d; want growing IDs", id, want[0].ID)
		}
		a.ID = id
		want = append([]store.AuditRecord{a}, want...)
	}
	check := func(s store.Store, q store.AuditQuery, want []store.AuditRecord) {
		t.Helper()
		got, err := s.Audit(ctx, q)
		if err != nil {
			t.Fatalf("Audit(%+v): %v", q, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Audit(%+v) (-want +got):\n%s", q, diff)
		}
	}
	check(s, store.AuditQuery{}, want)
	check(s, store.AuditQuery{Limit: 2}, want[:2])
	check(s, store.AuditQuery{Before: want[1].ID}, want[2:])
	check(s, store.AuditQuery{Since: base.Add(time.Minute)}, want[:2])
	check(s, store.AuditQuery{Actor: "alice@example.com"}, want[2:])
	check(s, store.AuditQuery{Target: "dev-b\xff"}, want[:1])
	s = reopen(t, s)
	check(s, store.AuditQuery{}, want)
}

// A session is found by its hash until it expires, and not after it was
// deleted; a hash never stored is not found.
func (c *suite) sessions(t *testing.T) {
	s, reopen := c.fresh(t)
	now := time.Unix(1_700_000_000, 0).UTC()
	se := store.Session{Hash: hash("session-a"), Subject: "https://idp.example#1234", Name: "alice@example.com\u202e", Role: "admin",
		From: "192.0.2.1", CreatedAt: now, ExpiresAt: now.Add(8 * time.Hour)}
	if err := s.CreateSession(ctx, se); err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	if err := s.CreateSession(ctx, se); err == nil {
		t.Error("CreateSession with a hash stored already succeeded")
	}
	got, err := s.Session(ctx, se.Hash, now.Add(time.Hour))
	if err != nil {
		t.Fatalf("Session: %v", err)
	}
	if diff := cmp.Diff(se, got); diff != "" {
		t.Errorf("Session (-want +got):\n%s", diff)
	}
	s = reopen(t, s)
	if _, err := s.Session(ctx, se.Hash, now.Add(time.Hour)); err != nil {
		t.Errorf("Session after reopen: %v", err)
	}
	if _, err := s.Session(ctx, se.Hash, se.ExpiresAt); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Session at its expiry: %v; want ErrNotFound", err)
	}
	if _, err := s.Session(ctx, hash("session-b"), now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Session never made: %v; want ErrNotFound", err)
	}
	if err := s.DeleteSession(ctx, se.Hash); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if _, err := s.Session(ctx, se.Hash, now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Session after DeleteSession: %v; want ErrNotFound", err)
	}
	if err := s.DeleteSession(ctx, se.Hash); err != nil {
		t.Errorf("DeleteSession again: %v; want nil", err)
	}
}

// A sign-in link is used once, before it expires.
func (c *suite) signInLinks(t *testing.T) {
	s, _ := c.fresh(t)
	now := time.Unix(1_700_000_000, 0).UTC()
	l := store.SignInLink{Hash: hash("link-a"), Name: "first admin", Role: "admin", CreatedBy: "local admin", CreatedAt: now, ExpiresAt: now.Add(15 * time.Minute)}
	if err := s.CreateSignInLink(ctx, l); err != nil {
		t.Fatalf("CreateSignInLink: %v", err)
	}
	expired := l
	expired.Hash = hash("link-b")
	if err := s.CreateSignInLink(ctx, expired); err != nil {
		t.Fatalf("CreateSignInLink: %v", err)
	}
	if _, err := s.UseSignInLink(ctx, hash("link-c"), now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UseSignInLink of a link never made: %v; want ErrNotFound", err)
	}
	if _, err := s.UseSignInLink(ctx, expired.Hash, expired.ExpiresAt); !errors.Is(err, store.ErrTokenExpired) {
		t.Errorf("UseSignInLink at its expiry: %v; want ErrTokenExpired", err)
	}
	got, err := s.UseSignInLink(ctx, l.Hash, now.Add(time.Minute))
	if err != nil {
		t.Fatalf("UseSignInLink: %v", err)
	}
	if diff := cmp.Diff(l, got); diff != "" {
		t.Errorf("UseSignInLink (-want +got):\n%s", diff)
	}
	if _, err := s.UseSignInLink(ctx, l.Hash, now.Add(time.Minute)); !errors.Is(err, store.ErrLinkUsed) {
		t.Errorf("UseSignInLink again: %v; want ErrLinkUsed", err)
	}
	// The expired one was refused without being used up: still expired.
	if _, err := s.UseSignInLink(ctx, expired.Hash, expired.ExpiresAt.Add(time.Hour)); !errors.Is(err, store.ErrTokenExpired) {
		t.Errorf("UseSignInLink of the expired link again: %v; want ErrTokenExpired", err)
	}
}

// Of many uses of one link at once, exactly one succeeds.
func (c *suite) signInLinkRace(t *testing.T) {
	s, _ := c.fresh(t)
	now := time.Now()
	l := store.SignInLink{Hash: hash("link-race"), Name: "first admin", Role: "admin", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateSignInLink(ctx, l); err != nil {
		t.Fatalf("CreateSignInLink: %v", err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = s.UseSignInLink(ctx, l.Hash, now) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, store.ErrLinkUsed):
			t.Errorf("UseSignInLink: %v; want nil or ErrLinkUsed", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d uses succeeded; want 1", ok, n)
	}
}

// PruneConsole deletes what expired and the audit records before the
// cutoff, and keeps the rest.
func (c *suite) pruneConsole(t *testing.T) {
	s, _ := c.fresh(t)
	now := time.Unix(1_700_000_000, 0).UTC()
	for i, exp := range []time.Duration{-time.Minute, time.Hour} {
		se := store.Session{Hash: hash("s" + string(rune('a'+i))), Role: "viewer", CreatedAt: now.Add(-time.Hour), ExpiresAt: now.Add(exp)}
		if err := s.CreateSession(ctx, se); err != nil {
			t.Fatal(err)
		}
		l := store.SignInLink{Hash: hash("l" + string(rune('a'+i))), Role: "admin", CreatedAt: now.Add(-time.Hour), ExpiresAt: now.Add(exp)}
		if err := s.CreateSignInLink(ctx, l); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AppendAudit(ctx, store.AuditRecord{At: now.Add(-48*time.Hour + time.Duration(i)*47*time.Hour), Action: "console sign-in"}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneConsole(ctx, now, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatalf("PruneConsole: %v", err)
	}
	if n != 3 {
		t.Errorf("PruneConsole deleted %d rows; want 3 (a session, a link, an audit record)", n)
	}
	if _, err := s.Session(ctx, hash("sb"), now); err != nil {
		t.Errorf("the session that lasts: %v", err)
	}
	if _, err := s.UseSignInLink(ctx, hash("lb"), now); err != nil {
		t.Errorf("the link that lasts: %v", err)
	}
	if got, err := s.Audit(ctx, store.AuditQuery{}); err != nil || len(got) != 1 {
		t.Errorf("Audit after pruning: %d records, %v; want 1", len(got), err)
	}
	if n, err := s.PruneConsole(ctx, now, time.Time{}); err != nil || n != 0 {
		t.Errorf("PruneConsole again keeping every audit record: %d, %v; want 0", n, err)
	}
}

// SampleReports spreads its picks from the oldest stored report to the
// latest, and returns every report of a short history; reports the
// backend indexed and those it did not yet alike.
func (c *suite) sampleReports(t *testing.T) {
	s, reopen := c.fresh(t)
	enroll(t, s, "dev-a")
	enroll(t, s, "dev-b")
	seqsOf := func(rs []store.Report) []uint64 {
		var out []uint64
		for _, r := range rs {
			out = append(out, r.Seq)
		}
		return out
	}
	sample := func(s store.Store, id string, n int) []uint64 {
		t.Helper()
		rs, err := s.SampleReports(ctx, id, n)
		if err != nil {
			t.Fatalf("SampleReports(%s, %d): %v", id, n, err)
		}
		for _, r := range rs {
			if want := report(id, r.Seq, ""); string(r.Body) != string(want.Body) || !r.ReceivedAt.Equal(want.ReceivedAt) {
				t.Errorf("SampleReports(%s) report %d = %q at %v; want %q at %v", id, r.Seq, r.Body, r.ReceivedAt, want.Body, want.ReceivedAt)
			}
		}
		return seqsOf(rs)
	}
	if got := sample(s, "dev-a", 10); len(got) != 0 {
		t.Errorf("SampleReports of a device without reports = %v; want none", got)
	}
	appendChain(t, s, "dev-a", 1, 100)
	appendChain(t, s, "dev-b", 1, 3)
	for i := range 2 {
		if i == 1 {
			s = reopen(t, s) // a backend may index what it stores in the background
		}
		if diff := cmp.Diff([]uint64{1, 34, 67, 100}, sample(s, "dev-a", 4)); diff != "" {
			t.Errorf("SampleReports(dev-a, 4) seqs (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]uint64{1, 2, 3}, sample(s, "dev-b", 10)); diff != "" {
			t.Errorf("SampleReports(dev-b, 10) seqs (-want +got):\n%s", diff)
		}
	}
	// After pruning, the spread starts at the oldest report kept.
	if _, err := s.PruneReports(ctx, report("dev-a", 51, "").ReceivedAt, 0, 1000); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint64{51, 75, 100}, sample(s, "dev-a", 3)); diff != "" {
		t.Errorf("SampleReports(dev-a, 3) after pruning (-want +got):\n%s", diff)
	}
}
