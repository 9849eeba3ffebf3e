package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// BenchmarkFleetLoad measures what a collector with a large fleet costs at
// start: the time until a posture-collector process, started on a data
// directory holding the fleet, serves; its resident memory then (VmRSS) and
// at its peak (VmHWM); and, in this process, the heap the posture cache
// takes per device. POSTURE_SCALE_DEVICES sets the fleet size (default
// 100000); the database is built once per run. The baseline is the same
// start with an empty fleet, measured in the same run.
func BenchmarkFleetLoad(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("POSTURE_SCALE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	bin := buildCollector(b)
	dir := b.TempDir()
	fillStore(b, filepath.Join(dir, "posture.db"), n)
	empty := b.TempDir()

	heapOf := func(dataDir string) uint64 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c, err := collector.New(collector.Config{DataDir: dataDir, Listen: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		c.Serve(ctx) // closes listeners and the store
		return after.HeapAlloc - min(before.HeapAlloc, after.HeapAlloc)
	}
	heap, emptyHeap := heapOf(dir), heapOf(empty)

	var load, base time.Duration
	var rss, hwm, emptyRSS uint64
	for b.Loop() {
		t, r, h := startProcess(b, bin, dir)
		bt, er, _ := startProcess(b, bin, empty)
		load, base, rss, hwm, emptyRSS = load+t, base+bt, r, h, er
	}
	runs := time.Duration(b.N)
	b.ReportMetric(float64(n), "devices")
	b.ReportMetric((load / runs).Seconds(), "start-s")
	b.ReportMetric((base / runs).Seconds(), "empty-start-s")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(hwm)/(1<<20), "peak-rss-MiB")
	b.ReportMetric(float64(emptyRSS)/(1<<20), "empty-rss-MiB")
	b.ReportMetric(float64(heap-min(emptyHeap, heap))/float64(n), "heap-B/device")
}

// buildCollector builds posture-collector into a temporary directory.
func buildCollector(b testing.TB) string {
	bin := filepath.Join(b.TempDir(), "posture-collector")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/posture-project/posture/collector/cmd/posture-collector").CombinedOutput()
	if err != nil {
		b.Fatalf("build posture-collector: %v\n%s", err, out)
	}
	return bin
}

// startProcess runs a collector on dataDir until it serves and returns how
// long that took and its resident memory then and at its peak.
func startProcess(b *testing.B, bin, dataDir string) (took time.Duration, rss, hwm uint64) {
	return startProcessArgs(b, bin, dataDir)
}

// startProcessArgs is startProcess with more arguments for run.
func startProcessArgs(b *testing.B, bin, dataDir string, args ...string) (took time.Duration, rss, hwm uint64) {
	cmd := exec.Command(bin, append([]string{"run", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--log-format", "json"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		if strings.Contains(lines.Text(), `"collector serving"`) {
			took = time.Since(t0)
			break
		}
	}
	if took == 0 {
		b.Fatalf("collector exited before serving")
	}
	go io.Copy(io.Discard, stderr)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Skipf("no /proc here: %v", err)
	}
	return took, procKB(status, "VmRSS:") << 10, procKB(status, "VmHWM:") << 10
}

// procKB reads one "Name:   123 kB" line of /proc/PID/status.
func procKB(status []byte, name string) uint64 {
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == name {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// fillStore writes n enrolled devices, each with one report, through the
// store's batching writer.
func fillStore(b testing.TB, path string, n int) {
	st, err := sqlite.Open(path)
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
				if _, _, err := st.EnrollDevice(ctx, token.Hash(secret), time.Now(), store.Device{ID: id, Hostname: "host-" + id[24:], Platform: "linux",
					Identity: "software", IdentityKey: pub, Assurance: 1, State: 1, CertSerial: "1"}); err != nil {
					errs <- err
					return
				}
				r := healthyReport(i%2 == 0, "6.1.0")
				r.DeviceId, r.Seq, r.CreatedAt = id, 1, timestamppb.Now()
				body, _ := proto.Marshal(r)
				digest := sha256.Sum256(body)
				h, err := st.OpenReportStream(ctx, id)
				if err != nil {
					errs <- err
					return
				}
				if _, err := st.AppendReport(ctx, store.Report{DeviceID: id, Seq: 1, Digest: digest[:], Nonce: digest[:8], Body: body, Proof: digest[:], ReceivedAt: time.Now(), Stream: h.Stream}); err != nil {
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

// A fleet larger than one message lists page by page, every device once,
// in ID order, through the API and through posture-collector devices list.
func TestDevicesListPages(t *testing.T) {
	const n = 1203
	e := &env{t: t, dataDir: t.TempDir(), addr: "127.0.0.1:0", clock: &clock{}}
	fillStore(t, filepath.Join(e.dataDir, "posture.db"), n)
	e.start()
	t.Cleanup(e.stop)
	ctx := context.Background()

	var ids, sizes []string
	for token := ""; ; {
		resp, err := e.admin.ListDevices(ctx, &posturev1.ListDevicesRequest{PageSize: 500, PageToken: token})
		if err != nil {
			t.Fatalf("ListDevices: %v", err)
		}
		sizes = append(sizes, strconv.Itoa(len(resp.GetDevices())))
		for _, d := range resp.GetDevices() {
			ids = append(ids, d.GetDevice().GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if got := strings.Join(sizes, ","); got != "500,500,203" {
		t.Errorf("page sizes %s, want 500,500,203", got)
	}
	if len(ids) != n || !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != n {
		t.Errorf("listed %d devices (sorted %v), want each of %d once in order", len(ids), slices.IsSorted(ids), n)
	}
	if _, err := e.admin.ListDevices(ctx, &posturev1.ListDevicesRequest{PageSize: 5001}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("page_size 5001: %v, want InvalidArgument", err)
	}

	out, err := exec.Command(buildCollector(t), "devices", "list", "--data-dir", e.dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("devices list: %v\n%s", err, out)
	}
	if lines := strings.Count(string(out), "\n"); lines != n+1 {
		t.Errorf("devices list printed %d lines, want a header and %d devices", lines, n)
	}
}
