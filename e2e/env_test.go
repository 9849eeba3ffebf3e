// Package e2e runs the real collector and agent against each other over
// gRPC with TLS on loopback and a real SQLite file.
package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const trustDomain = "e2e.test"

// clock is a settable clock for the collector.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// env is one running collector.
type env struct {
	t       testing.TB
	dataDir string
	addr    string
	clock   *clock
	mod     func(*collector.Config)
	c       *collector.Collector
	cancel  context.CancelFunc
	done    chan error
	admin   posturev1.AdminServiceClient
	gwLocal posturev1.GatewayServiceClient
}

func startCollector(t testing.TB) *env {
	t.Helper()
	return startCollectorWith(t, nil)
}

// startCollectorWith starts a collector whose configuration mod adjusts.
func startCollectorWith(t testing.TB, mod func(*collector.Config)) *env {
	t.Helper()
	e := &env{t: t, dataDir: t.TempDir(), addr: "127.0.0.1:0", clock: &clock{}, mod: mod}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *env) start() { e.startWith(nil) }

// startWith starts the collector, running before (if set) between New and
// Serve.
func (e *env) startWith(before func()) {
	e.t.Helper()
	cfg := collector.Config{DataDir: e.dataDir, Listen: e.addr, TrustDomain: trustDomain, Now: e.clock.Now}
	if e.mod != nil {
		e.mod(&cfg)
	}
	c, err := collector.New(cfg)
	if err != nil {
		e.t.Fatalf("start collector: %v", err)
	}
	e.c, e.addr = c, c.Addr()
	if before != nil {
		before()
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- c.Serve(ctx) }()
	conn, err := collector.DialAdmin(e.dataDir)
	if err != nil {
		e.t.Fatalf("dial admin socket: %v", err)
	}
	e.t.Cleanup(func() { conn.Close() })
	e.admin, e.gwLocal = posturev1.NewAdminServiceClient(conn), posturev1.NewGatewayServiceClient(conn)
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	if err := <-e.done; err != nil {
		e.t.Errorf("collector Serve: %v", err)
	}
	e.cancel = nil
}

func (e *env) token(ttl time.Duration, uses uint32) string {
	e.t.Helper()
	resp, err := e.admin.CreateEnrollmentToken(context.Background(), &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(ttl), Uses: uses})
	if err != nil {
		e.t.Fatalf("create token: %v", err)
	}
	return resp.GetToken()
}

func (e *env) devices() []*posturev1.DevicePosture {
	e.t.Helper()
	var all []*posturev1.DevicePosture
	for token := ""; ; {
		resp, err := e.admin.ListDevices(context.Background(), &posturev1.ListDevicesRequest{PageToken: token})
		if err != nil {
			e.t.Fatalf("list devices: %v", err)
		}
		all = append(all, resp.GetDevices()...)
		if token = resp.GetNextPageToken(); token == "" {
			return all
		}
	}
}

func (e *env) stats() *posturev1.Stats {
	e.t.Helper()
	s, err := e.admin.GetStats(context.Background(), &posturev1.GetStatsRequest{})
	if err != nil {
		e.t.Fatalf("stats: %v", err)
	}
	return s
}

// enroll enrolls a fresh state directory and returns it with the device ID.
func (e *env) enroll() (stateDir, id string) {
	e.t.Helper()
	stateDir = e.t.TempDir()
	res, err := agent.Enroll(context.Background(), stateDir, e.token(time.Hour, 1))
	if err != nil {
		e.t.Fatalf("enroll: %v", err)
	}
	return stateDir, res.DeviceID
}

// gatewayCert has the collector issue a gateway certificate, as
// posture-collector gateway add does.
func (e *env) gatewayCert(name string) tls.Certificate {
	return testtools.GatewayCert(e.t, e.admin, name)
}

// gateway issues a gateway certificate and returns a client over mTLS.
func (e *env) gateway(name string) posturev1.GatewayServiceClient {
	e.t.Helper()
	cert := e.gatewayCert(name)
	return posturev1.NewGatewayServiceClient(e.dial(&cert))
}

// dial connects over TLS with an optional client certificate. It dials by
// address, so the connection follows the collector across restarts.
func (e *env) dial(cert *tls.Certificate, opts ...grpc.DialOption) *grpc.ClientConn {
	e.t.Helper()
	return e.dialAddr(e.addr, cert, opts...)
}

// dialAddr is dial to another address that leads to the collector, such as
// a proxy.
func (e *env) dialAddr(addr string, cert *tls.Certificate, opts ...grpc.DialOption) *grpc.ClientConn {
	e.t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(e.c.CA())
	conn, err := grpc.NewClient(addr, append(opts, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, trustDomain, cert))))...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// deviceCreds loads an enrolled state directory's TLS certificate and
// identity key, for tests that speak the report protocol by hand.
func deviceCreds(t testing.TB, stateDir string) (tls.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	cert, key, err := loadDeviceCreds(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func loadDeviceCreds(stateDir string) (tls.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "device.crt"), filepath.Join(stateDir, "tls.key"))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	k, err := pki.ReadPrivateKey(filepath.Join(stateDir, "identity.key"))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return tls.Certificate{}, nil, fmt.Errorf("identity key in %s is %T, want ECDSA", stateDir, k)
	}
	return cert, key, nil
}

// fixedMeasurer reports a fixed posture and numbers each measurement in the
// kernel_version field, so tests can follow every report through.
type fixedMeasurer struct {
	encrypted bool
	mu        sync.Mutex
	n         int
}

func (m *fixedMeasurer) Collect(context.Context) *posturev1.PostureReport {
	m.mu.Lock()
	m.n++
	n := m.n
	m.mu.Unlock()
	return healthyReport(m.encrypted, fmt.Sprintf("m-%06d", n))
}

func (m *fixedMeasurer) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

func healthyReport(encrypted bool, kernel string) *posturev1.PostureReport {
	meta := func() *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	}
	return &posturev1.PostureReport{
		Os:         &posturev1.OSInfo{Meta: meta(), Platform: "linux", Name: "debian", Version: "12", KernelVersion: kernel},
		Disk:       &posturev1.DiskEncryption{Meta: meta(), SystemEncrypted: encrypted, Volumes: []*posturev1.Volume{{MountPoint: "/", Encrypted: encrypted}}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta(), Enabled: true},
		Updates:    &posturev1.Updates{Meta: meta(), Manager: "apt"},
		Firewall:   &posturev1.Firewall{Meta: meta(), Enabled: true, Product: "nftables"},
		ScreenLock: &posturev1.ScreenLock{Meta: meta(), Enabled: true, TimeoutSeconds: 300},
	}
}

// runAgent runs a real agent on stateDir until the test ends.
func runAgent(t testing.TB, stateDir string, m agent.Measurer, interval time.Duration) (stop func()) {
	t.Helper()
	return runAgentLogged(t, stateDir, m, interval, nil)
}

// runAgentLogged is runAgent with the agent's log sent to logger (nil
// discards it).
func runAgentLogged(t testing.TB, stateDir string, m agent.Measurer, interval time.Duration, logger *slog.Logger) (stop func()) {
	t.Helper()
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: interval, Measurer: m, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, 10*time.Second, what, cond)
}

// eventuallyWithin polls cond until it holds or the timeout passes.
func eventuallyWithin(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var errNoDevice = errors.New("device not listed")

func (e *env) device(id string) (*posturev1.DevicePosture, error) {
	for _, d := range e.devices() {
		if d.GetDevice().GetId() == id {
			return d, nil
		}
	}
	return nil, errNoDevice
}

// wantActiveAt checks that a device is active with its chain head at seq.
func (e *env) wantActiveAt(t testing.TB, id string, seq uint64) {
	t.Helper()
	d, err := e.device(id)
	if err != nil {
		t.Fatal(err)
	}
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE || d.GetDevice().GetLastSeq() != seq {
		t.Errorf("device %s: %v (%s), head %d; want active, head %d", id, d.GetDevice().GetState(), d.GetDevice().GetStateReason(), d.GetDevice().GetLastSeq(), seq)
	}
}
