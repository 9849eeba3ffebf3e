package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func openTestStore(tb testing.TB) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "posture.db")
	s, err := Open(path)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, path
}

func enrollTestDevice(tb testing.TB, s *Store, id string) {
	tb.Helper()
	ctx := context.Background()
	hash := sha256.Sum256([]byte("token-" + id))
	if err := s.CreateToken(ctx, Token{Hash: hash[:], ExpiresAt: time.Now().Add(time.Hour), Uses: 1}); err != nil {
		tb.Fatalf("CreateToken: %v", err)
	}
	d := Device{ID: id, Hostname: id, Platform: "linux", Identity: "software", IdentityKey: []byte("key")}
	if _, err := s.EnrollDevice(ctx, hash[:], time.Now(), d); err != nil {
		tb.Fatalf("EnrollDevice: %v", err)
	}
}

// benchReport is roughly the size of a real signed report.
func benchReport(deviceID string, seq uint64) Report {
	digest := sha256.Sum256(fmt.Appendf(nil, "%s/%d", deviceID, seq))
	return Report{
		DeviceID:   deviceID,
		Seq:        seq,
		Digest:     digest[:],
		Nonce:      digest[:16],
		Body:       make([]byte, 1024),
		Proof:      make([]byte, 72),
		ReceivedAt: time.Now(),
	}
}

// holdWriter occupies the writer goroutine with an operation that blocks
// until the returned release function is called, so that tests can queue
// work behind it deterministically.
func holdWriter(t *testing.T, s *Store) (release func()) {
	t.Helper()
	started, unblock := make(chan struct{}), make(chan struct{})
	result := make(chan error, 1)
	before := s.queued.Load()
	go func() {
		result <- s.submit(context.Background(), func(*sql.Tx) error {
			close(started)
			<-unblock
			return nil
		})
	}()
	<-started
	// The writer can start the operation before its submitter counts it as
	// queued; callers compare later counts with this one.
	waitQueued(t, s, before+1)
	return func() {
		close(unblock)
		if err := <-result; err != nil {
			t.Errorf("holding operation: %v", err)
		}
	}
}

// waitQueued waits until n operations in total have entered the queue.
func waitQueued(t *testing.T, s *Store, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.queued.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d operations queued, want %d", s.queued.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDatabaseSettings(t *testing.T) {
	s, _ := openTestStore(t)
	tests := []struct {
		pragma string
		db     *sql.DB
		want   string
	}{
		{"page_size", s.w, "8192"},
		{"journal_mode", s.w, "wal"},
		{"synchronous", s.w, "1"}, // NORMAL
		{"foreign_keys", s.w, "1"},
		{"busy_timeout", s.w, "5000"},
		{"query_only", s.r, "1"},
	}
	for _, tt := range tests {
		t.Run(tt.pragma, func(t *testing.T) {
			var got string
			if err := tt.db.QueryRow("PRAGMA " + tt.pragma).Scan(&got); err != nil {
				t.Fatalf("PRAGMA %s: %v", tt.pragma, err)
			}
			if got != tt.want {
				t.Errorf("PRAGMA %s = %s, want %s", tt.pragma, got, tt.want)
			}
		})
	}
	var version int
	if err := s.r.QueryRow(`SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version); err != nil {
		t.Fatalf("schema_version: %v", err)
	}
	if version != len(migrations) {
		t.Errorf("schema_version = %d, want %d", version, len(migrations))
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	s, path := openTestStore(t)
	if _, err := s.w.Exec(`UPDATE meta SET value = ? WHERE key = 'schema_version'`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path); err == nil {
		s.Close()
		t.Fatal("Open of a database with a newer schema succeeded")
	}
}

func TestBatching(t *testing.T) {
	s, _ := openTestStore(t)
	enrollTestDevice(t, s, "dev-a")

	// Queue the first call of every goroutine behind a held writer, so at
	// least those are guaranteed to share a transaction.
	release := holdWriter(t, s)
	before := s.batches.Load()
	queuedBefore := s.queued.Load()

	const goroutines, perGoroutine = 20, 10
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				if err := s.AppendReport(context.Background(), benchReport("dev-a", uint64(g*perGoroutine+i+1))); err != nil {
					t.Errorf("AppendReport: %v", err)
					failed.Add(1)
				}
			}
		})
	}
	waitQueued(t, s, queuedBefore+goroutines)
	release()
	wg.Wait()

	n, err := s.CountReports(context.Background(), "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if n != goroutines*perGoroutine {
		t.Errorf("CountReports = %d, want %d", n, goroutines*perGoroutine)
	}
	batches := s.batches.Load() - before
	t.Logf("%d reports committed in %d transactions", goroutines*perGoroutine, batches)
	if batches >= goroutines*perGoroutine {
		t.Errorf("%d transactions for %d reports: writes were not batched", batches, goroutines*perGoroutine)
	}
}

func TestBatchIsolatesFailures(t *testing.T) {
	s, _ := openTestStore(t)
	enrollTestDevice(t, s, "dev-a")
	if err := s.AppendReport(context.Background(), benchReport("dev-a", 1)); err != nil {
		t.Fatal(err)
	}

	release := holdWriter(t, s)
	queuedBefore := s.queued.Load()
	conflicting := benchReport("dev-a", 1)
	conflicting.Digest = []byte("different")
	calls := []struct {
		r    Report
		want error
	}{
		{benchReport("dev-a", 2), nil},
		{conflicting, ErrConflict},
		{benchReport("dev-x", 1), ErrNotFound},
		{benchReport("dev-a", 3), nil},
	}
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() { errs[i] = s.AppendReport(context.Background(), c.r) })
		waitQueued(t, s, queuedBefore+int64(i+1)) // keep the queue order
	}
	batchesBefore := s.batches.Load()
	release()
	wg.Wait()

	for i, c := range calls {
		if !errors.Is(errs[i], c.want) {
			t.Errorf("call %d: error = %v, want %v", i, errs[i], c.want)
		}
	}
	// The held batch counts as one; the four calls must have shared one more.
	if got := s.batches.Load() - batchesBefore; got != 1 {
		t.Errorf("%d transactions after release, want 1", got)
	}
	n, err := s.CountReports(context.Background(), "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("CountReports = %d, want 3", n)
	}
}

func TestCloseDrainsQueue(t *testing.T) {
	s, path := openTestStore(t)
	enrollTestDevice(t, s, "dev-a")

	release := holdWriter(t, s)
	queuedBefore := s.queued.Load()
	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = s.AppendReport(context.Background(), benchReport("dev-a", uint64(i+1))) })
	}
	waitQueued(t, s, queuedBefore+n)

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close must refuse new work at once, while queued work is still pending.
	deadline := time.Now().Add(10 * time.Second)
	for !s.closing.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := s.AppendReport(context.Background(), benchReport("dev-a", n+1)); !errors.Is(err, ErrClosed) {
		t.Errorf("AppendReport during Close: error = %v, want ErrClosed", err)
	}
	release()
	wg.Wait()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("queued append %d: %v", i+1, err)
		}
	}

	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.CountReports(context.Background(), "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Errorf("CountReports after Close and reopen = %d, want %d", got, n)
	}
}

// BenchmarkAppendReport measures AppendReport from many concurrent callers,
// as the collector's report streams call it, with the writer batching.
func BenchmarkAppendReport(b *testing.B) {
	s, _ := openTestStore(b)
	enrollTestDevice(b, s, "dev-a")
	var seq atomic.Uint64
	b.SetParallelism(32) // many streams per CPU, as on a busy collector
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.AppendReport(context.Background(), benchReport("dev-a", seq.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/float64(s.batches.Load()), "reports/tx")
}

// BenchmarkAppendReportSingleTx is the baseline for BenchmarkAppendReport:
// the same write, one report per transaction, bypassing the writer queue.
func BenchmarkAppendReportSingleTx(b *testing.B) {
	s, _ := openTestStore(b)
	enrollTestDevice(b, s, "dev-a")
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		tx, err := s.w.Begin()
		if err != nil {
			b.Fatal(err)
		}
		if err := s.appendReport(tx, benchReport("dev-a", uint64(i+1))); err != nil {
			tx.Rollback()
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
