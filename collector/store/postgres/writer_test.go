package postgres

import (
	"context"
	"crypto/sha256"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/testtools"
)

func openTestStore(tb testing.TB, opts ...Option) (*Store, string) {
	tb.Helper()
	dsn := testtools.Postgres(tb)
	s, err := Open(context.Background(), dsn, opts...)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, dsn
}

func enrollTestDevice(tb testing.TB, s store.Store, id string) {
	tb.Helper()
	ctx := context.Background()
	hash := sha256.Sum256([]byte("token-" + id))
	if err := s.CreateToken(ctx, store.Token{Hash: hash[:], ExpiresAt: time.Now().Add(time.Hour), Uses: 1}); err != nil {
		tb.Fatalf("CreateToken: %v", err)
	}
	d := store.Device{ID: id, Hostname: id, Platform: "linux", Identity: "software", IdentityKey: []byte("key")}
	if _, _, err := s.EnrollDevice(ctx, hash[:], time.Now(), d); err != nil {
		tb.Fatalf("EnrollDevice: %v", err)
	}
}

// benchReport is roughly the size of a real signed report, as in the
// SQLite store's benchmark.
func benchReport(deviceID string, seq uint64) store.Report {
	digest := sha256.Sum256(fmt.Appendf(nil, "%s/%d", deviceID, seq))
	var prev []byte
	if seq > 1 {
		// The digest of benchReport(deviceID, seq-1), without computing
		// the chain again from its start.
		d := sha256.Sum256(fmt.Appendf(nil, "%s/%d", deviceID, seq-1))
		prev = d[:]
	}
	return store.Report{
		PrevDigest: prev,
		DeviceID:   deviceID,
		Seq:        seq,
		Digest:     digest[:],
		Nonce:      digest[:16],
		Body:       make([]byte, 1024),
		Proof:      make([]byte, 72),
		ReceivedAt: time.Now(),
	}
}

// BenchmarkAppendReport appends reports from 32 callers per CPU, each a
// device with its own stream, as store/sqlite's benchmark of the same
// name does; compare their reports/s.
func BenchmarkAppendReport(b *testing.B) {
	s, _ := openTestStore(b)
	devices := 32 * runtime.GOMAXPROCS(0)
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
	batches := s.w.batches.Load()
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
	b.ReportMetric(float64(b.N)/float64(s.w.batches.Load()-batches), "reports/tx")
}

// Appends that share a transaction take the shared path: its statement
// is typed as the binary encoding expects, and no transaction fails and
// sends its reports again alone.
func TestAppendsShareTransactions(t *testing.T) {
	s, _ := openTestStore(t)
	const devices, perDevice = 32, 20
	errs := make(chan error, devices)
	for i := range devices {
		enrollTestDevice(t, s, fmt.Sprintf("dev-%02d", i))
	}
	for i := range devices {
		go func() {
			id := fmt.Sprintf("dev-%02d", i)
			h, err := s.OpenReportStream(context.Background(), id)
			for seq := uint64(1); err == nil && seq <= perDevice; seq++ {
				r := benchReport(id, seq)
				r.Stream = h.Stream
				r.TPM = &store.TPMClock{Clock: 1 << 40, ResetCount: 3, RestartCount: 4}
				r.MeasuredBoot = []byte("reading")
				var ev store.Event
				if ev, err = s.AppendReport(context.Background(), r); err == nil && ev.ID == 0 {
					err = fmt.Errorf("%s/%d: no event", id, seq)
				}
			}
			errs <- err
		}()
	}
	for range devices {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := s.w.failed.Load(); n != 0 {
		t.Errorf("%d shared transactions failed", n)
	}
	if n, b := int64(devices*perDevice), s.w.batches.Load(); b >= n {
		t.Logf("%d reports in %d transactions: none shared one", n, b)
	}
	d, err := s.Device(context.Background(), "dev-00")
	if err != nil || d.LastSeq != perDevice || d.TPMClock.Clock != 1<<40 || d.TPMClock.RestartCount != 4 {
		t.Errorf("dev-00 = %+v, %v; want its head at %d with the TPM clock", d, err, perDevice)
	}
}
