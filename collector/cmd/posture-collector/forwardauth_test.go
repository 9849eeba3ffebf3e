package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// frontAnonPerPeer is the collector's bound on /check connections without
// a certificate from one address (README, Configuration).
const frontAnonPerPeer = 64

// A peer without a certificate holds a bounded number of /check
// connections; beyond it a connection is answered 429 saying why, counted,
// and closed. Other addresses, gateways with a certificate from the same
// address, and connections that authenticated with a bearer secret are
// not limited by it.
func TestForwardAuthLimitsAnonymousConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	c := serveCollectorWithDir(t, dir, collector.Config{MetricsListen: metricsAddr})
	bearer := filepath.Join(t.TempDir(), "bearer")
	if err := os.WriteFile(bearer, []byte("a-long-enough-bearer-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, roots := startFront(t, c, frontConfig{addr: "127.0.0.1:0", bearerFile: bearer, timeouts: defaultFrontTimeouts})
	addr := f.l.Addr().String()

	var held []*frontClient
	for range frontAnonPerPeer {
		fc := dialFront(t, addr, "127.0.0.1", roots, nil)
		if resp, _ := fc.get(t, ""); resp.StatusCode != http.StatusUnauthorized || resp.Close {
			t.Fatalf("a connection within the bound: status %d, closed %v; want 401, kept open", resp.StatusCode, resp.Close)
		}
		held = append(held, fc)
	}
	resp, body := dialFront(t, addr, "127.0.0.1", roots, nil).get(t, "")
	if resp.StatusCode != http.StatusTooManyRequests || !resp.Close || !strings.Contains(body, "too many connections without a client certificate from 127.0.0.1 (at most 64 at once)") {
		t.Errorf("a connection beyond the bound: status %d, closed %v, %q; want 429 saying why, closed", resp.StatusCode, resp.Close, body)
	}
	if resp, _ := dialFront(t, addr, "127.0.0.2", roots, nil).get(t, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a connection from another address: status %d, want 401", resp.StatusCode)
	}
	conn, err := collector.DialAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gw := testtools.GatewayCert(t, posturev1.NewAdminServiceClient(conn), "nginx")
	if resp, body := dialFront(t, addr, "127.0.0.1", roots, &gw).get(t, ""); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "no device certificate") {
		t.Errorf("a gateway with a certificate from the same address: status %d, %q; want its request answered (401 for the missing device certificate)", resp.StatusCode, body)
	}
	// A connection whose request authenticates with a bearer secret
	// stops counting, and makes room.
	if resp, body := held[0].get(t, "Bearer a-long-enough-bearer-secret"); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "no device certificate") {
		t.Fatalf("a bearer request: status %d, %q", resp.StatusCode, body)
	}
	if resp, _ := dialFront(t, addr, "127.0.0.1", roots, nil).get(t, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a connection once another authenticated: status %d, want 401", resp.StatusCode)
	}

	resp, err = http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `posture_gateway_rejected_total{front="forward_auth",reason="anonymous_connections_per_peer"} 1`; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %s; have:\n%s", want, grepLines(string(metrics), "posture_gateway_rejected_total"))
	}
}

// frontClient is one HTTP/1.1 connection to /check.
type frontClient struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialFront connects to the front end at addr from the loopback address
// src, with a client certificate when cert is set.
func dialFront(t *testing.T, addr, src string, roots *x509.CertPool, cert *tls.Certificate) *frontClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}, Config: cfg}
	conn, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &frontClient{conn: conn, r: bufio.NewReader(conn)}
}

// get sends GET /check?level=basic with authorization (when set) and
// reads the answer.
func (fc *frontClient) get(t *testing.T, authorization string) (*http.Response, string) {
	t.Helper()
	req := "GET /check?level=basic HTTP/1.1\r\nHost: collector\r\n"
	if authorization != "" {
		req += "Authorization: " + authorization + "\r\n"
	}
	fc.conn.SetDeadline(time.Now().Add(30 * time.Second)) // a bound on a test that would hang
	if _, err := io.WriteString(fc.conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(fc.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// serveCollectorWithDir is serveCollectorWith in the data directory dir,
// for tests that reach its admin socket.
func serveCollectorWithDir(t *testing.T, dir string, cfg collector.Config) *collector.Collector {
	t.Helper()
	cfg.DataDir, cfg.Listen = dir, "127.0.0.1:0"
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
