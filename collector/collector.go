// Package collector is the Posture collector: it enrolls devices, verifies
// and stores their signed posture reports, scores them, and answers gateways
// and admins over gRPC.
package collector

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// AdminSocket is the name of the admin Unix socket inside the data directory.
const AdminSocket = "admin.sock"

// Config configures a collector.
type Config struct {
	// DataDir holds the CA, the database and the admin socket (mode 0700).
	DataDir string
	// Listen is the TLS listen address for agents and gateways.
	Listen string
	// Advertise is the address agents use to reach the collector, written
	// into enrollment tokens. Empty means Listen, which must then name a
	// host (not 0.0.0.0).
	Advertise string
	// TrustDomain names the SPIFFE trust domain of every certificate.
	TrustDomain string
	// Policy scores devices; nil means the built-in policy.
	Policy *policy.Policy
	// PolicyPath is the file Policy came from, read again by ReloadPolicy.
	PolicyPath string
	// MaxClockSkew is how far a report's created_at may be from the
	// collector's clock.
	MaxClockSkew time.Duration
	// EKRoots are the TPM manufacturer CAs that EK certificates must chain
	// to for tpm_ek_verified; nil verifies none.
	EKRoots *x509.CertPool
	// DeviceCertTTL is the lifetime of device certificates.
	DeviceCertTTL time.Duration
	// ReportRetention is how long stored reports are kept: older ones are
	// deleted every hour, except each device's latest. Zero keeps every
	// report.
	ReportRetention time.Duration
	// ReportBurst and ReportInterval are each device's report budget: it
	// may send ReportBurst reports at once, and one every ReportInterval
	// after that (a report a minute is the agent's default; a week offline
	// spools about 10,000). Zero means DefaultReportBurst and
	// DefaultReportInterval. A report beyond it is refused as
	// rate_limited, and the agent sends it again later.
	ReportBurst    int
	ReportInterval time.Duration
	// MetricsListen, when set, serves Prometheus metrics at /metrics on
	// this address (plain HTTP, apart from the API).
	MetricsListen string
	// WatchHeartbeat is the longest a WatchPosture stream stays silent:
	// after that long without an event it sends a heartbeat, by which a
	// gateway behind a proxy (which answers the gateway's keepalive pings
	// itself) can tell a quiet fleet from a collector that stopped
	// answering. 0 means DefaultWatchHeartbeat; less than
	// MinWatchHeartbeat or more than MaxWatchHeartbeat is refused.
	WatchHeartbeat time.Duration
	// Logger receives the collector's structured log.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Tests move it.
	Now func() time.Time

	// limits bound what clients may hold of the listeners (limits.go);
	// zero fields take the defaults, which tests shorten.
	limits limits
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "posture.local"
	}
	if c.Policy == nil {
		c.Policy = policy.Default()
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = 5 * time.Minute
	}
	if c.DeviceCertTTL == 0 {
		c.DeviceCertTTL = 365 * 24 * time.Hour
	}
	if c.WatchHeartbeat == 0 {
		c.WatchHeartbeat = DefaultWatchHeartbeat
	}
	if c.ReportBurst == 0 {
		c.ReportBurst = DefaultReportBurst
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = DefaultReportInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.limits.setDefaults()
}

// Bounds of Config.WatchHeartbeat.
const (
	// DefaultWatchHeartbeat is the heartbeat interval of watch streams
	// when none is configured. Gateways give up on a stream after three
	// intervals without a word, so a collector that stopped answering is
	// noticed within 30 s.
	DefaultWatchHeartbeat = 10 * time.Second
	// MinWatchHeartbeat is the shortest heartbeat interval accepted:
	// below it a gateway on a loaded host or a slow network gives up on
	// streams that are fine, and a thousand watchers keep the collector
	// busy with heartbeats.
	MinWatchHeartbeat = 100 * time.Millisecond
	// MaxWatchHeartbeat is the longest: gateways behind a proxy take three
	// intervals to notice a lost collector, and keep answering from their
	// cache meanwhile.
	MaxWatchHeartbeat = time.Minute
)

// The default report budget of a device: a week's backlog of an agent
// that reports every minute at once, then six reports a minute.
const (
	DefaultReportBurst    = 10000
	DefaultReportInterval = 10 * time.Second
)

// validate refuses settings that cannot work, once defaults are set.
func (c *Config) validate() error {
	switch {
	case c.ReportBurst < 1 || c.ReportBurst > 1_000_000:
		return fmt.Errorf("report burst %d: give 1 to 1000000 reports (--report-burst; default %d)", c.ReportBurst, DefaultReportBurst)
	case c.ReportInterval < time.Second || c.ReportInterval > 24*time.Hour || c.ReportInterval%time.Second != 0:
		return fmt.Errorf("report interval %v: give whole seconds from 1s to 24h (--report-interval; default %v)", c.ReportInterval, DefaultReportInterval)
	case int64(c.ReportBurst)*int64(c.ReportInterval/time.Second) > 1<<31:
		return fmt.Errorf("report burst %d × interval %v is more than 68 years of reports; lower one (--report-burst, --report-interval)", c.ReportBurst, c.ReportInterval)
	}
	switch hb := c.WatchHeartbeat; {
	case hb < 0:
		return fmt.Errorf("watch heartbeat interval %v is negative: give at least %v (--watch-heartbeat; default %v)", hb, MinWatchHeartbeat, DefaultWatchHeartbeat)
	case hb < MinWatchHeartbeat:
		return fmt.Errorf("watch heartbeat interval %v is too short: give at least %v (--watch-heartbeat; default %v)", hb, MinWatchHeartbeat, DefaultWatchHeartbeat)
	case hb > MaxWatchHeartbeat:
		return fmt.Errorf("watch heartbeat interval %v is too long: gateways behind a proxy would take %v to notice a lost collector; give at most %v (--watch-heartbeat; default %v)", hb, 3*hb, MaxWatchHeartbeat, DefaultWatchHeartbeat)
	}
	return nil
}

// Collector is a running collector's state.
type Collector struct {
	cfg       Config
	log       *slog.Logger
	ca        *pki.CA
	roots     *x509.CertPool
	store     *store.Store
	fleet     *fleet
	policy    atomic.Pointer[policy.Policy]
	stats     *stats
	hub       *hub
	decisions *decisionLog
	onStop    []func()     // see OnStop
	started   time.Time    // by cfg.Now: the report budgets' clock starts here
	budget    reportBudget // each device's report budget
	gateway   *gatewayService
	health    *health.Server
	metrics   *metrics

	// What clients without a certificate hold of the TLS listener, and
	// what they were refused (limits.go).
	anonConns    *counter
	anonStreams  *counter
	refusedConns *refusedConnSet
	refusals     *tally
	throttle     *failThrottle // failed enrollments per peer

	reportsPruned atomic.Int64
	reloading     sync.Mutex // serializes ReloadPolicy
	certs         sync.Mutex // serializes enrollments' and renewals' store and fleet updates of device certificates
	gateways      revokedGateways

	metricsListener net.Listener
	metricsSrv      *http.Server

	listener net.Listener
	admin    net.Listener
	server   *grpc.Server
	adminSrv *grpc.Server
}

// New opens the data directory (creating the CA and database on first
// start), loads every device into memory and binds the listeners. Serve
// starts answering.
func New(cfg Config) (*Collector, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, errors.New("data directory is required (--data-dir)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict data directory: %w", err)
	}
	ca, err := pki.LoadOrCreateCA(cfg.DataDir, cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	c := &Collector{cfg: cfg, log: cfg.Logger, ca: ca, roots: x509.NewCertPool(), fleet: newFleet(), stats: newStats(), health: health.NewServer(), decisions: newDecisionLog()}
	c.roots.AddCert(ca.Cert)
	c.gateway = &gatewayService{c: c}
	c.started = cfg.Now()
	c.budget = reportBudget{burst: uint32(cfg.ReportBurst), interval: uint32(cfg.ReportInterval / time.Second)}
	lim := cfg.limits
	c.anonConns, c.anonStreams = newCounter(lim.anonConnsPerPeer, lim.anonConns), newCounter(lim.anonStreamsPerPeer, lim.anonStreams)
	c.refusedConns = &refusedConnSet{max: lim.maxRefusedConns, conns: map[string]string{}}
	c.refusals = newTally(lim.refusalPeers)
	c.throttle = newFailThrottle(lim.throttleBurst, lim.throttleInterval, lim.throttlePeers)
	c.metrics = newMetrics(c)
	c.policy.Store(cfg.Policy)

	if c.store, err = store.Open(filepath.Join(cfg.DataDir, "posture.db")); err != nil {
		return nil, err
	}
	base, err := c.store.NextWatchBase(context.Background(), uint64(time.Now().UnixMicro()))
	if err != nil {
		c.store.Close()
		return nil, err
	}
	c.hub = newHub(base)
	gws, err := c.store.Gateways(context.Background())
	if err != nil {
		c.store.Close()
		return nil, err
	}
	c.gateways.load(gws)
	t0 := time.Now()
	// Loading makes several times more garbage than it keeps. Collecting
	// it more often while loading keeps the peak near what is kept, for
	// about the same time, since each collection finds mostly garbage.
	// The setting is the process's: collectors sharing one (tests) load in
	// turn, so each puts back what it found.
	loading.Lock()
	gc := debug.SetGCPercent(loadGCPercent)
	if gc < loadGCPercent {
		debug.SetGCPercent(gc) // the operator asked for less (GOGC)
	}
	loaded, err := c.fleet.load(context.Background(), c.store, cfg.Policy, cfg.Now())
	debug.SetGCPercent(gc)
	loading.Unlock()
	if err != nil {
		c.store.Close()
		return nil, err
	}
	c.seedDecisions(loaded)
	if err := c.loadDecisions(context.Background()); err != nil {
		c.store.Close()
		return nil, err
	}
	// Loading a large fleet leaves behind garbage several times the size
	// of what is kept (rows, decoded reports); hand it back to the system
	// now rather than carry it as resident memory.
	debug.FreeOSMemory()
	c.log.Info("fleet loaded", "devices", c.fleet.count(), "took", time.Since(t0).Round(time.Millisecond).String())
	if err := c.listen(); err != nil {
		c.store.Close()
		return nil, err
	}
	return c, nil
}

// maxRecvMsgSize bounds a message on the TLS listener, in place of gRPC's
// 4 MiB default. The largest message a device sends is a report whose
// quote carries the TPM event log: the log (attest.MaxEventLogSize, 1
// MiB), the report (envelope.MaxReportSize, 64 KiB) and the rest of the
// proof (envelope.MaxProofSize, 4 KiB), with a 32-byte nonce and a few
// bytes of framing per field; 4 KiB more covers those. Every other
// message is smaller: an enrollment carries an EK certificate (the TPM's
// NV index holds at most a few KiB) and the AK's public area, gateways
// send device IDs and certificates, and a remote admin's largest request
// is a policy file to diff, a few KiB of YAML. A larger message ends its
// stream with RESOURCE_EXHAUSTED before it is read; one within this bound
// but over the report limits is rejected as malformed. The admin socket
// keeps gRPC's default: only the collector's own host reaches it.
const maxRecvMsgSize = attest.MaxEventLogSize + envelope.MaxReportSize + envelope.MaxProofSize + 4<<10

// loadGCPercent is the garbage collector's target while the fleet loads.
const loadGCPercent = 25

// loading serializes fleet loads within one process.
var loading sync.Mutex

func (c *Collector) listen() error {
	host, _, err := net.SplitHostPort(c.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", c.cfg.Listen, err)
	}
	hosts := []string{"localhost", "127.0.0.1", "::1", host}
	if adv, _, err := net.SplitHostPort(c.cfg.Advertise); err == nil {
		hosts = append(hosts, adv)
	}
	serving, err := newServingCert(c.ca, hosts)
	if err != nil {
		return err
	}

	lim := c.cfg.limits
	// Pings find dead peers; a connection without a call for
	// maxConnIdle is closed (GOAWAY, then closed once its calls end).
	ka := grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: lim.maxConnIdle})
	kep := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true})
	c.server = grpc.NewServer(
		// Counts and bounds the connections of clients without a
		// certificate, and tapAnonymous their calls (limits.go).
		grpc.Creds(&limitedCreds{TransportCredentials: credentials.NewTLS(pki.ServerTLSRenewing(serving.get, c.roots)), c: c}),
		grpc.InTapHandle(c.tapAnonymous),
		grpc.ConnectionTimeout(lim.handshakeTimeout),
		grpc.MaxConcurrentStreams(lim.maxStreamsPerConn),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.ChainUnaryInterceptor(refuseMarkedUnary, c.unaryAuth), grpc.ChainStreamInterceptor(refuseMarkedStream, c.streamAuth), ka, kep,
		// Fixed flow-control windows: gRPC's adaptive ones answer data
		// that arrives after a quiet spell (a report; an agent sends one a
		// minute) with a bandwidth probe, a PING the agent must answer and
		// the collector read: two more syscalls per report and connection.
		grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(1<<20),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
	)
	c.adminSrv = grpc.NewServer(grpc.ChainUnaryInterceptor(c.unaryAuth), grpc.ChainStreamInterceptor(c.streamAuth))
	for _, s := range []*grpc.Server{c.server, c.adminSrv} {
		posturev1.RegisterEnrollmentServiceServer(s, &enrollService{c: c})
		posturev1.RegisterReportServiceServer(s, &reportService{c: c})
		posturev1.RegisterGatewayServiceServer(s, c.gateway)
		posturev1.RegisterAdminServiceServer(s, &adminService{c: c})
		healthpb.RegisterHealthServer(s, c.health)
		reflection.Register(s)
	}

	if c.listener, err = net.Listen("tcp", c.cfg.Listen); err != nil {
		return fmt.Errorf("listen on %s: %w", c.cfg.Listen, err)
	}
	if c.cfg.MetricsListen != "" {
		if c.metricsListener, err = net.Listen("tcp", c.cfg.MetricsListen); err != nil {
			c.listener.Close()
			return fmt.Errorf("metrics listen on %s: %w", c.cfg.MetricsListen, err)
		}
	}
	sock := filepath.Join(c.cfg.DataDir, AdminSocket)
	if err := removeStaleSocket(sock); err != nil {
		c.listener.Close()
		return err
	}
	old := umask(0o177)
	c.admin, err = net.Listen("unix", sock)
	umask(old)
	if err != nil {
		c.listener.Close()
		return fmt.Errorf("admin socket %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		c.listener.Close()
		c.admin.Close()
		return fmt.Errorf("admin socket %s: %w", sock, err)
	}
	return nil
}

// removeStaleSocket removes a socket left by a collector that died, but
// refuses to start next to a live one.
func removeStaleSocket(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("another collector is running with this data directory (its admin socket %s answers); stop it first", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale admin socket: %w", err)
	}
	return nil
}

// Addr is the TLS listener's address (useful when listening on port 0).
func (c *Collector) Addr() string { return c.listener.Addr().String() }

// CAFingerprint is the SHA-256 fingerprint of the collector CA.
func (c *Collector) CAFingerprint() string { return c.ca.Fingerprint() }

// CA returns the collector's CA certificate.
func (c *Collector) CA() *x509.Certificate { return c.ca.Cert }

// Serve answers until ctx is done, then stops gracefully: open streams are
// ended and every report already acknowledged is on disk.
func (c *Collector) Serve(ctx context.Context) error {
	errc := make(chan error, 2)
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	periodic := func(first, every time.Duration, pass func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); periodically(bg, first, every, pass) }()
	}
	periodic(decayInterval, decayInterval, func(context.Context) { c.decayPass() })
	if c.cfg.ReportRetention > 0 {
		periodic(retentionDelay, retentionInterval, c.retentionPass)
	}
	periodic(decisionSaveInterval, decisionSaveInterval, func(context.Context) { c.saveDecisions(false) })
	every := c.cfg.limits.refusalSummaryInterval
	periodic(every, every, func(context.Context) {
		c.summarizeRefusals()
		c.throttle.forget(time.Now())
	})
	go func() { errc <- c.server.Serve(c.listener) }()
	go func() { errc <- c.adminSrv.Serve(c.admin) }()
	if c.metricsListener != nil {
		// Made here, not in the goroutine, so that stop always finds it.
		c.metricsSrv = c.metricsServer()
		go func(srv *http.Server) {
			if err := serveMetrics(srv, c.metricsListener); err != nil {
				errc <- err
			}
		}(c.metricsSrv)
	}
	c.log.Info("collector serving", "listen", c.Addr(), "admin_socket", c.admin.Addr().String(),
		"trust_domain", c.cfg.TrustDomain, "ca_fingerprint", c.CAFingerprint(), "devices", len(c.fleet.ids()))
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stopBG()
	wg.Wait()
	c.stop()
	return err
}

// periodically runs pass after first and then every interval, until ctx
// ends; a pass that is still running when ctx ends is waited for.
func periodically(ctx context.Context, first, every time.Duration, pass func(context.Context)) {
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pass(ctx)
		t.Reset(every)
	}
}

func (c *Collector) stop() {
	c.health.Shutdown()
	if c.metricsSrv != nil {
		c.metricsSrv.Close()
	}
	c.fleet.closeAllStreams(errShuttingDown)
	done := make(chan struct{})
	go func() {
		c.server.GracefulStop()
		c.adminSrv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		// Report streams are long-lived: end them rather than wait forever.
		c.server.Stop()
		c.adminSrv.Stop()
		<-done
	}
	for _, hook := range c.onStop {
		hook()
	}
	c.saveDecisions(true) // no decision is made any more
	if err := c.store.Close(); err != nil {
		c.log.Error("close store", "err", err)
	}
}

func durationpbOf(d time.Duration) *durationpb.Duration { return durationpb.New(d.Round(time.Second)) }

// OnStop adds a function that Serve runs as it stops, after the gRPC
// servers stopped and before the decision log is saved for the last time:
// front ends outside the collector (the HTTP forward-auth server) stop
// there, so that their last decisions are saved too. Call it before Serve.
func (c *Collector) OnStop(hook func()) { c.onStop = append(c.onStop, hook) }

// RegisterTLS adds a service to the TLS listener, between New and Serve:
// the gateway front ends (Envoy ext_authz) live in their own package. Their
// methods are authorized by the same table as every other RPC.
func (c *Collector) RegisterTLS(register func(*grpc.Server)) { register(c.server) }

// Roots is a pool holding the collector CA, for verifying certificates the
// CA issued (devices' certificates forwarded by gateways).
func (c *Collector) Roots() *x509.CertPool { return c.roots }

// ServingTLS issues a serving certificate for hosts from the collector CA
// (and a new one before it expires) and returns a TLS 1.3 configuration that verifies client certificates
// when given (gateways authenticate with theirs), for the collector's HTTP
// front end.
func (c *Collector) ServingTLS(hosts ...string) (*tls.Config, error) {
	serving, err := newServingCert(c.ca, append([]string{"localhost", "127.0.0.1", "::1"}, hosts...))
	if err != nil {
		return nil, err
	}
	return pki.ServerTLSRenewing(serving.get, c.roots), nil
}
