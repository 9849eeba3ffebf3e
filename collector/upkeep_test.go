package collector

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
)

// BenchmarkFleetUpkeep measures the work a large fleet costs a running
// collector besides its reports: the decay pass that re-evaluates every
// device every 15 s, and what a gateway's WatchPosture subscription holds
// the hub lock for (every report waits for it) and then renders outside
// it. POSTURE_SCALE_DEVICES sets the fleet size (default 100000).
func BenchmarkFleetUpkeep(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("POSTURE_SCALE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	dir := b.TempDir()
	fillFleet(b, filepath.Join(dir, "posture.db"), n)
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer stopCollectorForTest(c)
	b.Run("decay-pass", func(b *testing.B) {
		for b.Loop() {
			c.decayPass()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/device")
	})
	b.Run("watch-snapshot", func(b *testing.B) {
		var locked, render time.Duration
		for b.Loop() {
			t0 := time.Now()
			w, _, snap, rev, _ := c.subscribe(0)
			t1 := time.Now()
			for _, e := range snap {
				_ = c.snapshotEvent(e, rev)
			}
			locked, render = locked+t1.Sub(t0), render+time.Since(t1)
			c.unsubscribe(w)
		}
		b.ReportMetric(float64(locked.Milliseconds())/float64(b.N), "hub-locked-ms")
		b.ReportMetric(float64(render.Milliseconds())/float64(b.N), "render-ms")
	})
}

// fillFleet writes n enrolled software devices, each with one report.
func fillFleet(b *testing.B, path string, n int) {
	st, err := store.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx, now := context.Background(), time.Now()
	if err := st.CreateToken(ctx, store.Token{Hash: token.Hash("s"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: uint32(n)}); err != nil {
		b.Fatal(err)
	}
	key, _ := pki.NewKey()
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	const workers = 64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n && errs[w] == nil; i += workers {
				id := fmt.Sprintf("%032x", i)
				if _, errs[w] = st.EnrollDevice(ctx, token.Hash("s"), now, store.Device{ID: id, Identity: "software", IdentityKey: pub, Assurance: 1, State: 1}); errs[w] == nil {
					errs[w] = st.AppendReport(ctx, testReport(id, 1, i%2 == 0, now))
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}
