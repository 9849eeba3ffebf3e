package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
)

// startCollector runs a real collector in-process; the CLI reaches it
// through the admin socket like it would in production.
func startCollector(t *testing.T, mods ...func(*collector.Config)) string {
	t.Helper()
	dir := t.TempDir()
	cfg := collector.Config{DataDir: dir, Listen: "127.0.0.1:0"}
	for _, m := range mods {
		m(&cfg)
	}
	c, err := collector.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return dir
}

func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := execute(args, &out, &out)
	return out.String(), code
}

func TestCommands(t *testing.T) {
	dir := startCollector(t)
	tok, code := cli(t, "token", "create", "--data-dir", dir, "--ttl", "5m")
	if code != 0 || !strings.HasPrefix(tok, "PT1.") {
		t.Fatalf("token create: %q (exit %d)", tok, code)
	}
	stateDir := t.TempDir()
	res, err := agent.Enroll(context.Background(), stateDir, strings.TrimSpace(tok))
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	id := res.DeviceID

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"list", []string{"devices", "list", "--data-dir", dir}, 0, id},
		{"list json", []string{"devices", "list", "--data-dir", dir, "-o", "json"}, 0, `"id": "` + id + `"`},
		{"show", []string{"devices", "show", id, "--data-dir", dir}, 0, "spiffe://posture.local/device/" + id},
		{"show unknown", []string{"devices", "show", "nope", "--data-dir", dir}, 1, "not enrolled"},
		{"check denies before any report", []string{"check", id, "--level", "basic", "--data-dir", dir}, 1, "no verified posture report yet"},
		{"check without level", []string{"check", id, "--data-dir", dir}, 2, "usage"},
		{"check with no collector", []string{"check", id, "--level", "basic", "--data-dir", t.TempDir()}, 2, "no collector is running"},
		{"revoke without reason", []string{"devices", "revoke", id, "--data-dir", dir}, 2, "--reason is required"},
		{"revoke", []string{"devices", "revoke", id, "--reason", "lost", "--data-dir", dir}, 0, "revoked " + id},
		{"check after revoke", []string{"check", id, "--level", "basic", "--data-dir", dir}, 1, "revoked: lost"},
		{"token with zero uses", []string{"token", "create", "--uses", "0", "--data-dir", dir}, 2, "--uses must be at least 1"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"policy validate built-in", []string{"policy", "validate", "../../policy/default.yaml"}, 0, "valid"},
		{"stats", []string{"stats", "--data-dir", dir}, 0, "enrollments - 1"},
		{"decisions", []string{"decisions", id, "--data-dir", dir}, 0, "deny"},
		{"decisions json", []string{"decisions", "--data-dir", dir, "-o", "json"}, 0, "revoked: lost"},
		{"policy diff", []string{"policy", "diff", "../../policy/default.yaml", "--data-dir", dir}, 0, "no change"},
		{"policy reload without a file", []string{"policy", "reload", "--data-dir", dir}, 1, "built-in policy"},
		{"gateway list", []string{"gateway", "list", "--data-dir", dir}, 0, "NAME SERIAL ISSUED EXPIRES REVOKED"},
		{"gateway revoke unknown", []string{"gateway", "revoke", "nope", "--reason", "leaked", "--data-dir", dir}, 1, "no gateway certificate was issued"},
		{"gateway revoke without reason", []string{"gateway", "revoke", "nope", "--data-dir", dir}, 2, "--reason is required"},
		{"gateway revoke name and serial", []string{"gateway", "revoke", "nope", "--serial", "0a", "--reason", "x", "--data-dir", dir}, 2, "usage"},
		{"decisions at a time", []string{"decisions", id, "--at", time.Now().Add(time.Minute).Format(time.RFC3339), "--data-dir", dir}, 0, "revoked: lost"},
		{"decisions at a bad time", []string{"decisions", "--at", "noon", "--data-dir", dir}, 2, `--at: "noon"`},
		{"decisions limit too high", []string{"decisions", "--limit", "20000", "--data-dir", dir}, 2, "--limit 20000"},
		{"decisions bad format", []string{"decisions", "-o", "yaml", "--data-dir", dir}, 2, `invalid argument "yaml" for "-o, --output" flag: want table or json`},
		{"list bad format", []string{"devices", "list", "-o", "yaml", "--data-dir", dir}, 2, `want table or json`},
		{"show bad format", []string{"devices", "show", id, "-o", "table", "--data-dir", dir}, 2, `want text or json`},
		{"gateway list bad format", []string{"gateway", "list", "-o", "yaml", "--data-dir", dir}, 2, `want table or json`},
		{"stats bad format", []string{"stats", "-o", "yaml", "--data-dir", dir}, 2, `want table or json`},
		{"stats json", []string{"stats", "-o", "json", "--data-dir", dir}, 0, `"enrollments": 1`},
		{"run with a log format it does not write", []string{"run", "--log-format", "yaml", "--data-dir", t.TempDir()}, 2, `invalid argument "yaml" for "--log-format" flag: want text or json`},
		// Refused before asking: with no collector the answer is still the
		// format, not the missing collector.
		{"check bad format", []string{"check", id, "--level", "basic", "-o", "yaml", "--data-dir", t.TempDir()}, 2, `want text or json`},
		{"check json", []string{"check", id, "--level", "basic", "-o", "json", "--data-dir", dir}, 1, `"state": "revoked"`},
		{"help", []string{"help"}, 0, "decisions Access decisions"},
		{"policy help", []string{"policy", "--help"}, 0, "validate Check a policy file"},
		{"policy validate help", []string{"policy", "validate", "--help"}, 0, "posture-collector policy validate FILE"},
		{"decisions help", []string{"decisions", "--help"}, 0, "--at string"},
		{"devices revoke help", []string{"devices", "revoke", "-h"}, 0, "--reason string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := cli(t, tt.args...)
			// protojson varies its spacing on purpose: compare with spaces squeezed.
			if code != tt.code || !strings.Contains(strings.Join(strings.Fields(out), " "), tt.want) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.code, tt.want)
			}
		})
	}
}

func TestGatewayAdd(t *testing.T) {
	dir := startCollector(t)
	out := filepath.Join(t.TempDir(), "gw")
	if msg, code := cli(t, "gateway", "add", "edge-1", "--out", out, "--data-dir", dir); code != 0 {
		t.Fatalf("gateway add: exit %d: %s", code, msg)
	}
	for name, mode := range map[string]os.FileMode{"gateway.key": 0o600, "gateway.crt": 0o644, "ca.crt": 0o644} {
		st, err := os.Stat(filepath.Join(out, name))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %v", name, err, st.Mode().Perm(), mode)
		}
	}
	if msg, code := cli(t, "gateway", "add", "Bad Name", "--out", out, "--data-dir", dir); code == 0 || !strings.Contains(msg, "must be 1-63 lowercase") {
		t.Errorf("bad gateway name: exit %d %q", code, msg)
	}
}

func TestRunRefusesSecondCollector(t *testing.T) {
	dir := startCollector(t)
	_, err := collector.New(collector.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "another collector is running") {
		t.Errorf("second collector on the same data dir: %v", err)
	}
}

// serveCollector runs a real collector in-process for tests that use it
// directly rather than through the admin socket.
func serveCollector(t *testing.T) *collector.Collector {
	t.Helper()
	return serveCollectorWith(t, collector.Config{})
}

// serveCollectorWith is serveCollector with cfg, in a fresh data directory
// and listening on loopback.
func serveCollectorWith(t *testing.T, cfg collector.Config) *collector.Collector {
	t.Helper()
	cfg.DataDir, cfg.Listen = t.TempDir(), "127.0.0.1:0"
	c, err := collector.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func TestForwardAuthServerChecks(t *testing.T) {
	c := serveCollector(t)

	loose := filepath.Join(t.TempDir(), "bearer")
	os.WriteFile(loose, []byte("a-long-enough-bearer-secret\n"), 0o644)
	tight := filepath.Join(t.TempDir(), "bearer")
	os.WriteFile(tight, []byte("# gateways\na-long-enough-bearer-secret\n"), 0o600)
	empty := filepath.Join(t.TempDir(), "bearer")
	os.WriteFile(empty, []byte("# none\n"), 0o600)
	tests := []struct {
		name, addr, bearer string
		plain              bool
		want               string
	}{
		{"plaintext off loopback", "0.0.0.0:0", "", true, "only on a loopback address"},
		{"bearer file readable by others", "127.0.0.1:0", loose, false, "chmod 600"},
		{"empty bearer file", "127.0.0.1:0", empty, false, "holds no secret"},
		{"bad address", "nowhere", "", false, "--http-listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := forwardAuthServer(c, frontConfig{addr: tt.addr, bearerFile: tt.bearer, plaintext: tt.plain, timeouts: defaultFrontTimeouts})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("forwardAuthServer: %v, want an error containing %q", err, tt.want)
			}
		})
	}

	f, roots := startFront(t, c, frontConfig{addr: "127.0.0.1:0", bearerFile: tight, timeouts: defaultFrontTimeouts})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}}}
	req, _ := http.NewRequest("GET", f.url+"?level=basic", nil)
	req.Header.Set("Authorization", "Bearer a-long-enough-bearer-secret")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s over TLS: %v", f.url, err)
	}
	resp.Body.Close()
	// An authenticated gateway without a device certificate: 401, never 200.
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("status %d, want 401 for a request without a device certificate", resp.StatusCode)
	}
}

// TestForwardAuthClosesIdleConnections holds connections to /check open
// without sending anything: the server must close them once they have been
// idle for the idle timeout, whatever the protocol, so clients that never
// leave cannot use up the collector's descriptors.
func TestForwardAuthClosesIdleConnections(t *testing.T) {
	c := serveCollector(t)
	// Every other timeout is far longer than the idle one and than the
	// wait below: only the idle timeout can close these connections.
	timeouts := frontTimeouts{readHeader: time.Minute, read: time.Minute, write: time.Minute, idle: 100 * time.Millisecond}
	f, roots := startFront(t, c, frontConfig{addr: "127.0.0.1:0", timeouts: timeouts})

	tests := []struct {
		name  string
		proto string // ALPN
		// start uses the connection before it goes idle; it returns what
		// to read the rest of the connection from.
		start func(t *testing.T, conn net.Conn) io.Reader
	}{
		{
			name: "HTTP/1.1 keep-alive after a request", proto: "http/1.1",
			start: func(t *testing.T, conn net.Conn) io.Reader {
				if _, err := io.WriteString(conn, "GET /check?level=basic HTTP/1.1\r\nHost: collector\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(conn)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.Close {
					t.Fatal("the server closed the connection after the response; want it kept alive until idle")
				}
				return br
			},
		},
		{
			name: "HTTP/2 after the preface", proto: "h2",
			start: func(t *testing.T, conn net.Conn) io.Reader {
				// The client preface and an empty SETTINGS frame (RFC 9113 §3.4).
				preface := "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
				if _, err := io.WriteString(conn, preface); err != nil {
					t.Fatal(err)
				}
				return conn
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", f.l.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{tc.proto}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.ConnectionState().NegotiatedProtocol; got != tc.proto {
				t.Fatalf("negotiated %q, want %q", got, tc.proto)
			}
			r := tc.start(t, conn)
			// Only a bound on a test that would otherwise hang: the
			// server should close after 100ms.
			const wait = 20 * time.Second
			conn.SetReadDeadline(time.Now().Add(wait))
			_, err = io.Copy(io.Discard, r)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open after %v idle; the server never closes idle connections", wait)
			}
		})
	}
}

// lockedBuffer is a log destination tests read while the collector writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestForwardAuthRejectionsCounted sends /check requests that are refused
// before any decision and finds each counted by reason in the collector's
// metrics and logged as a warning.
func TestForwardAuthRejectionsCounted(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	var logs lockedBuffer
	c := serveCollectorWith(t, collector.Config{MetricsListen: metricsAddr, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	bearer := filepath.Join(t.TempDir(), "bearer")
	if err := os.WriteFile(bearer, []byte("a-long-enough-bearer-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, roots := startFront(t, c, frontConfig{addr: "127.0.0.1:0", bearerFile: bearer, timeouts: defaultFrontTimeouts})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}

	requests := []struct {
		query, authorization string
		wantCode             int
	}{
		{"?level=basic", "", http.StatusUnauthorized},
		{"?level=basic", "Bearer not-the-secret-at-all", http.StatusUnauthorized},
		{"", "Bearer a-long-enough-bearer-secret", http.StatusBadRequest},
		{"?level=basic", "Bearer a-long-enough-bearer-secret", http.StatusUnauthorized},
	}
	for _, r := range requests {
		req, _ := http.NewRequest(http.MethodGet, f.url+r.query, nil)
		if r.authorization != "" {
			req.Header.Set("Authorization", r.authorization)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != r.wantCode {
			t.Fatalf("GET /check%s with %q: status %d, want %d", r.query, r.authorization, resp.StatusCode, r.wantCode)
		}
	}

	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`posture_gateway_rejected_total{front="forward_auth",reason="gateway_unauthenticated"} 2`,
		`posture_gateway_rejected_total{front="forward_auth",reason="level_missing"} 1`,
		`posture_gateway_rejected_total{front="forward_auth",reason="device_cert_missing"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s; have:\n%s", want, grepLines(string(body), "posture_gateway_rejected_total"))
		}
	}
	for _, want := range []string{"reason=gateway_unauthenticated", "reason=level_missing", "reason=device_cert_missing"} {
		if !strings.Contains(logs.String(), "level=WARN msg=\"gateway request refused\" front=forward_auth "+want) {
			t.Errorf("no warning logged with %s; log:\n%s", want, logs.String())
		}
	}
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func TestReportRetentionFlag(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "90d", want: 90 * 24 * time.Hour},
		{in: "1d", want: 24 * time.Hour},
		{in: "36h", want: 36 * time.Hour},
		{in: "forever", want: 0},
		{in: "0d", err: "longer than zero"},
		{in: "0", err: "longer than zero"},
		{in: "-5h", err: "longer than zero"},
		{in: "1.5d", err: "whole days"},
		{in: "ninety", err: "whole days"},
		{in: "", err: "whole days"},
	} {
		got, err := parseRetention(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("parseRetention(%q) = %v, %v; want an error about %q", c.in, got, err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("parseRetention(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	// A bad value stops run before anything is created.
	dir := filepath.Join(t.TempDir(), "data")
	err := runCollector([]string{"--data-dir", dir, "--report-retention", "3 months"})
	if err == nil || !strings.Contains(err.Error(), "--report-retention") {
		t.Errorf("run with a bad --report-retention: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run with a bad --report-retention created the data directory: %v", err)
	}
}

// --serving-name takes names and addresses, comma-separated, and refuses
// what a certificate cannot carry, before anything is created.
func TestServingNameFlag(t *testing.T) {
	got, err := parseServingNames(" posture.example.com, 10.0.0.7 ,::1")
	if err != nil || !slices.Equal(got, []string{"posture.example.com", "10.0.0.7", "::1"}) {
		t.Errorf("parseServingNames = %q, %v", got, err)
	}
	if got, err := parseServingNames(""); err != nil || got != nil {
		t.Errorf("parseServingNames(\"\") = %q, %v; want none", got, err)
	}
	for _, bad := range []string{"posture.example.com,", "-posture.example", "posture_example.com", "posture.example.com:8443", "a..b", "ex ample"} {
		dir := filepath.Join(t.TempDir(), "data")
		err := runCollector([]string{"--data-dir", dir, "--serving-name", bad})
		if err == nil || !strings.Contains(err.Error(), "--serving-name") {
			t.Errorf("run --serving-name %q: %v; want an error naming the flag", bad, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run --serving-name %q created the data directory: %v", bad, err)
		}
	}
}

// --event-retention refuses forever, nonsense and less than an hour, before
// anything is created.
func TestEventRetentionFlag(t *testing.T) {
	for _, c := range []struct{ in, err string }{
		{"forever", "cannot be kept forever"},
		{"soon", "whole days"},
		{"30m", "at least an hour"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		err := runCollector([]string{"--data-dir", dir, "--event-retention", c.in})
		if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "--event-retention") {
			t.Errorf("run --event-retention %q: %v; want an error about %q naming the flag", c.in, err, c.err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run --event-retention %q created the data directory: %v", c.in, err)
		}
	}
}

// --watch-heartbeat refuses what cannot work, before anything is created:
// 0 would turn heartbeats off (the configuration would read it as the
// default), and intervals below the floor or negative make no sense.
func TestWatchHeartbeatFlag(t *testing.T) {
	for _, c := range []struct {
		in  string
		err string
	}{
		{"0", "cannot be turned off"},
		{"0s", "cannot be turned off"},
		{"-10s", "is negative"},
		{"50ms", "too short"},
		{"ten seconds", "invalid argument"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		err := runCollector([]string{"--data-dir", dir, "--listen", "127.0.0.1:0", "--watch-heartbeat", c.in})
		if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "watch-heartbeat") {
			t.Errorf("run --watch-heartbeat %q: %v; want an error naming the flag and saying %q", c.in, err, c.err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run --watch-heartbeat %q created the data directory: %v", c.in, err)
		}
	}
	out, code := cli(t, "run", "--help")
	if code != 0 || !strings.Contains(out, "-watch-heartbeat duration") || !strings.Contains(out, "(default 10s)") || !strings.Contains(out, "100ms to 1m0s") {
		t.Errorf("run --help (exit %d) does not describe --watch-heartbeat with its default and bounds:\n%s", code, out)
	}
}

func TestParseAt(t *testing.T) {
	now := time.Date(2026, 11, 27, 15, 0, 0, 0, time.Local)
	for _, c := range []struct {
		in   string
		want time.Time
	}{
		{"10:42", time.Date(2026, 11, 27, 10, 42, 0, 0, time.Local)},
		{"10:42:05", time.Date(2026, 11, 27, 10, 42, 5, 0, time.Local)},
		{"2026-11-20 10:42", time.Date(2026, 11, 20, 10, 42, 0, 0, time.Local)},
		{"2026-11-20T10:42:00Z", time.Date(2026, 11, 20, 10, 42, 0, 0, time.UTC)},
	} {
		got, err := parseAt(c.in, now)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("parseAt(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "noon", "25:00", "2026-13-01 10:00"} {
		if _, err := parseAt(bad, now); err == nil {
			t.Errorf("parseAt(%q) succeeded", bad)
		}
	}
}

// startFront serves the HTTP front end of c until the test ends, and
// returns it with a pool holding the collector CA, which its TLS
// certificate chains to.
func startFront(t *testing.T, c *collector.Collector, fc frontConfig) (*httpFront, *x509.CertPool) {
	t.Helper()
	f, err := forwardAuthServer(c, fc)
	if err != nil {
		t.Fatal(err)
	}
	go f.serve()
	t.Cleanup(f.close)
	roots := x509.NewCertPool()
	roots.AddCert(c.CA())
	return f, roots
}
