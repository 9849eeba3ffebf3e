package e2e

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
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
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/gatewayclient"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p)]
}

// BenchmarkCheckAccess measures CheckAccess over gRPC with mutual TLS on
// loopback, next to a gRPC health check on the same server and connection
// as the baseline; both are timed in the same run, interleaved, so machine
// noise hits them alike. Reported: p50 and p99 of each and their ratio.
func BenchmarkCheckAccess(b *testing.B) {
	e := startCollector(b)
	stateDir, id := e.enroll()
	runAgent(b, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(b, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	conn := e.gatewayConn("bench")
	gw, health := posturev1.NewGatewayServiceClient(conn), healthpb.NewHealthClient(conn)
	ctx := context.Background()
	req := &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"}

	for _, inflight := range []int{1, 16} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			var mu sync.Mutex
			var base, check []time.Duration
			var wg sync.WaitGroup
			per := max(b.N/inflight, 1)
			b.ResetTimer()
			for range inflight {
				wg.Add(1)
				go func() {
					defer wg.Done()
					bl, cl := make([]time.Duration, 0, per), make([]time.Duration, 0, per)
					for range per {
						t0 := time.Now()
						if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
							b.Error(err)
							return
						}
						t1 := time.Now()
						r, err := gw.CheckAccess(ctx, req)
						if err != nil || !r.GetAllowed() {
							b.Errorf("CheckAccess: %v %v", err, r.GetReasons())
							return
						}
						bl, cl = append(bl, t1.Sub(t0)), append(cl, time.Since(t1))
					}
					mu.Lock()
					base, check = append(base, bl...), append(check, cl...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			b.StopTimer()
			if len(check) == 0 {
				return
			}
			bp50, bp99 := percentile(base, 0.50), percentile(base, 0.99)
			cp50, cp99 := percentile(check, 0.50), percentile(check, 0.99)
			b.ReportMetric(float64(cp50.Microseconds()), "check-p50-µs")
			b.ReportMetric(float64(cp99.Microseconds()), "check-p99-µs")
			b.ReportMetric(float64(bp50.Microseconds()), "health-p50-µs")
			b.ReportMetric(float64(bp99.Microseconds()), "health-p99-µs")
			b.ReportMetric(float64(cp99)/float64(bp99), "p99-ratio")
		})
	}
}

// BenchmarkCheckAccessServerSide measures the decision the collector makes
// for CheckAccess, in process, without the network.
func BenchmarkCheckAccessServerSide(b *testing.B) {
	e := startCollector(b)
	stateDir, id := e.enroll()
	runAgent(b, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(b, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	req := &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r, err := e.c.CheckAccess(ctx, req); err != nil || !r.GetAllowed() {
			b.Fatal(err, r.GetReasons())
		}
	}
}

// BenchmarkIngest measures signed reports verified and durably stored per
// second over 100 concurrent agent streams, next to signature verification
// alone as the baseline, in the same run.
//
// The agents run in a separate process, as they do in the field: it signs
// and sends, the collector in this process verifies and stores. Both share
// this machine's cores, so besides the wall-clock rate the collector's own
// CPU time per stored report is read from the kernel (getrusage), and its
// capacity on these cores follows from it: GOMAXPROCS seconds of CPU per
// second over the CPU time per report. The baseline is measured the same
// way, so the ratio compares like with like.
func BenchmarkIngest(b *testing.B) {
	const streams = 100
	// Agents sending back to back, for as long as the benchmark runs: the
	// budget's check is measured, its limit must not end the run.
	e := startCollectorWith(b, func(c *collector.Config) { c.ReportBurst = 1_000_000 })
	var agents []string
	for range streams {
		dir, id := e.enroll()
		agents = append(agents, id+"="+dir)
	}
	key := func() *ecdsa.PrivateKey { _, k := deviceCreds(b, strings.SplitN(agents[0], "=", 2)[1]); return k }()
	body, _ := proto.Marshal(healthyReport(true, "bench"))
	sr, _ := envelope.SignSoftware(key, []byte("nonce"), body)
	cores := float64(runtime.GOMAXPROCS(0))

	// Baseline: verification alone, in parallel on the same cores.
	var verifyCPU time.Duration
	b.Run("verify-only", func(b *testing.B) {
		cpu0 := processCPU(b)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := envelope.VerifySoftware(&key.PublicKey, sr); err != nil {
					b.Fatal(err)
				}
			}
		})
		verifyCPU = (processCPU(b) - cpu0) / time.Duration(b.N)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
		b.ReportMetric(float64(verifyCPU.Nanoseconds())/1000, "cpu-µs/report")
		b.ReportMetric(cores/verifyCPU.Seconds(), "capacity-reports/s")
	})
	b.Run("verify-and-store", func(b *testing.B) {
		per := max(b.N/streams, 1)
		gen := startChild(b, "agents", "POSTURE_LOADGEN_ADDR="+e.addr, "POSTURE_LOADGEN_AGENTS="+strings.Join(agents, ","),
			"POSTURE_LOADGEN_REPORTS="+strconv.Itoa(per))
		b.ResetTimer()
		cpu0 := processCPU(b)
		gen.say(b, "go")
		gen.await(b, "done")
		cpu := (processCPU(b) - cpu0) / time.Duration(per*streams)
		b.StopTimer()
		b.ReportMetric(float64(per*streams)/b.Elapsed().Seconds(), "reports/s")
		b.ReportMetric(float64(cpu.Nanoseconds())/1000, "cpu-µs/report")
		b.ReportMetric(cores/cpu.Seconds(), "capacity-reports/s")
		if verifyCPU > 0 {
			b.ReportMetric(verifyCPU.Seconds()/cpu.Seconds(), "capacity-ratio")
		}
	})
}

// processCPU is the CPU time this process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// child is this test binary run again as another process that plays agents
// or gateways (see TestMain) and talks over its stdin and stdout.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startChild(b *testing.B, role string, env ...string) *child {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), append(env, "POSTURE_BENCH_CHILD="+role)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	g := &child{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	g.out.Buffer(nil, 16<<20)
	b.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	g.await(b, "started")
	return g
}

// say sends the child one line.
func (g *child) say(b *testing.B, line string) {
	if _, err := io.WriteString(g.stdin, line+"\n"); err != nil {
		b.Fatal(err)
	}
}

// await reads the child's output until it says word, and returns the rest
// of that line.
func (g *child) await(b *testing.B, word string) string {
	for g.out.Scan() {
		l := g.out.Text()
		if rest, ok := strings.CutPrefix(l, "child: "+word); ok {
			return rest
		}
		if strings.HasPrefix(l, "child: error") {
			b.Fatal(l)
		}
	}
	b.Fatalf("child process exited before %q", word)
	return ""
}

// TestMain runs this binary as a benchmark's child process when asked to.
func TestMain(m *testing.M) {
	switch os.Getenv("POSTURE_BENCH_CHILD") {
	case "agents":
		agentsChild()
	case "gateways":
		gatewaysChild()
	case "storm-agents":
		stormAgentsChild()
	case "storm-streams":
		stormStreamsChild()
	case "storm-gateway":
		stormGatewayChild()
	default:
		// Runs the tests, then stops PostgreSQL if a test started it and
		// removes the binaries the tests built.
		testtools.PostgresMain(m, removeBuiltBinaries)
	}
}

// agentsChild is the agents' side of BenchmarkIngest.
func agentsChild() {
	addr := os.Getenv("POSTURE_LOADGEN_ADDR")
	fail := childFail
	per, _ := strconv.Atoi(os.Getenv("POSTURE_LOADGEN_REPORTS"))
	var clients []*reportClient
	for _, a := range strings.Split(os.Getenv("POSTURE_LOADGEN_AGENTS"), ",") {
		id, dir, _ := strings.Cut(a, "=")
		roots, err := readRoots(filepath.Join(dir, "ca.crt"))
		if err != nil {
			fail(err)
		}
		cert, key, err := loadDeviceCreds(dir)
		if err != nil {
			fail(err)
		}
		// The same options the agent dials with.
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, trustDomain, &cert))), grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
		if err != nil {
			fail(err)
		}
		defer conn.Close()
		c, err := startReports(conn, key, id)
		if err != nil {
			fail(err)
		}
		clients = append(clients, c)
	}
	fmt.Println("child: started")
	if l, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || l != "go\n" {
		return
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				r := healthyReport(true, "bench")
				r.DeviceId, r.Seq, r.PrevDigest, r.CreatedAt = c.id, c.seq+1, c.digest, timestamppb.Now()
				body, _ := proto.Marshal(r)
				sr, _ := envelope.SignSoftware(c.key, c.nonce, body)
				if err := c.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: sr}}); err != nil {
					errs <- err
					return
				}
				m, err := c.st.Recv()
				if err != nil || m.GetAck() == nil {
					errs <- fmt.Errorf("answer %v: %v", m, err)
					return
				}
				a := m.GetAck()
				c.seq, c.digest, c.nonce = a.GetSeq(), a.GetDigest(), a.GetNextNonce()
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		fail(err)
	}
	fmt.Println("child: done")
}

// BenchmarkRevocationToWatchers measures the time from a revocation to its
// arrival at each of 1,000 watchers (p50, p99). The watchers run in a
// separate process, as gateways do: on their own connections (1,000
// gateways) and all multiplexed on one connection (every event then
// passes one HTTP/2 writer and one reader). Each round opens the watchers
// afresh, lets the collector collect the garbage of that, and times one
// revocation against the receiving process's clock (the same machine's).
func BenchmarkRevocationToWatchers(b *testing.B) {
	const watchers = 1000
	e := startCollector(b)
	creds := gatewayCreds(b, e, "bench")
	for _, conns := range []int{watchers, 1} {
		b.Run(fmt.Sprintf("connections=%d", conns), func(b *testing.B) {
			gen := startChild(b, "gateways", "POSTURE_WATCHGEN_ADDR="+e.addr, "POSTURE_WATCHGEN_CREDS="+creds,
				"POSTURE_WATCHGEN_CONNS="+strconv.Itoa(conns), "POSTURE_WATCHGEN_WATCHERS="+strconv.Itoa(watchers))
			var all []time.Duration
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				_, id := e.enroll()
				gen.say(b, "watch "+id)
				gen.await(b, "ready")
				runtime.GC()
				b.StartTimer()
				cpu0, start := processCPU(b), time.Now()
				if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "bench"}); err != nil {
					b.Fatal(err)
				}
				got := gen.await(b, "heard")
				cpu += processCPU(b) - cpu0
				b.StopTimer()
				for _, f := range strings.Fields(got) {
					at, err := strconv.ParseInt(f, 10, 64)
					if err != nil {
						b.Fatal(err)
					}
					all = append(all, time.Unix(0, at).Sub(start))
				}
				gen.say(b, "close")
				eventually(b, "watchers gone", func() bool { return e.c.Watchers() == 0 })
				b.StartTimer()
			}
			if len(all) != b.N*watchers {
				b.Fatalf("%d arrivals, want %d", len(all), b.N*watchers)
			}
			b.ReportMetric(float64(percentile(all, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64((cpu/time.Duration(b.N)).Microseconds())/1000, "collector-cpu-ms")
		})
	}
}

// gatewayCreds issues a gateway certificate and writes it, its key and the
// collector CA into a directory for a child process.
func gatewayCreds(b *testing.B, e *env, name string) string {
	cert := e.gatewayCert(name)
	dir := b.TempDir()
	for _, err := range []error{
		pki.WriteCertificates(filepath.Join(dir, "gateway.crt"), cert.Leaf),
		pki.WritePrivateKey(filepath.Join(dir, "gateway.key"), cert.PrivateKey.(crypto.Signer)),
		pki.WriteCertificates(filepath.Join(dir, "ca.crt"), e.c.CA()),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// gatewaysChild is the gateways' side of BenchmarkRevocationToWatchers. For
// each "watch ID" line it opens its watchers, says "ready", and once every one
// has heard that ID was revoked, says "heard" with the arrival times (Unix
// nanoseconds); "close" ends that round's watchers.
func gatewaysChild() {
	addr := os.Getenv("POSTURE_WATCHGEN_ADDR")
	dir := os.Getenv("POSTURE_WATCHGEN_CREDS")
	nConns, _ := strconv.Atoi(os.Getenv("POSTURE_WATCHGEN_CONNS"))
	n, _ := strconv.Atoi(os.Getenv("POSTURE_WATCHGEN_WATCHERS"))
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "gateway.key"))
	if err != nil {
		childFail(err)
	}
	roots, err := readRoots(filepath.Join(dir, "ca.crt"))
	if err != nil {
		childFail(err)
	}
	gws := make([]posturev1.GatewayServiceClient, nConns)
	for i := range gws {
		conn, err := grpc.NewClient(addr, append(gatewayclient.DialOptions(), grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, trustDomain, &cert))))...)
		if err != nil {
			childFail(err)
		}
		defer conn.Close()
		gws[i] = posturev1.NewGatewayServiceClient(conn)
	}
	fmt.Println("child: started")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		id, ok := strings.CutPrefix(in.Text(), "watch ")
		if !ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		streams := make([]posturev1.GatewayService_WatchPostureClient, n)
		for i := range streams {
			st, err := gws[i%nConns].WatchPosture(ctx, &posturev1.WatchPostureRequest{})
			if err != nil {
				childFail(err)
			}
			for {
				ev, err := st.Recv()
				if err != nil {
					childFail(err)
				}
				if ev.GetSnapshotEnd() != nil {
					break
				}
			}
			streams[i] = st
		}
		heard := make([]int64, n)
		var wg sync.WaitGroup
		for i, st := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					ev, err := st.Recv()
					if err != nil {
						return
					}
					if d := ev.GetDevice(); d.GetDeviceId() == id && d.GetState() == posturev1.DeviceState_DEVICE_STATE_REVOKED {
						heard[i] = time.Now().UnixNano()
						return
					}
				}
			}()
		}
		runtime.GC()
		fmt.Println("child: ready")
		wg.Wait()
		out := make([]string, n)
		for i, at := range heard {
			out[i] = strconv.FormatInt(at, 10)
		}
		fmt.Println("child: heard " + strings.Join(out, " "))
		in.Scan() // "close", or the end of input
		cancel()
	}
}

// readRoots reads the collector CA a child process trusts.
func readRoots(path string) (*x509.CertPool, error) {
	certs, err := pki.ReadCertificates(path)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	for _, c := range certs {
		roots.AddCert(c)
	}
	return roots, nil
}

func childFail(err error) {
	fmt.Println("child: error", err)
	os.Exit(1)
}
