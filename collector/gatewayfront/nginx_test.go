package gatewayfront

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
)

// nginxConfig fills testdata/nginx.conf.tmpl.
type nginxConfig struct {
	Dir                   string
	Port                  int
	ServerCert, ServerKey string
	CA                    string
	Upstream, Collector   string // host:port
	CollectorTLS          string // host:port, gateway mTLS
	GatewayCert           string
	GatewayKey            string
	Secret                string
}

// TestNginx puts Debian's nginx, with auth_request pointed at the
// forward-auth handler, in front of a test application, and drives it with
// a real enrolled device's certificate.
func TestNginx(t *testing.T) {
	name := "nginx"
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		name = "/usr/sbin/nginx" // outside a non-root PATH
	}
	bin := testtools.Require(t, name)

	e := startCollector(t)
	dev := e.enroll()
	gw := e.gatewayCert("edge-1")

	var mu sync.Mutex
	var seen []string // X-Posture-Device as the application received it
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get(HeaderDevice))
		mu.Unlock()
		io.WriteString(w, "hello from the application\n")
	}))
	t.Cleanup(app.Close)

	fa, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots, BearerSecrets: []string{testSecret}})
	if err != nil {
		t.Fatal(err)
	}
	check := httptest.NewServer(fa)
	t.Cleanup(check.Close)
	checkTLS := httptest.NewUnstartedServer(fa)
	checkTLS.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{e.serverCert()}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: e.roots}
	checkTLS.StartTLS()
	t.Cleanup(checkTLS.Close)

	dir := t.TempDir()
	server := e.serverCert()
	cfg := nginxConfig{
		Dir:          dir,
		ServerCert:   filepath.Join(dir, "server.crt"),
		ServerKey:    filepath.Join(dir, "server.key"),
		CA:           filepath.Join(dir, "ca.crt"),
		Upstream:     strings.TrimPrefix(app.URL, "http://"),
		Collector:    strings.TrimPrefix(check.URL, "http://"),
		CollectorTLS: strings.TrimPrefix(checkTLS.URL, "https://"),
		GatewayCert:  filepath.Join(dir, "gateway.crt"),
		GatewayKey:   filepath.Join(dir, "gateway.key"),
		Secret:       testSecret,
	}
	nginxGW := e.gatewayCert("nginx-1")
	if err := pki.WriteCertificates(cfg.GatewayCert, nginxGW.Leaf); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(cfg.GatewayKey, nginxGW.PrivateKey.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(cfg.ServerCert, server.Leaf); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(cfg.ServerKey, server.PrivateKey.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(cfg.CA, e.c.CA()); err != nil {
		t.Fatal(err)
	}
	addr := startNginx(t, bin, cfg)

	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: e.roots, Certificates: certs},
			DisableKeepAlives: true,
		}}
	}
	get := func(t *testing.T, c *http.Client, path string, headers ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "https://"+addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET through nginx: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}

	tests := []struct {
		name       string
		client     *http.Client
		path       string
		headers    []string // sent by the client
		wantCode   int
		wantBody   string
		wantReason string
	}{
		{"enrolled healthy device", client(dev.cert), "/app", nil, 200, "hello from the application", ""},
		{"enrolled healthy device, nginx as mTLS gateway", client(dev.cert), "/mtls/app", nil, 200, "hello from the application", ""},
		{"no certificate", client(), "/app", nil, 400, "No required SSL certificate was sent", ""},
		// nginx accepts it (same CA); the collector does not: not a device.
		{"gateway certificate", client(gw), "/app", nil, 401, "", "a gateway, not a device"},
		{"gateway certificate, nginx as mTLS gateway", client(gw), "/mtls/app", nil, 401, "", "a gateway, not a device"},
		// proxy_pass_request_headers off keeps the client's own claims away
		// from the collector.
		{
			"client-supplied certificate and level headers ignored", client(gw), "/app",
			[]string{HeaderTraefikClientCert, base64.StdEncoding.EncodeToString(dev.chain[0].Raw), HeaderLevel, "basic"},
			401, "", "a gateway, not a device",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, tc.client, tc.path, tc.headers...)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d; body:\n%s", resp.StatusCode, tc.wantCode, body)
			}
			if !strings.Contains(body, tc.wantBody) {
				t.Errorf("body %q, want it to contain %q", body, tc.wantBody)
			}
			if got := resp.Header.Get(HeaderReason); !strings.Contains(got, tc.wantReason) {
				t.Errorf("%s = %q, want it to contain %q", HeaderReason, got, tc.wantReason)
			}
		})
	}
	mu.Lock()
	if len(seen) != 2 || seen[0] != dev.id || seen[1] != dev.id {
		t.Errorf("application saw X-Posture-Device %q, want two requests from %s", seen, dev.id)
	}
	mu.Unlock()

	t.Run("revoked device denied within a second", func(t *testing.T) {
		c := client(dev.cert)
		e.revoke(dev.id)
		revoked := time.Now()
		for {
			resp, body := get(t, c, "/app")
			if resp.StatusCode == http.StatusForbidden {
				if got := resp.Header.Get(HeaderReason); !strings.Contains(got, "device is revoked: laptop stolen") {
					t.Errorf("%s = %q, want the revocation", HeaderReason, got)
				}
				t.Logf("403 %s after revocation", time.Since(revoked).Round(time.Millisecond))
				return
			}
			if time.Since(revoked) > time.Second {
				t.Fatalf("still %d a second after revocation:\n%s", resp.StatusCode, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// startNginx renders the configuration into cfg.Dir, runs nginx in the
// foreground on a free loopback port until the test ends, and returns its
// address. A port taken between choosing and binding is retried.
func startNginx(t *testing.T, bin string, cfg nginxConfig) string {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "nginx.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		cfg.Port = freePort(t)
		var conf bytes.Buffer
		if err := tmpl.Execute(&conf, cfg); err != nil {
			t.Fatal(err)
		}
		confPath := filepath.Join(cfg.Dir, "nginx.conf")
		if err := os.WriteFile(confPath, conf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		errorLog := filepath.Join(cfg.Dir, "error.log")
		var out bytes.Buffer
		cmd := exec.Command(bin, "-p", cfg.Dir, "-c", confPath, "-e", errorLog)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start nginx: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port))

		err := waitListening(addr, exited)
		if err == nil {
			t.Cleanup(func() {
				// SIGQUIT would wait for keep-alive connections; TERM is a fast stop.
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(5 * time.Second):
					_ = cmd.Process.Kill()
					<-exited
				}
				if t.Failed() {
					log, _ := os.ReadFile(errorLog)
					t.Logf("nginx error.log:\n%s", log)
				}
			})
			return addr
		}
		_ = cmd.Process.Kill()
		log, _ := os.ReadFile(errorLog)
		if attempt < 3 && bytes.Contains(log, []byte("Address already in use")) {
			continue
		}
		t.Fatalf("nginx did not start: %v\n%s\nerror.log:\n%s", err, out.String(), log)
	}
}

// waitListening waits until addr accepts connections or the process exits.
func waitListening(addr string, exited <-chan error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return errors.Join(errors.New("nginx exited"), err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("nginx did not listen within 10s")
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
