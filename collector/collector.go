// Package collector is the Posture collector: it enrolls devices, verifies
// and stores their signed posture reports, scores them, and answers
// gateways and admins over gRPC. This package wires the parts together
// (collector/api, enroll, ingest, fleet, feed, watch, decisions, store)
// from a typed Config.
package collector

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/posture-project/posture/internal/version"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"

	"github.com/posture-project/posture/collector/api"
	"github.com/posture-project/posture/collector/console"
	"github.com/posture-project/posture/collector/decisions"
	"github.com/posture-project/posture/collector/enroll"
	"github.com/posture-project/posture/collector/fault"
	"github.com/posture-project/posture/collector/feed"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/gateways"
	"github.com/posture-project/posture/collector/ingest"
	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/siem"
	"github.com/posture-project/posture/collector/ssf"
	"github.com/posture-project/posture/collector/standing"
	"github.com/posture-project/posture/collector/stats"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/watch"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/durable"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// AdminSocket is the name of the admin Unix socket inside the data directory.
const AdminSocket = "admin.sock"

// Version is the collector's version, recorded with its replica.
var Version = version.Version()

// Config configures a collector.
type Config struct {
	// DataDir holds the CA, the admin socket, the replica's identity and,
	// without Database, the SQLite database (mode 0700).
	DataDir string
	// Database is where the collector keeps its state: empty for SQLite in
	// DataDir, or a postgres:// URL for a PostgreSQL database that several
	// collectors share.
	Database string
	// Name names this collector among those sharing a database
	// (posture-collector replicas); empty means the host's name.
	Name string
	// Listen is the TLS listen address for agents and gateways.
	Listen string
	// Advertise is the address agents use to reach the collector, written
	// into enrollment tokens. Empty means Listen, which must then name a
	// host (not 0.0.0.0).
	Advertise string
	// ServingNames are further host names (or addresses) the serving
	// certificates carry, besides loopback, the listen host and the
	// advertised host: a name gateways verify every collector by when
	// they list several as upstreams of one name (nginx proxy_ssl_name).
	ServingNames []string
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
	// BrowserCertTTL is the lifetime of browser certificates; zero means
	// DefaultBrowserCertTTL (a day).
	BrowserCertTTL time.Duration
	// ReportRetention is how long stored reports are kept: older ones are
	// deleted every hour, except each device's latest. Zero keeps every
	// report.
	ReportRetention time.Duration
	// ReportBurst and ReportInterval are each device's report budget: it
	// may send ReportBurst reports at once, and one every ReportInterval
	// after that (a report a minute is the agent's default; a week offline
	// spools about 10,000). Zero means DefaultReportBurst and
	// DefaultReportInterval. A report beyond it is refused as
	// rate_limited, and the agent sends it again later. Each collector
	// keeps the budgets of the devices reporting to it.
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
	// DecayInterval is how often every device's decision is evaluated
	// again for trust lost as evidence ages (watchers hear of changes);
	// 0 means watch.DefaultDecayInterval. A gateway resuming its watch
	// from another collector is sent the changes of two intervals before
	// its revision again (watch.Hub.ResumeSlack).
	DecayInterval time.Duration
	// PollInterval is the longest a change another collector made takes
	// to reach this one when the database sends no notification; 0 means
	// feed.DefaultPollInterval.
	PollInterval time.Duration
	// EventRetention is how long events are kept in the database for
	// collectors catching up; 0 means DefaultEventRetention.
	EventRetention time.Duration
	// Console, when set, serves the admin console on its own listener.
	Console *ConsoleConfig
	// Events configures what leaves Posture: webhooks, SIEM exports, the
	// Shared Signals transmitter (events.go).
	Events EventsConfig
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
	if c.EventRetention == 0 {
		c.EventRetention = DefaultEventRetention
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

// DefaultEventRetention is how long events stay in the database: far
// longer than a collector takes to read them, so that one that was
// paused or cut off for a while still catches up; one away for longer
// loads its fleet afresh when it starts again.
const DefaultEventRetention = 24 * time.Hour

// Validate reports the settings New would refuse, and creates nothing:
// posture-collector config check runs it.
func (c Config) Validate() error {
	c.setDefaults()
	return c.validate()
}

// validate refuses settings that cannot work, once defaults are set.
func (c *Config) validate() error {
	switch {
	case c.ReportBurst < 1 || c.ReportBurst > 1_000_000:
		return fmt.Errorf("report burst %d: give 1 to 1000000 reports (--report-burst; default %d)", c.ReportBurst, DefaultReportBurst)
	case c.ReportInterval < time.Second || c.ReportInterval > 24*time.Hour || c.ReportInterval%time.Second != 0:
		return fmt.Errorf("report interval %v: give whole seconds from 1s to 24h (--report-interval; default %v)", c.ReportInterval, DefaultReportInterval)
	case int64(c.ReportBurst)*int64(c.ReportInterval/time.Second) > 1<<31:
		return fmt.Errorf("report burst %d × interval %v is more than 68 years of reports; lower one (--report-burst, --report-interval)", c.ReportBurst, c.ReportInterval)
	case c.DecayInterval < 0 || (c.DecayInterval > 0 && (c.DecayInterval < 100*time.Millisecond || c.DecayInterval > 10*time.Minute)):
		return fmt.Errorf("decay interval %v: give 100ms to 10m (--decay-interval; default %v)", c.DecayInterval, watch.DefaultDecayInterval)
	case c.EventRetention < time.Hour:
		return fmt.Errorf("event retention %v: keep events at least an hour, so that collectors sharing the database can catch up (--event-retention; default %v)", c.EventRetention, DefaultEventRetention)
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
	cfg         Config
	log         *slog.Logger
	ca          *pki.CA
	roots       *x509.CertPool
	store       store.Store
	replica     replica
	fleet       *fleet.Fleet
	hub         *watch.Hub
	feed        *feed.Feed
	gateways    *gateways.Revocations
	decisions   *decisions.Log
	keeper      *standing.Keeper
	outbox      *outbox.Dispatcher
	ssf         *ssf.Transmitter // nil when off
	ssfSrv      *http.Server
	ssfListener net.Listener
	exports     []*siem.Export // SIEM exports, closed at stop
	stats       *stats.Stats
	// deliveries counts what the outbox delivered (events.go).
	deliveries *deliveryMetrics
	api        *api.Server
	health     *health.Server
	metrics    *metrics
	onStop     []func() // see OnStop
	started    time.Time
	failed     chan error // ends Serve: the collector cannot go on

	// What clients without a certificate hold of the TLS listener, and
	// what they were refused (limits.go).
	anonConns    *counter
	anonStreams  *counter
	refusedConns *refusedConnSet
	refusals     *tally
	throttle     *failThrottle // failed enrollments per peer

	reloading sync.Mutex // serializes ReloadPolicy

	metricsListener net.Listener
	metricsSrv      *http.Server

	listener net.Listener
	admin    net.Listener
	server   *grpc.Server
	adminSrv *grpc.Server

	// The admin console, when configured (console.go).
	console         *console.Console
	consoleListener net.Listener
	consoleSrv      *http.Server
}

// New opens the data directory and the database (creating the CA and, for
// SQLite, the database on first start), loads every device into memory and
// binds the listeners. Serve starts answering.
func New(cfg Config) (c *Collector, err error) {
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
	st, shared, err := openStore(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			st.Close()
			if c != nil && c.ssfListener != nil {
				c.ssfListener.Close()
			}
		}
	}()
	ca, err := loadCA(context.Background(), st, cfg, shared)
	if err != nil {
		return nil, err
	}
	rep, err := loadReplica(cfg.DataDir, shared)
	if err != nil {
		return nil, err
	}
	c = &Collector{cfg: cfg, log: cfg.Logger, ca: ca, roots: x509.NewCertPool(), store: st, replica: rep, started: time.Now(), failed: make(chan error, 1),
		stats: stats.New(), health: health.NewServer(), decisions: decisions.New()}
	c.roots.AddCert(ca.Cert)
	lim := cfg.limits
	c.anonConns, c.anonStreams = newCounter(lim.anonConnsPerPeer, lim.anonConns), newCounter(lim.anonStreamsPerPeer, lim.anonStreams)
	c.refusedConns = &refusedConnSet{max: lim.maxRefusedConns, conns: map[string]string{}}
	c.refusals = newTally(lim.refusalPeers)
	c.throttle = newFailThrottle(lim.throttleBurst, lim.throttleInterval, lim.throttlePeers)
	c.fleet = fleet.New(cfg.Policy, fleet.Budget{Burst: uint32(cfg.ReportBurst), Interval: uint32(cfg.ReportInterval / time.Second)}, cfg.Now())
	c.hub = watch.New(watch.Config{Fleet: c.fleet, TrustDomain: cfg.TrustDomain, Heartbeat: cfg.WatchHeartbeat, DecayInterval: cfg.DecayInterval, Now: cfg.Now,
		CatchUp: func(ctx context.Context) error { return c.feed.CatchUp(ctx) }})
	c.metrics = newMetrics(c)
	c.keeper = standing.New(standing.Config{Store: st, Fleet: c.fleet, Feed: applierFunc(func(ev store.Event, pre *fleet.Assessed) { c.feed.Apply(ev, pre) }),
		Holder: c.replica.id, Logger: c.log, Interval: c.hub.DecayInterval(), Now: cfg.Now})

	if err := c.setupEvents(context.Background()); err != nil {
		return nil, err
	}
	c.metrics.registerDeliveries(c)

	gws, err := st.Gateways(context.Background())
	if err != nil {
		return nil, err
	}
	c.gateways = gateways.New(gws)
	if err := c.load(context.Background()); err != nil {
		return nil, err
	}
	if err := c.decisions.Load(context.Background(), st, c.replica.id); err != nil {
		return nil, err
	}
	c.wire()
	if err := c.listen(); err != nil {
		return nil, err
	}
	if cfg.Console != nil {
		if err := c.startConsole(); err != nil {
			c.listener.Close()
			c.admin.Close()
			if c.metricsListener != nil {
				c.metricsListener.Close()
			}
			return nil, err
		}
	}
	return c, nil
}

// openStore opens the database the configuration names; shared says
// whether other collectors may use it too.
func openStore(ctx context.Context, cfg Config) (st store.Store, shared bool, err error) {
	if cfg.Database == "" {
		st, err := openSQLite(filepath.Join(cfg.DataDir, "posture.db"))
		return st, false, err
	}
	st, err = openDatabase(ctx, cfg.Database)
	return st, true, err
}

// loadCA loads the collector CA from the data directory, and records it
// as the database's (or checks that it is). A collector of a shared
// database creates no CA of its own once the database belongs to one:
// every collector sharing it must serve with the same CA.
func loadCA(ctx context.Context, st store.Store, cfg Config, shared bool) (*pki.CA, error) {
	if shared && !pki.HasCA(cfg.DataDir) {
		// Claim with nothing: fails when the database has a CA already.
		if err := st.ClaimIdentity(ctx, "", cfg.TrustDomain); err != nil && errors.Is(err, store.ErrIdentityMismatch) {
			return nil, fmt.Errorf("this database is shared by collectors with their own CA, and %s has none: copy ca.crt and ca.key from a running collector's data directory into it (mode 0600) and start again: %w", cfg.DataDir, err)
		} else if err != nil {
			return nil, err
		}
	}
	ca, err := pki.LoadOrCreateCA(cfg.DataDir, cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	if err := st.ClaimIdentity(ctx, ca.Fingerprint(), cfg.TrustDomain); err != nil {
		return nil, err
	}
	return ca, nil
}

// replica is this collector among those sharing its database.
type replica struct {
	id string
}

// replicaFile holds the replica's ID in the data directory.
const replicaFile = "replica-id"

// loadReplica reads (or makes) the collector's replica ID. A collector on
// its own database is "local": that is where the decision log of a
// collector from before databases were shared lives.
func loadReplica(dir string, shared bool) (replica, error) {
	path := filepath.Join(dir, replicaFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if id == "" || len(id) > 64 {
			return replica{}, fmt.Errorf("%s holds no replica ID; remove it and start again", path)
		}
		return replica{id: id}, nil
	case !errors.Is(err, os.ErrNotExist):
		return replica{}, fmt.Errorf("read replica ID: %w", err)
	}
	id := "local"
	if shared {
		r := make([]byte, 8)
		if _, err := rand.Read(r); err != nil {
			return replica{}, err
		}
		id = hex.EncodeToString(r)
	}
	if err := durable.WriteFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return replica{}, fmt.Errorf("record replica ID: %w", err)
	}
	return replica{id: id}, nil
}

// gapWindow is how far below the newest event ID at start the IDs that
// had not committed are read again: further than transactions under way
// at once can reach.
const gapWindow = 1000

// load fills the fleet from the database, then catches up with the events
// committed meanwhile. The newest event ID is read first: what committed
// before it is in the fleet as loaded, what commits after is read as
// events, and IDs below it that had not committed yet are read again as
// gaps.
func (c *Collector) load(ctx context.Context) error {
	start, err := c.store.LastEventID(ctx)
	if err != nil {
		return err
	}
	from := uint64(0)
	if start > gapWindow {
		from = start - gapWindow
	}
	present, err := c.store.EventIDs(ctx, from, gapWindow)
	if err != nil {
		return err
	}
	var skipped []uint64
	next := from + 1
	for _, id := range append(present, start+1) {
		for ; next < id && next <= start; next++ {
			skipped = append(skipped, next)
		}
		next = id + 1
	}

	t0 := time.Now()
	seeder := c.hub.Seeder(runtime.GOMAXPROCS(0))
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
	err = c.fleet.Load(ctx, c.store, seeder.Seen)
	debug.SetGCPercent(gc)
	loading.Unlock()
	if err != nil {
		return err
	}
	seeder.Finish(start)
	// Read after the fleet, so that the events replayed from start bring
	// them up to date whatever changed in between.
	browser, err := c.store.BrowserCerts(ctx, c.cfg.Now())
	if err != nil {
		return fmt.Errorf("load browser certificates: %w", err)
	}
	c.fleet.LoadBrowserCerts(browser)
	c.feed = feed.New(feed.Config{Store: c.store, Fleet: c.fleet, Hub: c.hub, Gateways: c.gateways, Logger: c.log,
		PollInterval: c.cfg.PollInterval, Applied: c.applied}, start, skipped)
	if err := c.feed.CatchUp(ctx); err != nil {
		return err
	}
	// Loading a large fleet leaves behind garbage several times the size
	// of what is kept (rows, decoded reports); hand it back to the system
	// now rather than carry it as resident memory.
	debug.FreeOSMemory()
	c.log.Info("fleet loaded", "devices", c.fleet.Count(), "revision", c.feed.Applied(), "took", time.Since(t0).Round(time.Millisecond).String())
	return nil
}

// loadGCPercent is the garbage collector's target while the fleet loads.
const loadGCPercent = 25

// loading serializes fleet loads within one process.
var loading sync.Mutex

// wire makes the services.
func (c *Collector) wire() {
	cfg := c.cfg
	enroller := enroll.New(enroll.Config{Store: c.store, Fleet: c.fleet, Feed: c.feed, CA: c.ca, TrustDomain: cfg.TrustDomain,
		EKRoots: cfg.EKRoots, CertTTL: cfg.DeviceCertTTL, Stats: c.stats, Logger: c.log, Now: cfg.Now,
		StepWait: cfg.limits.enrollStepWait, Wait: cfg.limits.enrollWait, Admit: c.admitEnrollment})
	ingester := ingest.New(ingest.Config{Store: c.store, Fleet: c.fleet, Feed: c.feed, Stats: c.stats, Logger: c.log,
		Verified: func(d time.Duration) { c.metrics.verify.Observe(d.Seconds()) }, MaxClockSkew: cfg.MaxClockSkew, Now: cfg.Now})
	c.api = api.New(api.Config{Store: c.store, Fleet: c.fleet, Hub: c.hub, Feed: c.feed, Gateways: c.gateways, Decisions: c.decisions,
		Stats: c.stats, Enroller: enroller, Ingester: ingester, CA: c.ca, TrustDomain: cfg.TrustDomain, Advertise: c.advertised,
		ReloadPolicy: c.ReloadPolicy, Decided: c.metrics.decision, Replica: c.replica.id, Logger: c.log, Now: cfg.Now, SignInLinks: c.consoleLinks(),
		StandingLease: c.keeper.Holding, Receivers: c.receiverStatus, SSF: c.apiTransmitter(), BrowserCertTTL: cfg.BrowserCertTTL}, c.health)
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

func (c *Collector) listen() error {
	host, _, err := net.SplitHostPort(c.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", c.cfg.Listen, err)
	}
	hosts := []string{"localhost", "127.0.0.1", "::1", host}
	if adv, _, err := net.SplitHostPort(c.cfg.Advertise); err == nil {
		hosts = append(hosts, adv)
	}
	serving, err := newServingCert(c.ca, append(hosts, c.cfg.ServingNames...))
	if err != nil {
		return err
	}

	lim := c.cfg.limits
	// Pings find dead peers; a connection without a call for
	// maxConnIdle is closed (GOAWAY, then closed once its calls end).
	ka := grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: lim.maxConnIdle})
	kep := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true})
	opts := []grpc.ServerOption{
		// Counts and bounds the connections of clients without a
		// certificate, and tapAnonymous their calls (limits.go).
		grpc.Creds(&limitedCreds{TransportCredentials: credentials.NewTLS(pki.ServerTLSRenewing(serving.get, c.roots)), c: c}),
		grpc.InTapHandle(c.tapAnonymous),
		grpc.ConnectionTimeout(lim.handshakeTimeout),
		grpc.MaxConcurrentStreams(lim.maxStreamsPerConn),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		// A call the tap marked refused is refused before anything else.
		grpc.ChainUnaryInterceptor(refuseMarkedUnary), grpc.ChainStreamInterceptor(refuseMarkedStream),
		ka, kep,
		// Fixed flow-control windows: gRPC's adaptive ones answer data
		// that arrives after a quiet spell (a report; an agent sends one a
		// minute) with a bandwidth probe, a PING the agent must answer and
		// the collector read: two more syscalls per report and connection.
		grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(1 << 20),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
	}
	c.server = grpc.NewServer(append(opts, c.api.ServerOptions()...)...)
	c.adminSrv = grpc.NewServer(c.api.ServerOptions()...)
	for _, s := range []*grpc.Server{c.server, c.adminSrv} {
		c.api.Register(s)
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

// ReplicaID is this collector's ID among those sharing its database.
func (c *Collector) ReplicaID() string { return c.replica.id }

// Revision is the newest event this collector applied: the revision a
// watch stream would start at.
func (c *Collector) Revision() uint64 { return c.feed.Applied() }

// Serve answers until ctx is done, then stops gracefully: open streams are
// ended and every report already acknowledged is in the database.
func (c *Collector) Serve(ctx context.Context) error {
	errc := make(chan error, 4)
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	periodic := func(first, every time.Duration, pass func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); periodically(bg, first, every, pass) }()
	}
	periodic(c.hub.DecayInterval(), c.hub.DecayInterval(), func(context.Context) { c.hub.DecayPass() })
	if c.cfg.ReportRetention > 0 {
		periodic(retentionDelay, retentionInterval, c.retentionPass)
	}
	periodic(retentionDelay, eventPruneInterval, c.pruneEvents)
	periodic(decisionSaveInterval, decisionSaveInterval, func(ctx context.Context) { c.saveDecisions(ctx, false) })
	periodic(0, heartbeatInterval, c.heartbeat)
	if c.console != nil {
		periodic(retentionDelay, time.Hour, c.pruneConsole)
		go c.serveConsole(errc)
	}
	every := c.cfg.limits.refusalSummaryInterval
	periodic(every, every, func(context.Context) {
		c.summarizeRefusals()
		c.throttle.forget(time.Now())
	})
	wg.Add(1)
	go func() { defer wg.Done(); c.feed.Run(bg) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.keeper.Run(bg) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.outbox.Run(bg) }()
	go func() { errc <- c.server.Serve(c.listener) }()
	go func() { errc <- c.adminSrv.Serve(c.admin) }()
	if c.ssfSrv != nil {
		go func() {
			if err := c.serveSSF(); err != nil {
				errc <- err
			}
		}()
	}
	if c.metricsListener != nil {
		// Made here, not in the goroutine, so that stop always finds it.
		c.metricsSrv = c.metricsServer()
		go func(srv *http.Server) {
			if err := serveMetrics(srv, c.metricsListener); err != nil {
				errc <- err
			}
		}(c.metricsSrv)
	}
	if c.console != nil {
		c.log.Info("console serving", "url", c.console.URL(), "listen", c.ConsoleAddr())
	}
	c.log.Info("collector serving", "listen", c.Addr(), "admin_socket", c.admin.Addr().String(),
		"trust_domain", c.cfg.TrustDomain, "ca_fingerprint", c.CAFingerprint(), "devices", c.fleet.Count(), "replica", c.replica.id)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-c.failed:
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

// errShuttingDown ends the report streams of a collector that stops.
var errShuttingDown = fault.New(fault.Unavailable, "", "collector is shutting down; reconnect later")

func (c *Collector) stop() {
	c.health.Shutdown()
	c.stopConsole()
	if c.metricsSrv != nil {
		c.metricsSrv.Close()
	}
	if c.ssfSrv != nil {
		c.ssfSrv.Close()
	}
	c.fleet.CloseAllStreams(errShuttingDown)
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
	c.saveDecisions(context.Background(), true) // no decision is made any more
	for _, x := range c.exports {
		if err := x.Close(); err != nil {
			c.log.Warn("close SIEM export", "err", err)
		}
	}
	if err := c.store.Close(); err != nil {
		c.log.Error("close store", "err", err)
	}
}

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

// ServingTLS issues a serving certificate for hosts (and loopback, and
// Config.ServingNames) from the collector CA
// (and a new one before it expires) and returns a TLS 1.3 configuration that verifies client certificates
// when given (gateways authenticate with theirs), for the collector's HTTP
// front end.
func (c *Collector) ServingTLS(hosts ...string) (*tls.Config, error) {
	serving, err := newServingCert(c.ca, append(append([]string{"localhost", "127.0.0.1", "::1"}, hosts...), c.cfg.ServingNames...))
	if err != nil {
		return nil, err
	}
	return pki.ServerTLSRenewing(serving.get, c.roots), nil
}

// CheckAccess answers the same decision as the gateway RPC, in-process, for
// the collector's own gateway front ends (HTTP forward-auth, Envoy
// ext_authz). Errors are gRPC statuses.
func (c *Collector) CheckAccess(ctx context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	return c.api.CheckAccess(ctx, req)
}

// GatewayRevoked says why the gateway certificate with serial (as
// pki.SerialHex writes it) was revoked, or returns nil while it stands.
func (c *Collector) GatewayRevoked(serial string) error { return c.gateways.Check(serial) }

// TrustDomain is the collector's SPIFFE trust domain.
func (c *Collector) TrustDomain() string { return c.cfg.TrustDomain }

// Watchers is the number of open WatchPosture streams.
func (c *Collector) Watchers() int { return c.hub.Watchers() }

// ReloadPolicy reads the policy file again and puts it in force: every
// device is assessed under it and watchers hear of changed decisions. A
// file that does not validate changes nothing. Each collector reloads its
// own file: collectors sharing a database must be given the same one.
func (c *Collector) ReloadPolicy() (*policy.Policy, error) {
	// One reload at a time (SIGHUP and policy reload may coincide): the
	// file read last is the one in force.
	c.reloading.Lock()
	defer c.reloading.Unlock()
	if c.cfg.PolicyPath == "" {
		return nil, errors.New("the collector runs the built-in policy; start it with --policy FILE to reload one")
	}
	p, err := policy.Load(c.cfg.PolicyPath)
	if err != nil {
		return nil, fmt.Errorf("policy not reloaded, the old one stays in force: %w", err)
	}
	if err := c.fleet.Reload(context.Background(), c.store, p); err != nil {
		return nil, fmt.Errorf("policy not reloaded, the old one stays in force: %w", err)
	}
	for _, id := range c.fleet.IDs() {
		c.hub.Publish(id, "policy", false, 0)
	}
	c.keeper.ObserveAll()
	c.log.Info("policy reloaded", "file", c.cfg.PolicyPath, "levels", p.LevelNames(), "checks", len(p.Checks))
	return p, nil
}

// applierFunc applies events as feed.Feed does, for parts made before the
// feed.
type applierFunc func(ev store.Event, pre *fleet.Assessed)

func (f applierFunc) Apply(ev store.Event, pre *fleet.Assessed) { f(ev, pre) }

// applied is told of every event the feed applied: what follows the fleet
// hears of the change.
func (c *Collector) applied(ev store.Event) {
	if ev.DeviceID != "" {
		c.keeper.Observe(ev.DeviceID)
	}
	c.wakeOutbox(ev)
}
