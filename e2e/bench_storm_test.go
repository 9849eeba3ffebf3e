package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// stormAgents is how many agents reconnect at once in
// BenchmarkReconnectStorm.
const stormAgents = 1000

// BenchmarkReconnectStorm measures CheckAccess (gRPC, mutual TLS, on
// loopback) while 1,000 agent streams reconnect at once, next to the same
// measurement on the same collector just before, quiet with the 1,000
// streams open: the storm's p99, the quiet p99, and their ratio, from one
// run. A gateway asks from a process of its own (the test binary started
// again) on a connection of its own, about 2,000 calls a second from four
// callers. The agents run in another such process at the lowest CPU
// priority: in the field they are other machines, and here their TLS
// handshakes would otherwise take the collector's cores (their CPU time
// is reported apart).
//
//   - restart: real agents (agent.Agent with its default reconnect
//     backoff) reconnect after a collector restart: a TLS handshake and a
//     new report stream each. The storm lasts from the first stream back
//     to the last.
//   - streams-only: the same 1,000 devices open new report streams all at
//     once on connections already up: the collector's part of a reconnect
//     without the TLS handshake, the expensive part, and with no backoff
//     to spread them. The storm lasts until every stream has its welcome.
//
// Also reported: the CPU time one reconnect costs the collector
// (collector-cpu-ms/reconnect: this process, less the gateway's calls at
// the rate measured while quiet) and the agents (agent-cpu-ms/reconnect).
func BenchmarkReconnectStorm(b *testing.B) {
	e := startCollector(b)
	dirs := enrollMany(b, e, stormAgents)
	list := filepath.Join(b.TempDir(), "agents")
	if err := os.WriteFile(list, []byte(strings.Join(dirs, "\n")), 0o600); err != nil {
		b.Fatal(err)
	}
	creds := gatewayCreds(b, e, "bench")
	// The device the gateway asks about: one of its own, which reported,
	// so that it is allowed whatever the storms' devices do.
	probeDir, id := e.enroll()
	cert, key := deviceCreds(b, probeDir)
	if r := openReports(b, e, cert, key, id); r.send(r.next()).GetAck() == nil {
		b.Fatal("the report of the device the gateway asks about was not acknowledged")
	}

	gateway := func(b *testing.B) *child {
		return startChild(b, "storm-gateway", "POSTURE_STORM_ADDR="+e.addr, "POSTURE_STORM_CREDS="+creds, "POSTURE_STORM_DEVICE="+id)
	}

	b.Run("restart", func(b *testing.B) {
		gen := startChild(b, "storm-agents", "POSTURE_STORM_AGENTS="+list)
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, gen.cmd.Process.Pid, 19); err != nil {
			b.Fatal(err)
		}
		waitStreams(b, e, stormAgents, time.Minute)
		gw := gateway(b)
		var r stormResult
		for b.Loop() {
			r.quiet(b, gw)
			// Every stream ends at once; the agents come back as their
			// backoff lets them.
			e.stop()
			r.storm(b, gw, gen, e.start, func(began func()) (time.Time, time.Time) {
				return watchStreams(b, e, stormAgents, 2*time.Minute, began)
			})
		}
		r.report(b)
	})
	b.Run("streams-only", func(b *testing.B) {
		gen := startChild(b, "storm-streams", "POSTURE_STORM_AGENTS="+list, "POSTURE_STORM_ADDR="+e.addr)
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, gen.cmd.Process.Pid, 19); err != nil {
			b.Fatal(err)
		}
		gw := gateway(b)
		var r stormResult
		for b.Loop() {
			r.quiet(b, gw)
			r.storm(b, gw, gen, func() {}, func(began func()) (time.Time, time.Time) {
				began()
				start := time.Now()
				gen.say(b, "reopen")
				gen.await(b, "reopened")
				return start, time.Now()
			})
		}
		r.report(b)
	})
}

// stormResult gathers the rounds of one storm benchmark.
type stormResult struct {
	quietCalls, stormCalls []time.Duration
	quietCPU, quietLen     time.Duration // this process's CPU while quiet, and how long
	stormCPU, agentCPU     time.Duration // this process's and the agents' CPU during storms
	stormLen               time.Duration
	reconnects             int
}

// quiet measures CheckAccess for 3 s.
func (r *stormResult) quiet(b *testing.B, gw *child) {
	start(b, gw)
	cpu0, t0 := processCPU(b), time.Now()
	time.Sleep(3 * time.Second)
	r.quietCPU += processCPU(b) - cpu0
	r.quietLen += time.Since(t0)
	r.quietCalls = append(r.quietCalls, stop(b, gw, time.Time{}, time.Now())...)
}

// storm runs setup, then measures CheckAccess while storm runs and says
// when the storm began and ended; storm calls began as it begins, when
// the CPU time it costs starts to count.
func (r *stormResult) storm(b *testing.B, gw, gen *child, setup func(), storm func(began func()) (first, last time.Time)) {
	setup()
	start(b, gw)
	var cpu0, agents0 time.Duration
	first, last := storm(func() { cpu0, agents0 = processCPU(b), childCPU(b, gen) })
	r.stormCPU += processCPU(b) - cpu0
	r.agentCPU += childCPU(b, gen) - agents0
	r.stormLen += last.Sub(first)
	r.stormCalls = append(r.stormCalls, stop(b, gw, first, last)...)
	r.reconnects += stormAgents
}

// start has the gateway connect afresh and start asking.
func start(b *testing.B, gw *child) {
	gw.say(b, "start")
	gw.await(b, "asking")
}

// stop has the gateway stop asking, and returns how long its calls made
// from from (zero: from the start) to to took.
func stop(b *testing.B, gw *child, from, to time.Time) []time.Duration {
	gw.say(b, "stop")
	var out []time.Duration
	for _, f := range strings.Fields(gw.await(b, "calls")) {
		var at, took int64
		if _, err := fmt.Sscanf(f, "%d:%d", &at, &took); err != nil {
			b.Fatalf("gateway's call %q: %v", f, err)
		}
		if t := time.Unix(0, at); !t.Before(from) && !t.After(to) {
			out = append(out, time.Duration(took))
		}
	}
	if len(out) == 0 {
		b.Fatalf("no CheckAccess call between %s and %s", from.Format(time.StampMilli), to.Format(time.StampMilli))
	}
	return out
}

func (r *stormResult) report(b *testing.B) {
	qp99, sp99 := percentile(r.quietCalls, 0.99), percentile(r.stormCalls, 0.99)
	b.ReportMetric(float64(qp99.Microseconds())/1000, "quiet-p99-ms")
	b.ReportMetric(float64(sp99.Microseconds())/1000, "storm-p99-ms")
	b.ReportMetric(float64(sp99)/float64(qp99), "storm/quiet-p99")
	b.ReportMetric(float64(percentile(r.quietCalls, 0.5).Microseconds())/1000, "quiet-p50-ms")
	b.ReportMetric(float64(percentile(r.stormCalls, 0.5).Microseconds())/1000, "storm-p50-ms")
	b.ReportMetric((r.stormLen / time.Duration(b.N)).Seconds(), "storm-s")
	// The gateway's share of this process's CPU, at the rate measured
	// while quiet, is not the collector's cost of the reconnects.
	gateway := time.Duration(float64(r.quietCPU) / float64(r.quietLen) * float64(r.stormLen))
	b.ReportMetric(float64((r.stormCPU-gateway)/time.Duration(r.reconnects))/1e6, "collector-cpu-ms/reconnect")
	b.ReportMetric(float64(r.agentCPU/time.Duration(r.reconnects))/1e6, "agent-cpu-ms/reconnect")
}

// childCPU is the CPU time, user and system, a child process has used.
func childCPU(b *testing.B, c *child) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (100 a second on Linux).
	var utime, stime int64
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	if _, err := fmt.Sscanf(strings.Join(strings.Fields(rest)[11:13], " "), "%d %d", &utime, &stime); err != nil {
		b.Fatalf("read the CPU time of process %d: %v", c.cmd.Process.Pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// enrollMany enrolls n state directories with one token, a few at a time.
func enrollMany(b *testing.B, e *env, n int) []string {
	tok := e.token(time.Hour, uint32(n))
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = b.TempDir()
	}
	errs := make(chan error, n)
	work := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for dir := range work {
				if _, err := agent.Enroll(context.Background(), dir, tok); err != nil {
					errs <- err
				}
			}
		})
	}
	for _, dir := range dirs {
		work <- dir
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("enroll: %v", err)
	}
	return dirs
}

// waitStreams waits until the collector has n report streams open.
func waitStreams(b *testing.B, e *env, n int, within time.Duration) {
	eventuallyWithin(b, within, fmt.Sprintf("%d report streams", n), func() bool { return e.stats().GetStreamsOpen() >= uint64(n) })
}

// watchStreams waits until the collector has n report streams open, and
// returns when the first one was (first seen: then it calls began) and
// when the n-th was.
func watchStreams(b *testing.B, e *env, n int, within time.Duration, began func()) (first, last time.Time) {
	deadline := time.Now().Add(within)
	for {
		open := e.stats().GetStreamsOpen()
		now := time.Now()
		if open > 0 && first.IsZero() {
			first = now
			began()
		}
		if open >= uint64(n) {
			return first, now
		}
		if now.After(deadline) {
			b.Fatalf("%d of %d report streams back after %s", open, n, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stormGatewayChild is the gateway of BenchmarkReconnectStorm: at each
// "start" it connects afresh with the gateway certificate in
// POSTURE_STORM_CREDS, waits until CheckAccess about POSTURE_STORM_DEVICE
// answers, says "asking", and asks from four callers, each every 2 ms,
// until "stop"; then it says "calls" with each call's start (Unix
// nanoseconds) and duration (nanoseconds) as START:TOOK.
func stormGatewayChild() {
	addr, dir := os.Getenv("POSTURE_STORM_ADDR"), os.Getenv("POSTURE_STORM_CREDS")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "gateway.key"))
	if err != nil {
		childFail(err)
	}
	roots, err := readRoots(filepath.Join(dir, "ca.crt"))
	if err != nil {
		childFail(err)
	}
	req := &posturev1.CheckAccessRequest{DeviceId: os.Getenv("POSTURE_STORM_DEVICE"), AccessLevel: "basic"}
	fmt.Println("child: started")
	for in := bufio.NewScanner(os.Stdin); in.Scan(); {
		if in.Text() != "start" {
			continue
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, trustDomain, &cert))))
		if err != nil {
			childFail(err)
		}
		gw := posturev1.NewGatewayServiceClient(conn)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			r, err := gw.CheckAccess(context.Background(), req)
			if err == nil && r.GetAllowed() {
				break
			}
			if time.Now().After(deadline) {
				childFail(fmt.Errorf("CheckAccess: %v %v", err, r.GetReasons()))
			}
		}
		runtime.GC()
		done := make(chan struct{})
		var (
			mu    sync.Mutex
			calls []string
			wg    sync.WaitGroup
		)
		for range 4 {
			wg.Go(func() {
				tick := time.NewTicker(2 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
					}
					t0 := time.Now()
					r, err := gw.CheckAccess(context.Background(), req)
					took := time.Since(t0)
					if err != nil || !r.GetAllowed() {
						childFail(fmt.Errorf("CheckAccess: %v %v", err, r.GetReasons()))
					}
					mu.Lock()
					calls = append(calls, fmt.Sprintf("%d:%d", t0.UnixNano(), took.Nanoseconds()))
					mu.Unlock()
				}
			})
		}
		fmt.Println("child: asking")
		for in.Scan() && in.Text() != "stop" {
		}
		close(done)
		wg.Wait()
		conn.Close()
		fmt.Println("child: calls " + strings.Join(calls, " "))
	}
}

// stormDirs reads the state directories a storm child plays.
func stormDirs() []string {
	data, err := os.ReadFile(os.Getenv("POSTURE_STORM_AGENTS"))
	if err != nil {
		childFail(err)
	}
	return strings.Fields(string(data))
}

// stormAgentsChild is the agents' side of BenchmarkReconnectStorm/restart:
// a real agent per state directory, with the default reconnect backoff,
// until its input ends.
func stormAgentsChild() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, dir := range stormDirs() {
		a, err := agent.New(agent.Config{StateDir: dir, Interval: time.Hour, Measurer: &fixedMeasurer{encrypted: true}})
		if err != nil {
			childFail(err)
		}
		wg.Go(func() { a.Run(ctx) })
	}
	fmt.Println("child: started")
	for in := bufio.NewScanner(os.Stdin); in.Scan(); {
	}
	cancel()
	wg.Wait()
}

// stormStreamsChild is the devices' side of
// BenchmarkReconnectStorm/streams-only: a connection per state directory,
// each with a report stream open; at each "reopen" every device opens a
// new stream at the same instant, and once all have their welcome the
// child says "reopened".
func stormStreamsChild() {
	addr := os.Getenv("POSTURE_STORM_ADDR")
	dirs := stormDirs()
	type device struct {
		conn   *grpc.ClientConn
		cancel context.CancelFunc
	}
	open := func(d *device) error {
		ctx, cancel := context.WithCancel(context.Background())
		st, err := posturev1.NewReportServiceClient(d.conn).StreamReports(ctx)
		if err == nil {
			_, err = st.Recv() // the welcome
		}
		if err != nil {
			cancel()
			return err
		}
		if d.cancel != nil {
			d.cancel()
		}
		d.cancel = cancel
		return nil
	}
	devices := make([]*device, len(dirs))
	for i, dir := range dirs {
		roots, err := readRoots(filepath.Join(dir, "ca.crt"))
		if err != nil {
			childFail(err)
		}
		cert, _, err := loadDeviceCreds(dir)
		if err != nil {
			childFail(err)
		}
		// The same options the agent dials with.
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, trustDomain, &cert))),
			grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
		if err != nil {
			childFail(err)
		}
		devices[i] = &device{conn: conn}
		if err := open(devices[i]); err != nil {
			childFail(err)
		}
	}
	fmt.Println("child: started")
	for in := bufio.NewScanner(os.Stdin); in.Scan(); {
		if in.Text() != "reopen" {
			continue
		}
		start := make(chan struct{})
		errs := make(chan error, len(devices))
		var wg sync.WaitGroup
		for _, d := range devices {
			wg.Go(func() {
				<-start
				if err := open(d); err != nil {
					errs <- err
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			childFail(err)
		}
		fmt.Println("child: reopened")
	}
}
