package postgres

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// BenchmarkScanFleet1M is a collector starting on a database of 1,000,000
// devices, each with a head report of a real report's size: one ScanFleet
// in as many parts as CPUs. Filling the database takes a minute or two.
func BenchmarkScanFleet1M(b *testing.B) {
	const devices = 1_000_000
	s, _ := openTestStore(b)
	ctx := context.Background()
	start := time.Now()
	fillFleet(b, s, devices)
	b.Logf("filled %d devices with a head report each in %v", devices, time.Since(start).Round(time.Millisecond))
	parts := runtime.GOMAXPROCS(0)
	b.ReportAllocs()
	for b.Loop() {
		var rows, bytes atomic.Int64
		err := s.ScanFleet(ctx, parts, func(_ int, r *store.FleetRow) error {
			rows.Add(1)
			if r.Report != nil {
				bytes.Add(int64(len(r.Report.Body)))
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if rows.Load() != devices || bytes.Load() != devices*1024 {
			b.Fatalf("scanned %d devices and %d report bytes, want %d and %d", rows.Load(), bytes.Load(), devices, devices*1024)
		}
	}
	b.ReportMetric(float64(devices)*float64(b.N)/b.Elapsed().Seconds(), "devices/s")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/scan")
}

// fillFleet stores n devices with one report each, with COPY.
func fillFleet(tb testing.TB, s *Store, n int) {
	tb.Helper()
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Release()
	body, proof := make([]byte, 1024), make([]byte, 72)
	digest := make([]byte, 32)
	now := time.Now().UnixNano()
	i := 0
	reports := pgx.CopyFromFunc(func() ([]any, error) {
		if i == n {
			return nil, nil
		}
		i++
		return []any{int64(i), fmt.Sprintf("dev-%07d", i), int64(1), digest, digest[:16], body, proof, now}, nil
	})
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"reports"}, []string{"id", "device_id", "seq", "digest", "nonce", "body", "proof", "received_at"}, reports); err != nil {
		tb.Fatal(err)
	}
	i = 0
	key := make([]byte, 91) // a P-256 PKIX key's size
	devs := pgx.CopyFromFunc(func() ([]any, error) {
		if i == n {
			return nil, nil
		}
		i++
		id := fmt.Sprintf("dev-%07d", i)
		return []any{id, []byte(id + ".example.org"), []byte("linux"), "software", key, int32(1), store.StateActive, []byte{},
			now, "0123456789abcdef", "", int64(1), digest, now, int64(i)}, nil
	})
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"id", "hostname", "platform", "identity", "identity_key",
		"assurance", "state", "state_reason", "enrolled_at", "cert_serial", "ek_sha256", "last_seq", "last_digest", "last_seen", "last_report"}, devs); err != nil {
		tb.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT setval('reports_id_seq', $1)`, int64(n)); err != nil {
		tb.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE devices, reports`); err != nil {
		tb.Fatal(err)
	}
}
