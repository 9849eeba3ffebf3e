package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

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
		{"synchronous", s.w, "2"}, // FULL
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
	const goroutines, perGoroutine = 20, 10
	for g := range goroutines {
		enrollTestDevice(t, s, fmt.Sprintf("dev-%02d", g))
		openStream(t, s, fmt.Sprintf("dev-%02d", g))
	}

	// Queue the first call of every goroutine behind a held writer, so at
	// least those are guaranteed to share a transaction.
	release := holdWriter(t, s)
	before := s.batches.Load()
	queuedBefore := s.queued.Load()

	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				if err := appendReport(t, s, benchReport(fmt.Sprintf("dev-%02d", g), uint64(i+1))); err != nil {
					t.Errorf("AppendReport: %v", err)
					failed.Add(1)
				}
			}
		})
	}
	waitQueued(t, s, queuedBefore+goroutines)
	release()
	wg.Wait()

	for g := range goroutines {
		n, err := s.CountReports(context.Background(), fmt.Sprintf("dev-%02d", g))
		if err != nil {
			t.Fatal(err)
		}
		if n != perGoroutine {
			t.Errorf("CountReports = %d, want %d", n, perGoroutine)
		}
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
	if err := appendReport(t, s, benchReport("dev-a", 1)); err != nil {
		t.Fatal(err)
	}

	h, err := s.OpenReportStream(context.Background(), "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	release := holdWriter(t, s)
	queuedBefore := s.queued.Load()
	conflicting := benchReport("dev-a", 1)
	conflicting.Digest = []byte("different")
	calls := []struct {
		r    store.Report
		want error
	}{
		{benchReport("dev-a", 2), nil},
		{conflicting, store.ErrConflict},
		{benchReport("dev-x", 1), store.ErrNotFound},
		{benchReport("dev-a", 3), nil},
	}
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		c.r.Stream = h.Stream
		wg.Go(func() { _, errs[i] = s.AppendReport(context.Background(), c.r) })
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
	const n = 50
	for i := range n + 1 {
		enrollTestDevice(t, s, fmt.Sprintf("dev-%02d", i))
		openStream(t, s, fmt.Sprintf("dev-%02d", i))
	}

	release := holdWriter(t, s)
	queuedBefore := s.queued.Load()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = appendReport(t, s, benchReport(fmt.Sprintf("dev-%02d", i), 1)) })
	}
	waitQueued(t, s, queuedBefore+n)

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close must refuse new work at once, while queued work is still pending.
	deadline := time.Now().Add(10 * time.Second)
	for !s.closing.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := appendReport(t, s, benchReport(fmt.Sprintf("dev-%02d", n), 1)); !errors.Is(err, store.ErrClosed) {
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
	for i := range n {
		got, err := s.CountReports(context.Background(), fmt.Sprintf("dev-%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		if got != 1 {
			t.Errorf("CountReports(dev-%02d) after Close and reopen = %d, want 1", i, got)
		}
	}
}

// BenchmarkAppendReport measures AppendReport from many concurrent callers,
// as the collector's report streams call it, with the writer batching:
// each caller is one device's stream.
func BenchmarkAppendReport(b *testing.B) {
	s, _ := openTestStore(b)
	const devices = 256
	heads := make([]store.StreamHead, devices)
	for i := range devices {
		id := fmt.Sprintf("dev-%03d", i)
		enrollTestDevice(b, s, id)
		h, err := s.OpenReportStream(context.Background(), id)
		if err != nil {
			b.Fatal(err)
		}
		heads[i] = h
	}
	var next atomic.Int64
	b.SetParallelism(32) // many streams per CPU, as on a busy collector
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)-1) % devices
		id := fmt.Sprintf("dev-%03d", i)
		seq := uint64(0)
		for pb.Next() {
			seq++
			r := benchReport(id, seq)
			r.Stream = heads[i].Stream
			if _, err := s.AppendReport(context.Background(), r); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
	b.ReportMetric(float64(b.N)/float64(s.batches.Load()), "reports/tx")
}

// BenchmarkAppendReportSingleTx is the baseline for BenchmarkAppendReport:
// the same write, one report per transaction, bypassing the writer queue.
func BenchmarkAppendReportSingleTx(b *testing.B) {
	s, _ := openTestStore(b)
	enrollTestDevice(b, s, "dev-a")
	h, err := s.OpenReportStream(context.Background(), "dev-a")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		tx, err := s.w.Begin()
		if err != nil {
			b.Fatal(err)
		}
		r := benchReport("dev-a", uint64(i+1))
		r.Stream = h.Stream
		if _, err := s.appendReport(tx, r); err != nil {
			tx.Rollback()
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
