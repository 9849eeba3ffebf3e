package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
)

// BenchmarkFleetLoad measures what a collector with a large fleet costs at
// start: the time to load every device and its latest report into memory,
// and the heap that posture cache takes per device. POSTURE_SCALE_DEVICES
// sets the fleet size (default 100000); the database is built once per
// run. The baseline is the same start with an empty fleet.
func BenchmarkFleetLoad(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("POSTURE_SCALE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	dir := b.TempDir()
	fillStore(b, filepath.Join(dir, "posture.db"), n)
	empty := b.TempDir()

	start := func(dataDir string) (time.Duration, uint64) {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		t0 := time.Now()
		c, err := collector.New(collector.Config{DataDir: dataDir, Listen: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		runtime.GC()
		runtime.ReadMemStats(&after)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		c.Serve(ctx) // closes listeners and the store
		return took, after.HeapAlloc - min(before.HeapAlloc, after.HeapAlloc)
	}
	var load, base time.Duration
	var heap uint64
	for b.Loop() {
		t, h := start(dir)
		bt, _ := start(empty)
		load, heap, base = load+t, h, base+bt
	}
	runs := time.Duration(b.N)
	b.ReportMetric(float64(n), "devices")
	b.ReportMetric((load / runs).Seconds(), "load-s")
	b.ReportMetric((base / runs).Seconds(), "empty-start-s")
	b.ReportMetric(float64(heap)/float64(n), "heap-B/device")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
}

// fillStore writes n enrolled devices, each with one report, through the
// store's batching writer.
func fillStore(b *testing.B, path string, n int) {
	st, err := store.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	secret := "scale"
	if err := st.CreateToken(ctx, store.Token{Hash: token.Hash(secret), CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Uses: uint32(n)}); err != nil {
		b.Fatal(err)
	}
	key, _ := pki.NewKey()
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	const workers = 64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				id := fmt.Sprintf("%032x", i)
				if _, err := st.EnrollDevice(ctx, token.Hash(secret), time.Now(), store.Device{ID: id, Hostname: "host-" + id[24:], Platform: "linux",
					Identity: "software", IdentityKey: pub, Assurance: 1, State: 1, CertSerial: "1"}); err != nil {
					errs <- err
					return
				}
				r := healthyReport(i%2 == 0, "6.1.0")
				r.DeviceId, r.Seq, r.CreatedAt = id, 1, timestamppb.Now()
				body, _ := proto.Marshal(r)
				digest := sha256.Sum256(body)
				if err := st.AppendReport(ctx, store.Report{DeviceID: id, Seq: 1, Digest: digest[:], Nonce: digest[:8], Body: body, Proof: digest[:], ReceivedAt: time.Now()}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}
