package e2e

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/postgres"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// BenchmarkIngestBackends measures how many signed reports one collector
// verifies, stores and acknowledges per second on SQLite and on
// PostgreSQL (a server on this machine, fsync and synchronous commits on,
// sharing its cores), in the same run: agents in a child process stream
// back to back over 100 streams. The PostgreSQL run reports its ratio to
// SQLite's (pg-to-sqlite).
func BenchmarkIngestBackends(b *testing.B) {
	const streams = 100
	var sqliteRate float64
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			e := startCollectorWith(b, func(c *collector.Config) {
				c.ReportBurst = 1_000_000
				if backend == "postgres" {
					c.Database = testtools.Postgres(b)
				}
			})
			var agents []string
			for range streams {
				dir, id := e.enroll()
				agents = append(agents, id+"="+dir)
			}
			per := max(b.N/streams, 1)
			gen := startChild(b, "agents", "POSTURE_LOADGEN_ADDR="+e.addr, "POSTURE_LOADGEN_AGENTS="+strings.Join(agents, ","),
				"POSTURE_LOADGEN_REPORTS="+strconv.Itoa(per))
			b.ResetTimer()
			cpu0 := processCPU(b)
			gen.say(b, "go")
			gen.await(b, "done")
			cpu := (processCPU(b) - cpu0) / time.Duration(per*streams)
			b.StopTimer()
			rate := float64(per*streams) / b.Elapsed().Seconds()
			b.ReportMetric(rate, "reports/s")
			b.ReportMetric(float64(cpu.Nanoseconds())/1000, "collector-cpu-µs/report")
			if backend == "sqlite" {
				sqliteRate = rate
			} else if sqliteRate > 0 {
				b.ReportMetric(rate/sqliteRate, "pg-to-sqlite")
			}
		})
	}
}

// BenchmarkRevocationAcrossCollectors measures a revocation made on one
// collector reaching 1,000 gateways watching another collector on the
// same PostgreSQL database: from the admin's call on collector a to each
// watcher (in a child process, on its own connection) hearing it from
// collector b, which learns of it by the database's notification. The
// baseline is the same revocation watched on the collector that made it,
// in the same run (same-collector).
func BenchmarkRevocationAcrossCollectors(b *testing.B) {
	const watchers = 1000
	dsn := testtools.Postgres(b)
	a := startCollectorWith(b, func(c *collector.Config) { c.Database = dsn })
	other := b.TempDir()
	for _, f := range []string{"ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(a.dataDir, f))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(other, f), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	bc := &env{t: b, dataDir: other, addr: "127.0.0.1:0", clock: &clock{}, mod: func(c *collector.Config) { c.Database = dsn }}
	bc.start()
	b.Cleanup(bc.stop)
	creds := gatewayCreds(b, a, "bench")
	for _, target := range []struct {
		name string
		e    *env
	}{{"same-collector", a}, {"other-collector", bc}} {
		b.Run(target.name, func(b *testing.B) {
			gen := startChild(b, "gateways", "POSTURE_WATCHGEN_ADDR="+target.e.addr, "POSTURE_WATCHGEN_CREDS="+creds,
				"POSTURE_WATCHGEN_CONNS="+strconv.Itoa(watchers), "POSTURE_WATCHGEN_WATCHERS="+strconv.Itoa(watchers))
			var all []time.Duration
			for b.Loop() {
				b.StopTimer()
				_, id := a.enroll()
				eventually(b, "the device known to the watched collector", func() bool { _, err := target.e.device(id); return err == nil })
				gen.say(b, "watch "+id)
				gen.await(b, "ready")
				runtime.GC()
				b.StartTimer()
				start := time.Now()
				if _, err := a.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "bench"}); err != nil {
					b.Fatal(err)
				}
				got := gen.await(b, "heard")
				b.StopTimer()
				for _, f := range strings.Fields(got) {
					at, err := strconv.ParseInt(f, 10, 64)
					if err != nil {
						b.Fatal(err)
					}
					all = append(all, time.Unix(0, at).Sub(start))
				}
				gen.say(b, "close")
				eventually(b, "watchers gone", func() bool { return target.e.c.Watchers() == 0 })
				b.StartTimer()
			}
			if len(all) != b.N*watchers {
				b.Fatalf("%d arrivals, want %d", len(all), b.N*watchers)
			}
			b.ReportMetric(float64(percentile(all, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkFleetLoadPostgres measures what a collector with a large fleet
// on PostgreSQL costs at start: the time until a posture-collector process
// started on the database serves, and its resident memory then and at its
// peak. POSTURE_SCALE_DEVICES sets the fleet size (default 100000); the
// fleet is written to SQLite and copied into PostgreSQL (store.Copy), once
// per run. The baseline is the same start on an empty database.
func BenchmarkFleetLoadPostgres(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("POSTURE_SCALE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	bin := buildCollector(b)
	seed := filepath.Join(b.TempDir(), "posture.db")
	fillStore(b, seed, n)
	full, empty := testtools.Postgres(b), testtools.Postgres(b)
	ctx := context.Background()
	src, err := sqlite.Open(seed)
	if err != nil {
		b.Fatal(err)
	}
	dst, err := postgres.Open(ctx, full)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if err := store.Copy(ctx, src, dst); err != nil {
		b.Fatal(err)
	}
	b.Logf("copied %d devices into PostgreSQL in %v", n, time.Since(t0).Round(time.Millisecond))
	src.Close()
	dst.Close()
	// The first start claims the database with a CA of its own.
	fullDir, emptyDir := b.TempDir(), b.TempDir()
	var load, base time.Duration
	var rss, hwm uint64
	for b.Loop() {
		t, r, h := startProcessArgs(b, bin, fullDir, "--database", full)
		bt, _, _ := startProcessArgs(b, bin, emptyDir, "--database", empty)
		load, base, rss, hwm = load+t, base+bt, r, h
	}
	runs := time.Duration(b.N)
	b.ReportMetric(float64(n), "devices")
	b.ReportMetric((load / runs).Seconds(), "start-s")
	b.ReportMetric((base / runs).Seconds(), "empty-start-s")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(hwm)/(1<<20), "peak-rss-MiB")
}
