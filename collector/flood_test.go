package collector

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// floodDirEnv names the data directory of the collector that
// TestFloodChild runs for TestEnrollmentFlood.
const floodDirEnv = "POSTURE_FLOOD_DATA_DIR"

// floodLimits are the child collector's limits: the defaults, with the
// waits shortened so that the flood ends in seconds.
var floodLimits = limits{enrollStepWait: 2 * time.Second, enrollWait: 4 * time.Second, maxConnIdle: 2 * time.Second}

// probe is what the child collector says of itself: its live memory (the
// heap after a collection, and goroutine stacks), its resident memory, and
// what clients without a certificate hold.
type probe struct {
	Live, RSS        uint64
	Conns, Streams   int
	Goroutines       int
	AbandonedEnrolls uint64
}

// TestFloodChild is the collector of TestEnrollmentFlood, in a process of
// its own so that the flood's clients are not measured with it. It serves
// until its standard input closes.
func TestFloodChild(t *testing.T) {
	dir := os.Getenv(floodDirEnv)
	if dir == "" {
		t.Skip("the collector of TestEnrollmentFlood; runs only as its child process")
	}
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0"}
	cfg.limits = floodLimits
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		runtime.GC()
		runtime.GC() // the second frees what the first found in pools
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		json.NewEncoder(w).Encode(probe{Live: ms.HeapAlloc + ms.StackInuse, RSS: rss(), Conns: c.anonConns.count(), Streams: c.anonStreams.count(),
			Goroutines: runtime.NumGoroutine(), AbandonedEnrolls: c.stats.Snapshot().EnrollmentsRejected["abandoned"]})
	})}
	go srv.Serve(l)
	fmt.Printf("child: started %s %s\n", c.Addr(), l.Addr())
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// rss is this process's resident memory (VmRSS), or 0 where /proc has
// none.
func rss() uint64 {
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// A flood from one address of idle enrollments (10,000 calls on 4
// connections, sending nothing) and of idle connections without a
// certificate (1,000) leaves the collector as it was: calls beyond the
// limits are refused at once, those within are ended by the enrollment's
// deadline, connections beyond the limits are refused and those within
// closed once idle. Its live memory (heap and stacks) stays within a bound
// while the flood lasts and comes back after it. The collector runs in a process of its
// own, measured by itself; nothing here is timed, only awaited.
func TestEnrollmentFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a collector for some seconds")
	}
	const (
		floodConns   = 4
		floodStreams = 10_000
		idleConns    = 1_000
		// The bounds. Held at once, the flood's calls take some 24 KiB
		// each with their goroutines (240 MiB); the limits let a few
		// dozen through, while a loaded collector may have up to
		// maxStreamsPerConn refused calls a connection still in hand.
		peakGrowth  = 48 << 20
		finalGrowth = 4 << 20
	)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFloodChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), floodDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	out := bufio.NewScanner(stdout)
	var addr, probeAddr string
	for out.Scan() {
		if f := strings.Fields(out.Text()); len(f) == 4 && f[0] == "child:" && f[1] == "started" {
			addr, probeAddr = f[2], f[3]
			break
		}
	}
	go func() { io.Copy(io.Discard, stdout); cmd.Wait(); close(exited) }()
	if addr == "" {
		t.Fatal("the collector process ended before it served")
	}
	ca, err := pki.ReadCertificate(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	measure := func() probe {
		t.Helper()
		resp, err := http.Get("http://" + probeAddr)
		if err != nil {
			t.Fatalf("probe the collector: %v", err)
		}
		defer resp.Body.Close()
		var p probe
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatalf("probe the collector: %v", err)
		}
		return p
	}
	base := measure()
	// Sampled while the flood lasts; every sample is a bound, none a
	// timing.
	var peak probe
	var peakMu sync.Mutex
	sampling, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampling.Err() == nil {
			p := measure()
			peakMu.Lock()
			peak.Live, peak.RSS = max(peak.Live, p.Live), max(peak.RSS, p.RSS)
			peak.Conns, peak.Streams, peak.Goroutines = max(peak.Conns, p.Conns), max(peak.Streams, p.Streams), max(peak.Goroutines, p.Goroutines)
			peakMu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()

	// Idle enrollments: opened all at once, then each read until the
	// collector ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var streams []posturev1.EnrollmentService_EnrollClient
	var streamsMu sync.Mutex
	var wg sync.WaitGroup
	for range floodConns {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", nil))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := posturev1.NewEnrollmentServiceClient(conn)
		for range 4 {
			wg.Go(func() {
				for range floodStreams / floodConns / 4 {
					st, err := client.Enroll(ctx)
					if err != nil {
						t.Errorf("open an enrollment: %v", err)
						return
					}
					streamsMu.Lock()
					streams = append(streams, st)
					streamsMu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	var refused, ended, other atomic.Int64
	work := make(chan posturev1.EnrollmentService_EnrollClient)
	for range 64 {
		wg.Go(func() {
			for st := range work {
				_, err := st.Recv()
				s := status.Convert(err)
				switch {
				case s.Code() == codes.ResourceExhausted:
					refused.Add(1)
				case s.Code() == codes.DeadlineExceeded && s.Message() == "no first enrollment message (EnrollBegin) within 2s; enroll again":
					ended.Add(1)
				case s.Code() == codes.Unavailable && strings.Contains(s.Message(), "max_idle"):
					// A call the client held back for the connection's
					// stream limit, on a connection the collector then
					// closed as idle once it had ended the others.
					refused.Add(1)
				default:
					if other.Add(1) == 1 {
						t.Errorf("an idle enrollment ended with %v; want refused (RESOURCE_EXHAUSTED) or ended by the deadline", err)
					}
				}
			}
		})
	}
	for _, st := range streams {
		work <- st
	}
	close(work)
	wg.Wait()
	streams = nil
	t.Logf("%d idle enrollments: %d refused at once, %d ended by the deadline, %d otherwise", floodStreams, refused.Load(), ended.Load(), other.Load())
	if refused.Load()+ended.Load() != floodStreams || ended.Load() == 0 {
		t.Errorf("of %d idle enrollments %d were refused and %d ended by the deadline; want every one either, some by the deadline", floodStreams, refused.Load(), ended.Load())
	}

	// Idle connections: the TLS handshake and the HTTP/2 preface, then
	// no call; each held until the collector closes it.
	var closed atomic.Int64
	dials := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for range dials {
				conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
				if err != nil {
					// Refused as the handshake ended: closed all the same.
					closed.Add(1)
					continue
				}
				wg.Go(func() {
					defer conn.Close()
					if idleHTTP2(conn) {
						closed.Add(1)
					}
				})
			}
		})
	}
	for range idleConns {
		dials <- struct{}{}
	}
	close(dials)
	wg.Wait()
	if n := closed.Load(); n != idleConns {
		t.Errorf("%d of %d idle connections closed by the collector", n, idleConns)
	}

	stopSampling()
	<-sampled
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	t.Logf("during the flood the collector held at most %d connections and %d calls without a certificate, %d goroutines (%d before); live memory %s (%s before), RSS %s (%s before)",
		peak.Conns, peak.Streams, peak.Goroutines, base.Goroutines, mib(peak.Live), mib(base.Live), mib(peak.RSS), mib(base.RSS))
	var final probe
	within(t, time.Minute, "the collector to release the flood's connections and calls", func() bool {
		final = measure()
		return final.Conns == 0 && final.Streams == 0
	})
	t.Logf("after the flood: live memory %s, RSS %s, %d goroutines", mib(final.Live), mib(final.RSS), final.Goroutines)
	if peak.Streams > anonStreamsPerPeer || peak.Conns > anonConnsPerPeer {
		t.Errorf("the collector held %d calls and %d connections of one address at once; want at most %d and %d", peak.Streams, peak.Conns, anonStreamsPerPeer, anonConnsPerPeer)
	}
	if peak.Live > base.Live+peakGrowth {
		t.Errorf("the collector's live memory grew from %s to %s during the flood; want at most %s more", mib(base.Live), mib(peak.Live), mib(peakGrowth))
	}
	if final.Live > base.Live+finalGrowth {
		t.Errorf("the collector's live memory is %s after the flood, %s before; want at most %s more", mib(final.Live), mib(base.Live), mib(finalGrowth))
	}
}

// idleHTTP2 holds conn as an idle HTTP/2 client does, answering the
// server's settings and pings (keepalive would close it otherwise), and
// says whether the server closed it (rather than the bound on the wait).
func idleHTTP2(conn net.Conn) bool {
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		return true
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		return true
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute)) // a bound on a test that would hang
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return !errors.Is(err, os.ErrDeadlineExceeded)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
	}
}
