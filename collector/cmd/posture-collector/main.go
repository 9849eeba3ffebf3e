// Command posture-collector runs the Posture collector and is its admin CLI.
package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/gatewayfront"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/watch"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const defaultDataDir = "/var/lib/posture-collector"

const usage = `posture-collector runs the Posture collector and administers it.

Usage:
  posture-collector run [--data-dir DIR] [--database postgres://…] [--name NAME] [--listen ADDR] [--advertise ADDR] [--serving-name NAME,…] [--policy FILE] [--trust-domain NAME] [--ekcert-roots PATH] [--metrics-listen ADDR]
                        [--http-listen ADDR [--http-bearer-file FILE] [--http-cert-header NAME] [--http-plaintext]] [--report-retention 90d] [--event-retention 24h] [--report-burst 10000 --report-interval 10s] [--decay-interval 15s] [--watch-heartbeat 10s] [--log-format text|json]
  posture-collector token create [--ttl 1h] [--uses 1] [--description TEXT]
  posture-collector devices list [-o table|json]
  posture-collector devices show ID [-o text|json]
  posture-collector devices revoke ID --reason TEXT
  posture-collector devices approve ID                    approve a pending TPM device (pins its EK)
  posture-collector devices preregister --ek-sha256 HEX[,HEX…] [--description TEXT]
  posture-collector check ID --level NAME [-o text|json]   exit 0 allowed, 1 denied, 2 error
  posture-collector gateway add NAME --out DIR
  posture-collector gateway list [-o table|json]
  posture-collector gateway revoke NAME|--serial HEX --reason TEXT
  posture-collector stats [-o json]
  posture-collector policy validate FILE
  posture-collector policy diff FILE                      who would gain or lose each level under FILE
  posture-collector policy reload                         re-read --policy (also on SIGHUP); a bad file changes nothing
  posture-collector decisions [ID] [--since 1h] [--at 10:42] [--limit 100] [-o table|json]
  posture-collector replicas [-o table|json]              the collectors sharing this one's database, and how far each is behind
  posture-collector migrate --from DIR/posture.db --to postgres://…   copy a stopped collector's SQLite database into an empty PostgreSQL one, checked
  posture-collector devices bind ID --email ADDRESS [--issuer URL --subject SUB]   the device's user, for Shared Signals receivers
  posture-collector devices unbind ID
  posture-collector ssf receiver add NAME --audience AUD --level LEVEL   a Shared Signals receiver; prints its API token
  posture-collector ssf receiver list|remove NAME
  posture-collector ssf stream create --receiver NAME --endpoint URL [--authorization HEADER]   push SETs to a receiver (Okta)
  posture-collector ssf stream list|delete ID

Events leave Posture with run's --webhook, --ssf-issuer and --ssf-listen (docs/webhooks.md, docs/ssf.md).

Admin commands reach the running collector through the admin socket in
--data-dir (default ` + defaultDataDir + `).
` + consoleUsage

// exitErr carries a specific exit code.
type exitErr struct {
	code int
	err  error
}

func (e exitErr) Error() string { return e.err.Error() }

func main() {
	err := run(os.Args[1:], os.Stdout)
	if err == nil {
		return
	}
	var help helpText
	if errors.As(err, &help) {
		fmt.Print(string(help))
		return
	}
	code := 1
	var ee exitErr
	if errors.As(err, &ee) {
		code = ee.code
		err = ee.err
	}
	if err != nil {
		// Errors carry what the collector answered, and that can quote
		// a device or a request.
		fmt.Fprintln(os.Stderr, "posture-collector:", inert.Text(err.Error()))
	}
	os.Exit(code)
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(out, usage)
		return nil
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCollector(rest)
	case "token":
		return sub(rest, map[string]func([]string, io.Writer) error{"create": tokenCreate}, out)
	case "devices":
		return sub(rest, map[string]func([]string, io.Writer) error{"list": devicesList, "show": devicesShow, "revoke": devicesRevoke, "approve": devicesApprove, "preregister": devicesPreregister,
			"bind": devicesBind, "unbind": devicesUnbind}, out)
	case "check":
		return check(rest, out)
	case "gateway":
		return sub(rest, map[string]func([]string, io.Writer) error{"add": gatewayAdd, "list": gatewayList, "revoke": gatewayRevoke}, out)
	case "stats":
		return stats(rest, out)
	case "policy":
		return sub(rest, map[string]func([]string, io.Writer) error{"validate": policyValidate, "reload": policyReload, "diff": policyDiff}, out)
	case "decisions":
		return decisions(rest, out)
	case "replicas":
		return replicas(rest, out)
	case "migrate":
		return migrate(rest, out)
	case "console":
		return sub(rest, map[string]func([]string, io.Writer) error{"login": consoleLogin}, out)
	case "audit":
		return audit(rest, out)
	case "ssf":
		return ssfCommand(rest, out)
	}
	return fmt.Errorf("unknown command %q\n\n%s", cmd, usage)
}

func sub(args []string, cmds map[string]func([]string, io.Writer) error, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("missing subcommand\n\n%s", usage)
	}
	if isHelp(args[0]) {
		fmt.Fprint(out, usage)
		return nil
	}
	f, ok := cmds[args[0]]
	if !ok {
		return fmt.Errorf("unknown subcommand %q\n\n%s", args[0], usage)
	}
	return f(args[1:], out)
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help" || arg == "help"
}

// helpText is what a command prints when asked for help: main writes it to
// standard output and exits 0.
type helpText string

func (h helpText) Error() string { return string(h) }

// parse parses flags that may come before or after positional arguments.
// Asked for help, it returns the command's flags as a helpText.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			var b strings.Builder
			fs.SetOutput(&b)
			fs.PrintDefaults()
			if b.Len() == 0 {
				return nil, helpText(fmt.Sprintf("posture-collector %s takes no flags (posture-collector help lists every command)\n", fs.Name()))
			}
			return nil, helpText(fmt.Sprintf("posture-collector %s flags (posture-collector help lists every command):\n%s", fs.Name(), b.String()))
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func dataDirFlag(fs *flag.FlagSet) *string {
	return fs.String("data-dir", envOr("POSTURE_DATA_DIR", defaultDataDir), "collector data directory")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func runCollector(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	database := fs.String("database", os.Getenv("POSTURE_DATABASE"), "a postgres:// URL of a database that several collectors share (default: SQLite in --data-dir; also $POSTURE_DATABASE, which keeps a password out of the process list)")
	name := fs.String("name", "", "this collector's name among those sharing the database (default: the host's name)")
	listen := fs.String("listen", "127.0.0.1:8443", "TLS listen address for agents and gateways")
	advertise := fs.String("advertise", "", "address agents dial, written into tokens (default: --listen)")
	servingNames := fs.String("serving-name", "", "further host names or addresses, comma-separated, that the collector's TLS certificates carry (for gateways that verify several collectors by one name)")
	policyFile := fs.String("policy", "", "policy YAML file (default: the built-in policy)")
	trustDomain := fs.String("trust-domain", "posture.local", "SPIFFE trust domain")
	logFormat := outputFlagNamed(fs, "log-format", "log format", "text", "json")
	httpListen := fs.String("http-listen", "", "serve HTTP forward-auth (nginx auth_request, Caddy forward_auth, Traefik ForwardAuth) at https://ADDR/check")
	httpBearer := fs.String("http-bearer-file", "", "file of bearer secrets (one per line, mode 0600) that gateways without a certificate present to /check")
	httpPlain := fs.Bool("http-plaintext", false, "serve /check without TLS; allowed only on a loopback address")
	httpCertHeader := fs.String("http-cert-header", gatewayfront.HeaderClientCert, "the header the gateway forwards the device certificate in to /check: "+gatewayfront.HeaderClientCert+" (nginx, Caddy) or "+gatewayfront.HeaderTraefikClientCert+" (Traefik)")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (off when empty)")
	ekRoots := fs.String("ekcert-roots", "", "TPM manufacturer CA certificates (PEM bundle or directory) that EK certificates must chain to")
	retain := fs.String("report-retention", "90d", "delete stored reports older than this (days as 90d, or a duration as 36h), except each device's latest; forever keeps them all")
	eventRetain := fs.String("event-retention", "24h", "how long changes stay in the database for collectors sharing it and for resuming gateways (at least 1h; whole days as 2d, or a duration)")
	burst := fs.Int("report-burst", collector.DefaultReportBurst, "reports a device may send at once (a backlog after an outage); after that one every --report-interval, and the rest are refused for now (rate_limited)")
	every := fs.Duration("report-interval", collector.DefaultReportInterval, "once a device's --report-burst is spent, one report per this long (whole seconds, 1s to 24h)")
	decay := fs.Duration("decay-interval", watch.DefaultDecayInterval, "how often every device's decision is evaluated again as its evidence ages (watchers hear of changes); 100ms to 10m")
	consoleConfig := consoleFlags(fs)
	heartbeat := fs.Duration("watch-heartbeat", collector.DefaultWatchHeartbeat, fmt.Sprintf("a WatchPosture stream silent this long sends a heartbeat, by which gateways behind a proxy notice a collector that stopped answering (after 3 intervals without one); %v to %v", collector.MinWatchHeartbeat, collector.MaxWatchHeartbeat))
	events := addEventsFlags(fs)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return fmt.Errorf("run takes no arguments, got %q", pos)
	}
	retention, err := parseRetention(*retain)
	if err != nil {
		return fmt.Errorf("--report-retention: %w", err)
	}
	names, err := parseServingNames(*servingNames)
	if err != nil {
		return fmt.Errorf("--serving-name: %w", err)
	}
	eventRetention, err := parseRetention(*eventRetain)
	if err != nil || eventRetention == 0 {
		if err == nil {
			err = fmt.Errorf("%q: changes cannot be kept forever; give a duration of at least 1h", *eventRetain)
		}
		return fmt.Errorf("--event-retention: %w", err)
	}
	if *burst == 0 || *every == 0 {
		return fmt.Errorf("--report-burst and --report-interval cannot be 0: every device has a report budget")
	}
	if *heartbeat == 0 {
		// The Config would read 0 as the default: say that heartbeats
		// cannot be turned off rather than run with 10 s.
		return fmt.Errorf("--watch-heartbeat 0: heartbeats cannot be turned off (gateways behind a proxy need them to notice a lost collector); give at least %v", collector.MinWatchHeartbeat)
	}
	// Logs quote hostnames, reasons and the IDs requests name: inert, so
	// that reading them in a terminal is safe.
	h := inert.NewTextHandler(os.Stderr, nil)
	if *logFormat == "json" {
		h = inert.NewJSONHandler(os.Stderr, nil)
	}
	cfg := collector.Config{DataDir: *dataDir, Database: *database, Name: *name, DecayInterval: *decay, Listen: *listen, Advertise: *advertise, ServingNames: names, TrustDomain: *trustDomain, MetricsListen: *metricsListen, ReportRetention: retention, EventRetention: eventRetention, WatchHeartbeat: *heartbeat,
		ReportBurst: *burst, ReportInterval: *every, Logger: slog.New(h)}
	if cfg.Console, err = consoleConfig(); err != nil {
		return err
	}
	if cfg.Events, err = events.config(); err != nil {
		return err
	}
	if *ekRoots != "" {
		roots, err := attest.LoadRoots(*ekRoots)
		if err != nil {
			return fmt.Errorf("--ekcert-roots: %w", err)
		}
		cfg.EKRoots = roots
	}
	if *policyFile != "" {
		p, err := policy.Load(*policyFile)
		if err != nil {
			return err
		}
		cfg.Policy, cfg.PolicyPath = p, *policyFile
	}
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
	if *httpListen != "" {
		srv, err := forwardAuthServer(c, frontConfig{addr: *httpListen, bearerFile: *httpBearer, certHeader: *httpCertHeader, plaintext: *httpPlain, advertise: *advertise, timeouts: defaultFrontTimeouts})
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

// parseRetention reads --report-retention: whole days ("90d"), a Go
// duration ("36h"), or "forever" (0: keep every report).
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

func parseRetention(v string) (time.Duration, error) {
	if v == "forever" {
		return 0, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%q: want whole days (90d), a duration (36h) or forever", v)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Errorf("%q: want whole days (90d), a duration (36h) or forever", v)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: must be longer than zero (forever keeps every report)", v)
	}
	return d, nil
}

// parseAt reads --at: a time of day today (local), a local date and time,
// or RFC 3339.
func parseAt(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	for _, layout := range []string{"15:04:05", "15:04"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			y, m, d := now.In(time.Local).Date()
			return time.Date(y, m, d, t.Hour(), t.Minute(), t.Second(), 0, time.Local), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: give 10:42, 10:42:05, 2026-11-27 10:42 or RFC 3339", v)
}

// adminConn is a connection to the running collector's admin socket with a
// deadline for one command.
type adminConn struct {
	adm   posturev1.AdminServiceClient
	gw    posturev1.GatewayServiceClient
	ctx   context.Context
	close func()
}

// dialAdmin dials the collector running with dataDir.
func dialAdmin(dataDir string) (*adminConn, error) {
	conn, err := collector.DialAdmin(dataDir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	return &adminConn{
		adm: posturev1.NewAdminServiceClient(conn), gw: posturev1.NewGatewayServiceClient(conn), ctx: ctx,
		close: func() { cancel(); conn.Close() },
	}, nil
}

// rpcErr is the collector's answer to a failed call, shown inert: it may
// quote the device ID or level asked about.
func rpcErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return errors.New(inert.String(st.Message()))
	}
	return err
}

func tokenCreate(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	uses := fs.Uint("uses", 1, "how many devices may enroll with it")
	desc := fs.String("description", "", "note kept with the token")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *uses == 0 {
		return errors.New("--uses must be at least 1")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.CreateEnrollmentToken(a.ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(*ttl), Uses: uint32(*uses), Description: *desc})
	if err != nil {
		return rpcErr(err)
	}
	fmt.Fprintln(out, resp.GetToken())
	fmt.Fprintf(os.Stderr, "valid until %s for %d enrollment(s); on the device run: posture-agent enroll --token TOKEN\n", resp.GetExpiresAt().AsTime().Local().Format(time.RFC3339), resp.GetUses())
	return nil
}

// outputFlag is -o: one of formats, the first by default. Any other value
// is refused when the flags are parsed, before the collector is asked.
func outputFlag(fs *flag.FlagSet, formats ...string) *string {
	return outputFlagNamed(fs, "o", "output format", formats...)
}

// outputFlagNamed is a flag that takes one of formats, the first by default.
func outputFlagNamed(fs *flag.FlagSet, name, usage string, formats ...string) *string {
	v := formats[0]
	want := strings.Join(formats, " or ")
	fs.Func(name, usage+": "+want+" (default "+formats[0]+")", func(s string) error {
		if !slices.Contains(formats, s) {
			return fmt.Errorf("want %s", want)
		}
		v = s
		return nil
	})
	return &v
}

func devicesList(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices list", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	format := outputFlag(fs, "table", "json")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp := &posturev1.ListDevicesResponse{}
	for token := ""; ; {
		page, err := a.adm.ListDevices(a.ctx, &posturev1.ListDevicesRequest{PageToken: token})
		if err != nil {
			return rpcErr(err)
		}
		resp.Devices = append(resp.Devices, page.GetDevices()...)
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if *format == "json" {
		return printJSON(out, resp)
	}
	t := newTable(out, "ID", "HOSTNAME", "OS", "STATE", "SCORE", "LEVELS", "IDENTITY", "LAST SEEN")
	for _, d := range resp.GetDevices() {
		dev := d.GetDevice()
		var levels []string
		for _, l := range d.GetLevels() {
			if l.GetAllowed() {
				levels = append(levels, l.GetName())
			}
		}
		t.row(dev.GetId(), dev.GetHostname(), orDash(dev.GetOs()), stateName(dev.GetState()),
			d.GetScore(), orDash(strings.Join(levels, ",")), policy.AssuranceName(dev.GetAssurance()), ago(dev.GetLastSeen().AsTime(), dev.GetLastSeen() != nil))
	}
	return t.flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stateName(s posturev1.DeviceState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "DEVICE_STATE_"))
}

func outcomeName(o posturev1.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))
}

func ago(t time.Time, set bool) string {
	if !set {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func devicesShow(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices show", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	format := outputFlag(fs, "text", "json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector devices show ID")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	p, err := a.adm.GetDevice(a.ctx, &posturev1.GetDeviceRequest{DeviceId: pos[0]})
	if err != nil {
		return rpcErr(err)
	}
	if *format == "json" {
		return printJSON(out, p)
	}
	d := p.GetDevice()
	inert.Fprintf(out, "Device     %s\nSPIFFE ID  %s\nHostname   %s\nOS         %s (%s)\nIdentity   %s\nState      %s", d.GetId(), d.GetSpiffeId(), d.GetHostname(), orDash(d.GetOs()), d.GetPlatform(), policy.AssuranceName(d.GetAssurance()), stateName(d.GetState()))
	if d.GetStateReason() != "" {
		inert.Fprintf(out, " (%s)", d.GetStateReason())
	}
	if u := d.GetUser(); u != nil {
		inert.Fprintf(out, "\nUser       %s", userText(u))
	}
	if d.GetEkSha256() != "" {
		inert.Fprintf(out, "\nTPM EK     sha256:%s (%d reboots seen)", d.GetEkSha256(), d.GetReboots())
		mb := p.GetMeasuredBoot()
		switch {
		case mb.GetSecureBootKnown():
			inert.Fprintf(out, "\nMeasured   secure boot %s (PCR 7, %d events replayed)", map[bool]string{true: "enabled", false: "disabled"}[mb.GetSecureBoot()], mb.GetEvents())
		case mb != nil:
			inert.Fprintf(out, "\nMeasured   unknown: %s", mb.GetReason())
		}
	}
	inert.Fprintf(out, "\nEnrolled   %s\nLast seen  %s (seq %d)\nScore      %d (raw %d)\n\n", d.GetEnrolledAt().AsTime().Local().Format(time.RFC3339), ago(d.GetLastSeen().AsTime(), d.GetLastSeen() != nil), d.GetLastSeq(), p.GetScore(), p.GetRawScore())
	checks := newTable(out, "CHECK", "RESULT", "WEIGHT", "AGE", "REASON", "FIX")
	for _, c := range p.GetChecks() {
		age := "-"
		if c.GetEvidenceAge() != nil {
			age = c.GetEvidenceAge().AsDuration().String()
		}
		checks.row(c.GetName(), outcomeName(c.GetOutcome()), c.GetWeight(), age, c.GetReason()+graceText(c), orDash(c.GetRemediation()))
	}
	checks.flush()
	fmt.Fprintln(out)
	levels := newTable(out, "LEVEL", "ALLOWED", "WHY NOT")
	for _, l := range p.GetLevels() {
		levels.row(l.GetName(), levelAllowed(l), orDash(strings.Join(append(l.GetReasons(), l.GetWarnings()...), "; ")))
	}
	return levels.flush()
}

func devicesRevoke(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices revoke", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	reason := fs.String("reason", "", "why the device is revoked (required; shown in every later denial)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector devices revoke ID --reason TEXT")
	}
	if *reason == "" {
		return errors.New("--reason is required: it is recorded and shown in every later denial")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.RevokeDevice(a.ctx, &posturev1.RevokeDeviceRequest{DeviceId: pos[0], Reason: *reason})
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "revoked %s (%s)\n", resp.GetDevice().GetId(), resp.GetDevice().GetStateReason())
	return nil
}

func gatewayList(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gateway list", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	format := outputFlag(fs, "table", "json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: posture-collector gateway list [-o table|json]")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ListGateways(a.ctx, &posturev1.ListGatewaysRequest{})
	if err != nil {
		return rpcErr(err)
	}
	if *format == "json" {
		return printJSON(out, resp)
	}
	t := newTable(out, "NAME", "SERIAL", "ISSUED", "EXPIRES", "REVOKED")
	const day = "2006-01-02"
	for _, g := range resp.GetGateways() {
		issued, expires, revoked := "-", "-", "-"
		if g.GetIssuedAt() != nil {
			issued, expires = g.GetIssuedAt().AsTime().Local().Format(day), g.GetExpiresAt().AsTime().Local().Format(day)
		}
		if g.GetRevokedAt() != nil {
			revoked = g.GetRevokedAt().AsTime().Local().Format(day) + ": " + g.GetRevokeReason()
		}
		t.row(orDash(g.GetName()), g.GetSerial(), issued, expires, revoked)
	}
	return t.flush()
}

func gatewayRevoke(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gateway revoke", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	serial := fs.String("serial", "", "revoke one certificate by its serial (hex), instead of every certificate of a name")
	reason := fs.String("reason", "", "why (required; kept and told to the gateway)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if (len(pos) == 1) == (*serial != "") || len(pos) > 1 {
		return errors.New("usage: posture-collector gateway revoke NAME --reason TEXT, or gateway revoke --serial HEX --reason TEXT")
	}
	if *reason == "" {
		return errors.New("--reason is required: it is kept and told to the gateway")
	}
	req := &posturev1.RevokeGatewayRequest{Serial: *serial, Reason: *reason}
	if len(pos) == 1 {
		req.Name = pos[0]
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.RevokeGateway(a.ctx, req)
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "revoked %d gateway certificate(s)\n", resp.GetRevoked())
	return nil
}

func check(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	level := fs.String("level", "", "access level to check (required)")
	format := outputFlag(fs, "text", "json")
	pos, err := parse(fs, args)
	if err != nil {
		return exitErr{2, err}
	}
	if len(pos) != 1 || *level == "" {
		return exitErr{2, errors.New("usage: posture-collector check ID --level NAME")}
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return exitErr{2, err}
	}
	defer a.close()
	resp, err := a.gw.CheckAccess(a.ctx, &posturev1.CheckAccessRequest{DeviceId: pos[0], AccessLevel: *level})
	if err != nil {
		return exitErr{2, rpcErr(err)}
	}
	if *format == "json" {
		if err := printJSON(out, resp); err != nil {
			return exitErr{2, err}
		}
	} else {
		verdict := "DENY"
		if resp.GetAllowed() {
			verdict = "ALLOW"
		}
		inert.Fprintf(out, "%s %s for level %s (score %d, identity %s, state %s)\n", verdict, resp.GetDeviceId(), resp.GetAccessLevel(), resp.GetScore(), policy.AssuranceName(resp.GetAssurance()), stateName(resp.GetState()))
		for _, r := range resp.GetReasons() {
			inert.Fprintf(out, "  - %s\n", r)
		}
		for _, c := range resp.GetFailedChecks() {
			inert.Fprintf(out, "  * %s %s: %s; fix: %s\n", c.GetName(), outcomeName(c.GetOutcome()), c.GetReason(), orDash(c.GetRemediation()))
		}
	}
	if !resp.GetAllowed() {
		return exitErr{1, nil}
	}
	return nil
}

func gatewayAdd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gateway add", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	outDir := fs.String("out", "", "directory to write gateway.crt, gateway.key and ca.crt into (required)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *outDir == "" {
		return errors.New("usage: posture-collector gateway add NAME --out DIR")
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: pos[0]}}, key)
	if err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.IssueGatewayCertificate(a.ctx, &posturev1.IssueGatewayCertificateRequest{Name: pos[0], Csr: csr})
	if err != nil {
		return rpcErr(err)
	}
	cert, err := x509.ParseCertificate(resp.GetCertificate())
	if err != nil {
		return err
	}
	var cas []*x509.Certificate
	for _, der := range resp.GetCaCertificates() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		cas = append(cas, c)
	}
	if err := os.MkdirAll(*outDir, 0o700); err != nil {
		return err
	}
	if err := pki.WritePrivateKey(filepath.Join(*outDir, "gateway.key"), key); err != nil {
		return err
	}
	if err := pki.WriteCertificates(filepath.Join(*outDir, "gateway.crt"), cert); err != nil {
		return err
	}
	if err := pki.WriteCertificates(filepath.Join(*outDir, "ca.crt"), cas...); err != nil {
		return err
	}
	inert.Fprintf(out, "gateway %s: wrote gateway.crt, gateway.key and ca.crt to %s\n", resp.GetSpiffeId(), *outDir)
	return nil
}

func stats(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	outputFlag(fs, "json") // accepted for scripts that ask for it
	if _, err := parse(fs, args); err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	s, err := a.adm.GetStats(a.ctx, &posturev1.GetStatsRequest{})
	if err != nil {
		return rpcErr(err)
	}
	return printJSON(out, s)
}

func policyValidate(args []string, out io.Writer) error {
	pos, err := parse(flag.NewFlagSet("policy validate", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector policy validate FILE")
	}
	args = pos
	p, err := policy.Load(args[0])
	if err != nil {
		return err
	}
	b, _ := json.Marshal(p.LevelNames())
	inert.Fprintf(out, "%s: valid; %d checks, levels %s\n", args[0], len(p.Checks), string(b))
	return nil
}

func devicesApprove(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices approve", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector devices approve ID")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ApproveDevice(a.ctx, &posturev1.ApproveDeviceRequest{DeviceId: pos[0]})
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "approved %s: EK sha256:%s pinned, identity %s\n", resp.GetDevice().GetId(), resp.GetDevice().GetEkSha256(), policy.AssuranceName(resp.GetDevice().GetAssurance()))
	return nil
}

func devicesPreregister(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices preregister", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	hashes := fs.String("ek-sha256", "", "comma-separated SHA-256 hashes (hex) of EK public keys in PKIX DER form (required)")
	desc := fs.String("description", "", "note kept with the pins")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *hashes == "" {
		return errors.New("--ek-sha256 is required")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.PreregisterEK(a.ctx, &posturev1.PreregisterEKRequest{EkSha256: strings.Split(*hashes, ","), Description: *desc})
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "pinned %d new EK hash(es); devices enrolling with them are tpm_ek_pinned\n", resp.GetAdded())
	return nil
}

func policyReload(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("policy reload", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ReloadPolicy(a.ctx, &posturev1.ReloadPolicyRequest{})
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "policy reloaded: %d checks, levels %s\n", resp.GetChecks(), strings.Join(resp.GetLevels(), ", "))
	return nil
}

func policyDiff(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("policy diff", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	limit := fs.Uint("limit", 1000, "list at most this many changes one by one (the counts per level cover all)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector policy diff FILE")
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.DiffPolicy(a.ctx, &posturev1.DiffPolicyRequest{PolicyYaml: data, Limit: uint32(*limit)})
	if err != nil {
		return rpcErr(err)
	}
	if resp.GetTotalChanges() == 0 {
		inert.Fprintf(out, "no change: all %d devices keep the same levels\n", resp.GetDevices())
		return nil
	}
	t := newTable(out, "DEVICE", "HOSTNAME", "LEVEL", "CHANGE", "WHY")
	for _, ch := range resp.GetChanges() {
		change, why := diffChange(ch)
		t.row(ch.GetDeviceId(), ch.GetHostname(), ch.GetLevel(), change, why)
	}
	t.flush()
	if n := resp.GetTotalChanges() - uint32(len(resp.GetChanges())); n > 0 {
		inert.Fprintf(out, "... and %d more change(s) not listed (--limit)\n", n)
	}
	for _, l := range resp.GetLevels() {
		inert.Fprintf(out, "level %s: %d device(s) gain it, %d lose it\n", l.GetLevel(), l.GetGained(), l.GetLost())
	}
	inert.Fprintf(out, "%d change(s) across %d devices; nothing is enforced until the policy is reloaded\n", resp.GetTotalChanges(), resp.GetDevices())
	return nil
}

func decisions(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("decisions", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	since := fs.Duration("since", time.Hour, "how far back from --at (or now) to look")
	at := fs.String("at", "", "the decisions made up to this time: 10:42, 10:42:05 (today, local time), 2026-11-27 10:42 or RFC 3339")
	limit := fs.Uint("limit", 100, "at most this many decisions (1 to 10000)")
	format := outputFlag(fs, "table", "json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return errors.New("usage: posture-collector decisions [ID] [--since 1h] [--at 10:42]")
	}
	if *limit < 1 || *limit > 10000 {
		return fmt.Errorf("--limit %d: give 1 to 10000", *limit)
	}
	end := time.Now()
	req := &posturev1.ListDecisionsRequest{Limit: uint32(*limit)}
	if *at != "" {
		if end, err = parseAt(*at, time.Now()); err != nil {
			return fmt.Errorf("--at: %w", err)
		}
		req.Until = timestamppb.New(end)
	}
	req.Since = timestamppb.New(end.Add(-*since))
	if len(pos) == 1 {
		req.DeviceId = pos[0]
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ListDecisions(a.ctx, req)
	if err != nil {
		return rpcErr(err)
	}
	if *format == "json" {
		return printJSON(out, resp)
	}
	t := newTable(out, "TIME", "DEVICE", "LEVEL", "RESULT", "SCORE", "CALLER", "WHY")
	const stamp = "2006-01-02 15:04:05"
	for _, d := range resp.GetDecisions() {
		result := "deny"
		if d.GetAllowed() {
			result = "allow"
		}
		when := d.GetAt().AsTime().Local().Format(stamp)
		if d.GetCount() > 1 {
			when = fmt.Sprintf("%s (%d times since %s)", when, d.GetCount(), d.GetFirstAt().AsTime().Local().Format(stamp))
		}
		t.row(when, d.GetDeviceId(), d.GetAccessLevel(), result, d.GetScore(), d.GetCaller(), orDash(strings.Join(d.GetReasons(), "; ")))
		for _, c := range d.GetFailedChecks() {
			// Under WHY, in the table's columns, so its alignment holds.
			t.row("", "", "", "", "", "", fmt.Sprintf("* %s %s: %s; fix: %s", c.GetName(), outcomeName(c.GetOutcome()), c.GetReason(), orDash(c.GetRemediation())))
		}
	}
	return t.flush()
}
