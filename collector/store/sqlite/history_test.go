package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// manualHistory never indexes on its own: reports stay in the log's tail
// until Close indexes them, or Open indexes what a process left behind.
var manualHistory = historyTiming{every: time.Hour, batch: 1 << 30, idle: time.Hour}

func openManual(t *testing.T, path string) *Store {
	t.Helper()
	s, err := open(path, manualHistory)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// historyState is how far the history reaches and how many reports it
// indexes, read from the database.
func historyState(t *testing.T, s *Store) (through, indexed, logged int64) {
	t.Helper()
	err := s.r.QueryRow(`SELECT (SELECT value FROM meta WHERE key = 'history_through'),
		(SELECT count(*) FROM report_history), (SELECT count(*) FROM reports)`).Scan(&through, &indexed, &logged)
	if err != nil {
		t.Fatal(err)
	}
	return through, indexed, logged
}

func seqsOf(t *testing.T, s *Store, id string, limit int) []uint64 {
	t.Helper()
	reports, err := s.Reports(context.Background(), id, limit)
	if err != nil {
		t.Fatalf("Reports: %v", err)
	}
	var seqs []uint64
	for _, r := range reports {
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

// TestHistory reads reports from the log's tail, from the history and from
// both, and finds repeats and conflicts in either.
func TestHistory(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "posture.db")
	s := openManual(t, path)
	enrollTestDevice(t, s, "dev-a")
	enrollTestDevice(t, s, "dev-b")
	appendAll := func(s *Store, id string, seqs ...uint64) {
		t.Helper()
		for _, seq := range seqs {
			if err := appendReport(t, s, reportFor(id, seq, "")); err != nil {
				t.Fatalf("AppendReport %s/%d: %v", id, seq, err)
			}
		}
	}
	check := func(s *Store, stage string, wantThrough, wantIndexed int64, wantA []uint64) {
		t.Helper()
		through, indexed, _ := historyState(t, s)
		if through != wantThrough || indexed != wantIndexed {
			t.Errorf("%s: history through %d with %d reports, want %d and %d", stage, through, indexed, wantThrough, wantIndexed)
		}
		if got := seqsOf(t, s, "dev-a", 0); !slices.Equal(got, wantA) {
			t.Errorf("%s: Reports(dev-a) = %v, want %v", stage, got, wantA)
		}
		if got := seqsOf(t, s, "dev-a", 3); !slices.Equal(got, wantA[:3]) {
			t.Errorf("%s: Reports(dev-a, 3) = %v, want %v", stage, got, wantA[:3])
		}
		if n, err := s.CountReports(ctx, "dev-a"); err != nil || n != len(wantA) {
			t.Errorf("%s: CountReports(dev-a) = %d, %v; want %d", stage, n, err, len(wantA))
		}
		if got := seqsOf(t, s, "dev-b", 0); !slices.Equal(got, []uint64{2, 1}) {
			t.Errorf("%s: Reports(dev-b) = %v, want [2 1]", stage, got)
		}
		latest, err := s.LatestReport(ctx, "dev-a")
		if err != nil || latest.Seq != wantA[0] {
			t.Errorf("%s: LatestReport(dev-a) = seq %d, %v; want %d", stage, latest.Seq, err, wantA[0])
		}
	}

	// All in the tail.
	appendAll(s, "dev-a", 1, 2, 3, 4)
	appendAll(s, "dev-b", 1, 2)
	check(s, "tail only", 0, 0, []uint64{4, 3, 2, 1})

	// Close indexes everything; so does nothing else until the next Close.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openManual(t, path)
	check(s, "history only", 6, 6, []uint64{4, 3, 2, 1})

	appendAll(s, "dev-a", 5, 6)
	check(s, "history and tail", 6, 6, []uint64{6, 5, 4, 3, 2, 1})

	// A repeat writes nothing and a different report with a stored
	// sequence number conflicts, whether that report is indexed (2) or
	// still in the tail (5).
	for _, seq := range []uint64{2, 5} {
		if err := appendReport(t, s, reportFor("dev-a", seq, "")); err != nil {
			t.Errorf("repeat of %d: %v", seq, err)
		}
		if err := appendReport(t, s, reportFor("dev-a", seq, "forged")); !errors.Is(err, store.ErrConflict) {
			t.Errorf("forged %d: error = %v, want ErrConflict", seq, err)
		}
	}
	if err := appendReport(t, s, reportFor("dev-x", 1, "")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown device: error = %v, want ErrNotFound", err)
	}
	check(s, "after repeats", 6, 6, []uint64{6, 5, 4, 3, 2, 1})
	if _, _, logged := historyState(t, s); logged != 8 {
		t.Errorf("%d reports in the log, want 8", logged)
	}
	if got, _ := s.Reports(ctx, "dev-a", 0); len(got) != 6 || string(got[1].Body) != string(reportFor("dev-a", 5, "").Body) {
		t.Errorf("report 5 after a forged repeat: %+v", got)
	}
}

// TestHistoryIndexesOnItsOwn waits for the writer's own pass.
func TestHistoryIndexesOnItsOwn(t *testing.T) {
	s, err := open(filepath.Join(t.TempDir(), "posture.db"), historyTiming{every: time.Hour, batch: 1 << 30, idle: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	enrollTestDevice(t, s, "dev-a")
	for seq := uint64(1); seq <= 3; seq++ {
		if err := appendReport(t, s, reportFor("dev-a", seq, "")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		through, indexed, logged := historyState(t, s)
		if through == logged && indexed == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history through %d with %d reports after 10 s, want 3 and 3", through, indexed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.historyFailures.Load() != 0 {
		t.Errorf("%d failed history passes", s.historyFailures.Load())
	}
}

// TestOpenIndexesLeftovers: a process that stopped without indexing its
// last reports leaves them to the next Open.
func TestOpenIndexesLeftovers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	s := openManual(t, path)
	enrollTestDevice(t, s, "dev-a")
	for seq := uint64(1); seq <= 4; seq++ {
		if err := appendReport(t, s, reportFor("dev-a", seq, "")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Undo part of what Close indexed, as if the process had stopped after
	// report 2 was indexed.
	db, err := sql.Open("sqlite3", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DELETE FROM report_history WHERE seq > 2; UPDATE meta SET value = 2 WHERE key = 'history_through'`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openManual(t, path)
	if through, indexed, _ := historyState(t, s); through != 4 || indexed != 4 {
		t.Errorf("after Open: history through %d with %d reports, want 4 and 4", through, indexed)
	}
	if err := appendReport(t, s, reportFor("dev-a", 3, "forged")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("forged repeat of a re-indexed report: error = %v, want ErrConflict", err)
	}
}

// TestDirtyFailureRerunsBatch: an atomic operation that fails dirty takes
// its transaction down; the batch runs again without it.
func TestDirtyFailureRerunsBatch(t *testing.T) {
	s, _ := openTestStore(t)
	enrollTestDevice(t, s, "dev-a")
	openStream(t, s, "dev-a")
	ctx := context.Background()

	release := holdWriter(t, s)
	before := s.queued.Load()
	boom := errors.New("boom")
	errs := make([]error, 3)
	ops := []func() error{
		func() error { return appendReport(t, s, reportFor("dev-a", 1, "")) },
		func() error {
			return s.submitAtomic(ctx, func(tx *sql.Tx) error {
				if _, err := tx.Exec(`INSERT INTO pinned_eks (ek_sha256, description, created_at) VALUES ('half', '', 0)`); err != nil {
					return err
				}
				return dirty(boom)
			})
		},
		func() error { return appendReport(t, s, reportFor("dev-a", 2, "")) },
	}
	var wg sync.WaitGroup
	for i, op := range ops {
		wg.Go(func() { errs[i] = op() })
		waitQueued(t, s, before+int64(i+1))
	}
	batches := s.batches.Load()
	release()
	wg.Wait()

	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], boom) {
		t.Errorf("results = %v, want nil, boom, nil", errs)
	}
	if got := s.batches.Load() - batches; got != 2 {
		t.Errorf("%d transactions, want 2 (the batch, then the batch without the failed operation)", got)
	}
	if pinned, err := s.EKPinned(ctx, "half"); err != nil || pinned {
		t.Errorf("the failed operation's write survived: pinned = %v, %v", pinned, err)
	}
	if n, err := s.CountReports(ctx, "dev-a"); err != nil || n != 2 {
		t.Errorf("CountReports = %d, %v; want 2", n, err)
	}
}

// TestMigrateReportLog opens a database of schema version 2, whose reports
// were keyed by device and sequence number, and checks that every report,
// head and TPM reading carries over.
func TestMigrateReportLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	db, err := sql.Open("sqlite3", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	setup := `PRAGMA page_size = 8192; PRAGMA journal_mode = WAL;
		CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;` +
		migrations[0] + migrations[1] + `
		INSERT INTO meta VALUES ('schema_version', 2);
		INSERT INTO devices (id, hostname, platform, identity, identity_key, assurance, state, state_reason,
			enrolled_at, cert_serial, last_seq, last_digest, last_seen, tpm_clock, tpm_reset_count, reboots)
		VALUES ('dev-a', 'a', 'linux', 'tpm', x'01', 3, 1, '', 1, '01', 2, ?, 1700000002000000000, 500, 7, 1),
		       ('dev-b', 'b', 'linux', 'software', x'02', 1, 1, '', 1, '02', 0, NULL, 0, 0, 0, 0);`
	r1, r2 := reportFor("dev-a", 1, ""), reportFor("dev-a", 2, "")
	if _, err := db.Exec(setup, r2.Digest); err != nil {
		t.Fatal(err)
	}
	for _, r := range []store.Report{r2, r1} { // stored out of order
		if _, err := db.Exec(`INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?)`,
			r.DeviceID, int64(r.Seq), r.Digest, r.Nonce, r.Body, r.Proof, nanos(r.ReceivedAt)); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s := openManual(t, path)
	ctx := context.Background()
	var version int
	if err := s.r.QueryRow(`SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version); err != nil || version != len(migrations) {
		t.Fatalf("schema_version = %d, %v; want %d", version, err, len(migrations))
	}
	got, err := s.Reports(ctx, "dev-a", 0)
	if err != nil || len(got) != 2 || got[0].Seq != 2 || got[1].Seq != 1 || string(got[1].Body) != string(r1.Body) {
		t.Fatalf("Reports after migration = %+v, %v", got, err)
	}
	if through, indexed, _ := historyState(t, s); through != 2 || indexed != 2 {
		t.Errorf("history through %d with %d reports, want 2 and 2", through, indexed)
	}
	latest, err := s.LatestReport(ctx, "dev-a")
	if err != nil || latest.Seq != 2 {
		t.Errorf("LatestReport = seq %d, %v; want 2", latest.Seq, err)
	}
	if _, err := s.LatestReport(ctx, "dev-b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LatestReport of a device without reports: %v, want ErrNotFound", err)
	}
	d, err := s.Device(ctx, "dev-a")
	if err != nil || d.LastSeq != 2 || d.TPMClock.Clock != 500 || d.TPMClock.ResetCount != 7 || d.Reboots != 1 {
		t.Errorf("Device after migration = %+v, %v", d, err)
	}
	heads := map[string]uint64{}
	if err := s.ScanFleet(ctx, 1, func(_ int, row *store.FleetRow) error {
		if row.Report != nil {
			heads[row.ID] = row.Report.Seq
		}
		return nil
	}); err != nil || len(heads) != 1 || heads["dev-a"] != 2 {
		t.Errorf("ScanFleet heads = %v, %v; want dev-a at 2 only", heads, err)
	}
	// The chain continues, and the migrated reports are still unique.
	if err := appendReport(t, s, reportFor("dev-a", 2, "forged")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("forged repeat of a migrated report: %v, want ErrConflict", err)
	}
	if err := appendReport(t, s, reportFor("dev-a", 3, "")); err != nil {
		t.Errorf("next report: %v", err)
	}
}

// TestHistoryFailureCounted: a pass that cannot write the history is
// counted and leaves history_through where it was, and the next Open
// indexes the reports.
func TestHistoryFailureCounted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	s := openManual(t, path)
	enrollTestDevice(t, s, "dev-a")
	for seq := uint64(1); seq <= 3; seq++ {
		if err := appendReport(t, s, reportFor("dev-a", seq, "")); err != nil {
			t.Fatal(err)
		}
	}
	// Make the history unwritable: rename it away, so the pass at Close
	// fails.
	if _, err := s.w.Exec(`ALTER TABLE report_history RENAME TO report_history_away`); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.HistoryFailures(); got != 1 {
		t.Errorf("HistoryFailures = %d, want 1", got)
	}
	db, err := sql.Open("sqlite3", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`ALTER TABLE report_history_away RENAME TO report_history`); err != nil {
		t.Fatal(err)
	}
	var through int64
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'history_through'`).Scan(&through); err != nil || through != 0 {
		t.Errorf("history_through after the failed pass = %d, %v; want 0", through, err)
	}
	db.Close()

	s = openManual(t, path)
	if got := seqsOf(t, s, "dev-a", 0); !slices.Equal(got, []uint64{3, 2, 1}) {
		t.Errorf("Reports after reopening = %v, want [3 2 1]", got)
	}
	if through, indexed, _ := historyState(t, s); through != 3 || indexed != 3 {
		t.Errorf("history through %d with %d reports, want 3 and 3", through, indexed)
	}
}
