package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/gatewayfront"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/watch"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
)

// runFlags are the settings of posture-collector run, and so the keys of
// the configuration file.
type runFlags struct {
	dataDir, database, name, listen, advertise string
	servingNames                               []string
	policyFile, trustDomain                    string
	logFormat                                  *string
	httpListen, httpBearer, httpCertHeader     string
	httpPlain                                  bool
	metricsListen, ekRoots                     string
	retention, eventRetention                  time.Duration
	burst                                      int
	every, decay, heartbeat, browserCertTTL    *time.Duration
	events                                     *eventsFlags
	console                                    *consoleFlags
}

// defineRunFlags defines run's flags on fs.
func defineRunFlags(fs *pflag.FlagSet) *runFlags {
	f := &runFlags{retention: 90 * 24 * time.Hour, eventRetention: 24 * time.Hour}
	fs.StringVar(&f.dataDir, "data-dir", defaultDataDir, "collector data directory: CA, admin socket and, without --database, the SQLite database (also $POSTURE_DATA_DIR)")
	fs.StringVar(&f.database, "database", "", "a postgres:// URL of a database that several collectors share (default: SQLite in --data-dir; also $POSTURE_DATABASE, which keeps a password out of the process list)")
	fs.StringVar(&f.name, "name", "", "this collector's name among those sharing the database (default: the host's name)")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8443", "TLS listen address for agents and gateways")
	fs.StringVar(&f.advertise, "advertise", "", "address agents dial, written into tokens (default: --listen)")
	cliflag.Func(fs, "serving-name", "names", "", "further host names or addresses, comma-separated, that the collector's TLS certificates carry (for gateways that verify several collectors by one name)", func(s string) error {
		names, err := parseServingNames(s)
		f.servingNames = names
		return err
	})
	fs.StringVar(&f.policyFile, "policy", "", "policy YAML file (default: the built-in policy)")
	fs.StringVar(&f.trustDomain, "trust-domain", "posture.local", "SPIFFE trust domain")
	f.logFormat = cliflag.Choice(fs, "log-format", "", "log format", "text", "json")
	fs.StringVar(&f.httpListen, "http-listen", "", "serve HTTP forward-auth (nginx auth_request, Caddy forward_auth, Traefik ForwardAuth) at https://ADDR/check")
	fs.StringVar(&f.httpBearer, "http-bearer-file", "", "file of bearer secrets (one per line, mode 0600) that gateways without a certificate present to /check")
	fs.BoolVar(&f.httpPlain, "http-plaintext", false, "serve /check without TLS; allowed only on a loopback address")
	fs.StringVar(&f.httpCertHeader, "http-cert-header", gatewayfront.HeaderClientCert, "the header the gateway forwards the device certificate in to /check: "+gatewayfront.HeaderClientCert+" (nginx, Caddy) or "+gatewayfront.HeaderTraefikClientCert+" (Traefik)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (off when empty)")
	fs.StringVar(&f.ekRoots, "ekcert-roots", "", "TPM manufacturer CA certificates (PEM bundle or directory) that EK certificates must chain to")
	cliflag.Func(fs, "report-retention", "duration", "90d", "delete stored reports older than this (days as 90d, or a duration as 36h), except each device's latest; forever keeps them all", func(s string) error {
		d, err := parseRetention(s)
		f.retention = d
		return err
	})
	cliflag.Func(fs, "event-retention", "duration", "24h", "how long changes stay in the database for collectors sharing it and for resuming gateways (at least 1h; whole days as 2d, or a duration)", func(s string) error {
		d, err := parseRetention(s)
		if err == nil && d == 0 {
			err = fmt.Errorf("%q: changes cannot be kept forever; give a duration of at least 1h", s)
		}
		f.eventRetention = d
		return err
	})
	fs.IntVar(&f.burst, "report-burst", collector.DefaultReportBurst, "reports a device may send at once (a backlog after an outage); after that one every --report-interval, and the rest are refused for now (rate_limited)")
	f.every = cliflag.Duration(fs, "report-interval", collector.DefaultReportInterval, "once a device's --report-burst is spent, one report per this long (whole seconds, 1s to 24h)")
	f.decay = cliflag.Duration(fs, "decay-interval", watch.DefaultDecayInterval, "how often every device's decision is evaluated again as its evidence ages (watchers hear of changes); 100ms to 10m")
	f.heartbeat = cliflag.Duration(fs, "watch-heartbeat", collector.DefaultWatchHeartbeat, fmt.Sprintf("a WatchPosture stream silent this long sends a heartbeat, by which gateways behind a proxy notice a collector that stopped answering (after 3 intervals without one); %v to %v", collector.MinWatchHeartbeat, collector.MaxWatchHeartbeat))
	f.browserCertTTL = cliflag.Duration(fs, "browser-cert-ttl", collector.DefaultBrowserCertTTL, "how long a browser certificate lasts (1h to 30d); the user's browser-cert step renews it past half its life")
	f.events = addEventsFlags(fs)
	f.console = addConsoleFlags(fs)
	return f
}

// The bounds of --browser-cert-ttl: a browser certificate copied out of a
// browser profile is of use for that long at most, and one shorter than
// an hour would have the user's step renew it more often than it runs.
const (
	minBrowserCertTTL = time.Hour
	maxBrowserCertTTL = 30 * 24 * time.Hour
)

// settings checks the flags that need more than their own value and
// builds the collector's Config and the forward-auth front's. It creates
// nothing, so config check can run it too.
func (f *runFlags) settings() (collector.Config, frontConfig, error) {
	if f.burst == 0 || *f.every == 0 {
		return collector.Config{}, frontConfig{}, fmt.Errorf("--report-burst and --report-interval cannot be 0: every device has a report budget")
	}
	if *f.heartbeat == 0 {
		// The Config would read 0 as the default: say that heartbeats
		// cannot be turned off rather than run with 10 s.
		return collector.Config{}, frontConfig{}, fmt.Errorf("--watch-heartbeat 0: heartbeats cannot be turned off (gateways behind a proxy need them to notice a lost collector); give at least %v", collector.MinWatchHeartbeat)
	}
	if d := *f.browserCertTTL; d < minBrowserCertTTL || d > maxBrowserCertTTL {
		return collector.Config{}, frontConfig{}, fmt.Errorf("--browser-cert-ttl %v: give 1h to 30d (a browser certificate copied out of a profile is of use that long)", d)
	}
	cfg := collector.Config{DataDir: f.dataDir, Database: f.database, Name: f.name, DecayInterval: *f.decay, Listen: f.listen, Advertise: f.advertise,
		ServingNames: f.servingNames, TrustDomain: f.trustDomain, MetricsListen: f.metricsListen, ReportRetention: f.retention, EventRetention: f.eventRetention,
		WatchHeartbeat: *f.heartbeat, ReportBurst: f.burst, ReportInterval: *f.every, BrowserCertTTL: *f.browserCertTTL}
	events, err := f.events.config()
	if err != nil {
		return cfg, frontConfig{}, err
	}
	cfg.Events = events
	if cfg.Console, err = f.console.config(); err != nil {
		return cfg, frontConfig{}, err
	}
	if f.ekRoots != "" {
		roots, err := attest.LoadRoots(f.ekRoots)
		if err != nil {
			return cfg, frontConfig{}, fmt.Errorf("--ekcert-roots: %w", err)
		}
		cfg.EKRoots = roots
	}
	if f.policyFile != "" {
		p, err := policy.Load(f.policyFile)
		if err != nil {
			return cfg, frontConfig{}, err
		}
		cfg.Policy, cfg.PolicyPath = p, f.policyFile
	}
	fc := frontConfig{addr: f.httpListen, bearerFile: f.httpBearer, certHeader: f.httpCertHeader, plaintext: f.httpPlain, advertise: f.advertise, timeouts: defaultFrontTimeouts}
	return cfg, fc, nil
}

func newRunCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the collector (on SQLite in its data directory, or on a shared PostgreSQL database)",
		Args:  noArgs,
	}
	f := defineRunFlags(cmd.Flags())
	cmd.RunE = func(*cobra.Command, []string) error { return f.run() }
	return cmd
}

// runCollector is posture-collector run with args, for tests.
func runCollector(args []string) error {
	return run(append([]string{"run"}, args...), os.Stdout)
}

func (f *runFlags) run() error {
	cfg, fc, err := f.settings()
	if err != nil {
		return err
	}
	// Logs quote hostnames, reasons and the IDs requests name: inert, so
	// that reading them in a terminal is safe.
	h := inert.NewTextHandler(os.Stderr, nil)
	if *f.logFormat == "json" {
		h = inert.NewJSONHandler(os.Stderr, nil)
	}
	cfg.Logger = slog.New(h)
	c, err := collector.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ext, err := gatewayfront.NewExtAuthz(gatewayfront.ExtAuthzConfig{Decider: c, TrustDomain: c.TrustDomain(), Roots: c.Roots(), Rejections: c.GatewayRejections("ext_authz")})
	if err != nil {
		return err
	}
	c.RegisterTLS(ext.Register)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if _, err := c.ReloadPolicy(); err != nil {
				cfg.Logger.Error("SIGHUP: policy reload refused", "err", err)
			}
		}
	}()
	if fc.addr != "" {
		srv, err := forwardAuthServer(c, fc)
		if err != nil {
			return err
		}
		go func() {
			if err := srv.serve(); err != nil {
				cfg.Logger.Error("forward-auth listener stopped", "err", err)
				stop()
			}
		}()
		// Stopped with the collector, before it saves its decision log for
		// the last time: requests already in progress finish first.
		c.OnStop(func() { srv.shutdown(5 * time.Second) })
		defer srv.close()
		cfg.Logger.Info("forward-auth serving", "url", srv.url)
	}
	return c.Serve(ctx)
}

// newConfigCommand is config check: the configuration file is read and
// checked as run would, and nothing is started or created.
func newConfigCommand(keys []string) *cobra.Command {
	check := &cobra.Command{
		Use:   "check",
		Short: "Check the configuration file as run would read it, and show the settings it gives",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := cmd.Flags().Lookup("config").Value.String()
			file, err := cliflag.ReadFile(path, keys)
			if err != nil {
				return err
			}
			// The flags of a run command, set from the file alone.
			fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
			f := defineRunFlags(fs)
			if err := file.Apply(fs); err != nil {
				return err
			}
			cfg, _, err := f.settings()
			if err == nil {
				err = cfg.Validate()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			out := cmd.OutOrStdout()
			inert.Fprintf(out, "%s: valid; %d setting(s)\n", path, len(file.Entries))
			for _, e := range file.Entries {
				inert.Fprintf(out, "  %s: %s (line %d)\n", e.Key, fs.Lookup(e.Key).Value.String(), e.Line)
			}
			var env []string
			for name, v := range envFlags {
				if os.Getenv(v) != "" {
					env = append(env, "$"+v+" (--"+name+")")
				}
			}
			if len(env) > 0 {
				inert.Fprintf(out, "set in the environment, which ranks above the file: %s\n", strings.Join(env, ", "))
			}
			return nil
		},
	}
	return group("config", "Check the configuration file", check)
}

// parseServingNames reads --serving-name: host names or IP addresses,
// comma-separated, each as a certificate can carry it.
func parseServingNames(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var names []string
	for _, n := range strings.Split(v, ",") {
		n = strings.TrimSpace(n)
		if net.ParseIP(n) == nil && !validHostName(n) {
			return nil, fmt.Errorf("%q is neither a host name (letters, digits, hyphens and dots) nor an IP address", n)
		}
		names = append(names, n)
	}
	return names, nil
}

// validHostName reports whether n is a DNS name a certificate may carry: labels
// of letters, digits and hyphens, not starting or ending with a hyphen.
func validHostName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(n, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// parseRetention reads --report-retention and --event-retention: whole
// days ("90d"), a Go duration ("36h"), or "forever" (0: keep everything).
func parseRetention(v string) (time.Duration, error) {
	if v == "forever" {
		return 0, nil
	}
	d, err := cliflag.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q: want whole days (90d), a duration (36h) or forever", v)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: must be longer than zero (forever keeps every report)", v)
	}
	return d, nil
}
