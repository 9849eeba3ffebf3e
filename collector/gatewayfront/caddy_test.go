package gatewayfront

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
)

// docsCaddy returns the Caddy guide's two configurations: the site, and
// the forward_auth of several collectors (a fragment of the site).
func docsCaddy(t *testing.T) (site, several string) {
	t.Helper()
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "gateways", "caddy.md"), "# Caddy", "caddy")
	if len(blocks) != 2 {
		t.Fatalf("docs/gateways/caddy.md has %d caddy blocks, want 2 (the site, several collectors)", len(blocks))
	}
	return blocks[0], blocks[1]
}

// caddyHarness holds what the Caddy tests share: a collector with an
// enrolled device, an application recording the X-Posture-* headers it
// receives, and the files the guide names.
type caddyHarness struct {
	e     *env
	dev   *device
	dir   string
	paths map[string]string
	app   *httptest.Server
	roots *x509.CertPool // verifies Caddy's serving certificate

	mu       sync.Mutex
	upstream http.Header
}

func newCaddyHarness(t *testing.T) *caddyHarness {
	h := &caddyHarness{e: startCollector(t), dir: t.TempDir(), paths: map[string]string{}}
	h.dev = h.e.enroll()
	h.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := http.Header{}
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-Posture-") {
				got[k] = v
			}
		}
		h.mu.Lock()
		h.upstream = got
		h.mu.Unlock()
		io.WriteString(w, "hello from the application\n")
	}))
	t.Cleanup(h.app.Close)

	for _, f := range []string{"app.crt", "app.key", "ca.crt", "gateway.crt", "gateway.key"} {
		h.paths[f] = filepath.Join(h.dir, f)
	}
	// Caddy's own serving certificate for app.example.com, from a CA of
	// the test's own: the collector CA is for devices and collectors.
	appCA, err := pki.LoadOrCreateCA(t.TempDir(), "app.test")
	if err != nil {
		t.Fatal(err)
	}
	appKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	appCert, err := appCA.IssueServer(appKey.Public(), []string{"app.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h.roots = x509.NewCertPool()
	h.roots.AddCert(appCA.Cert)
	gw := h.e.gatewayCert("caddy-1")
	for _, w := range []error{
		pki.WriteCertificates(h.paths["app.crt"], appCert),
		pki.WritePrivateKey(h.paths["app.key"], appKey),
		pki.WriteCertificates(h.paths["ca.crt"], h.e.c.CA()),
		pki.WriteCertificates(h.paths["gateway.crt"], gw.Leaf),
		pki.WritePrivateKey(h.paths["gateway.key"], gw.PrivateKey.(crypto.Signer)),
	} {
		if w != nil {
			t.Fatal(w)
		}
	}
	return h
}

// checkServer serves the collector's /check over TLS as the collector's
// --http-listen does, with a serving certificate for names.
func (h *caddyHarness) checkServer(t *testing.T, names ...string) *httptest.Server {
	t.Helper()
	fa, err := NewForwardAuth(ForwardAuthConfig{Decider: h.e.c, TrustDomain: testTrustDomain, Roots: h.e.roots})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(fa)
	if srv.TLS, err = h.e.c.ServingTLS(names...); err != nil {
		t.Fatal(err)
	}
	// Without Certificates, httptest adds its own and serves it to
	// clients that send no server name (Caddy dialling an address); the
	// collector's listener has no such fallback.
	cert, err := srv.TLS.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS.Certificates = []tls.Certificate{*cert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// start runs Caddy with the guide's site, its files and addresses put in
// place, and returns the address it serves app.example.com on.
func (h *caddyHarness) start(t *testing.T, site string, oldnew ...string) string {
	t.Helper()
	site = substitute(t, site, append([]string{
		"/etc/posture/ca.crt", h.paths["ca.crt"],
		"/etc/posture/gateway.crt", h.paths["gateway.crt"],
		"/etc/posture/gateway.key", h.paths["gateway.key"],
		// A site with the certificate given, not one Caddy obtains.
		"\ttls {", "\ttls " + h.paths["app.crt"] + " " + h.paths["app.key"] + " {",
		"reverse_proxy app:8080", "reverse_proxy " + strings.TrimPrefix(h.app.URL, "http://"),
		// The test device meets basic, not trusted.
		"?level=trusted", "?level=basic",
	}, oldnew...)...)
	return testtools.StartCaddy(t, testtools.Caddy(t), h.dir, func(port int) []byte {
		return []byte(fmt.Sprintf(`{
	admin off
	auto_https disable_redirects
	skip_install_trust
	storage file_system %s
}

%s`, filepath.Join(h.dir, "storage"), substitute(t, site, "app.example.com {", fmt.Sprintf("https://app.example.com:%d {", port))))
	})
}

// get requests /app from Caddy at addr as app.example.com, presenting certs.
func (h *caddyHarness) get(t *testing.T, addr string, certs []tls.Certificate, headers ...string) (*http.Response, string, error) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: h.roots, ServerName: "app.example.com", Certificates: certs},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	_, port, _ := net.SplitHostPort(addr)
	req, err := http.NewRequest(http.MethodGet, "https://app.example.com:"+port+"/app", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	h.mu.Lock()
	h.upstream = nil
	h.mu.Unlock()
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), nil
}

func (h *caddyHarness) received() http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.upstream
}

// TestCaddy puts Debian's Caddy, configured as docs/gateways/caddy.md says,
// in front of a test application and the collector's /check, and drives
// it with a real enrolled device's certificate.
func TestCaddy(t *testing.T) {
	h := newCaddyHarness(t)
	site, _ := docsCaddy(t)
	check := h.checkServer(t)
	addr := h.start(t, site, "https://collector.example.com:8444", check.URL)

	decided := http.Header{
		HeaderDevice:    {h.dev.id},
		HeaderLevel:     {"basic"},
		HeaderScore:     {"50"},
		HeaderAssurance: {"software"},
	}
	claims := []string{
		HeaderDevice, "someone-else",
		HeaderLevel, "trusted",
		HeaderScore, "100",
		HeaderAssurance, "tpm_ek_verified",
		HeaderReason, "approved by security",
	}
	gw := h.e.gatewayCert("not-a-device")
	tests := []struct {
		name     string
		certs    []tls.Certificate
		headers  []string
		wantCode int
		wantBody string
		// wantReason is part of the collector's X-Posture-Reason.
		wantReason string
		// wantUpstream is what the application receives; nil when the
		// request must not reach it.
		wantUpstream http.Header
	}{
		{"enrolled healthy device", []tls.Certificate{h.dev.cert}, nil, 200, "hello from the application", "", decided},
		{"client's own X-Posture-* headers replaced by the collector's", []tls.Certificate{h.dev.cert}, claims, 200, "hello from the application", "", decided},
		// Caddy accepts it (same CA); the collector does not: not a device.
		{"gateway certificate", []tls.Certificate{gw}, nil, 401, "", "a gateway, not a device", nil},
		// header_up sets X-Client-Cert from the TLS connection, whatever
		// the client sent, and drops a Traefik-style header.
		{
			"client-supplied certificate headers ignored", []tls.Certificate{gw},
			[]string{"X-Client-Cert", base64.StdEncoding.EncodeToString(h.dev.chain[0].Raw), HeaderTraefikClientCert, base64.StdEncoding.EncodeToString(h.dev.chain[0].Raw)},
			401, "", "a gateway, not a device", nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := h.get(t, addr, tc.certs, tc.headers...)
			if err != nil {
				t.Fatalf("GET through Caddy: %v", err)
			}
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d; body:\n%s", resp.StatusCode, tc.wantCode, body)
			}
			if !strings.Contains(body, tc.wantBody) {
				t.Errorf("body %q, want it to contain %q", body, tc.wantBody)
			}
			if got := resp.Header.Get(HeaderReason); !strings.Contains(got, tc.wantReason) {
				t.Errorf("%s = %q, want it to contain %q", HeaderReason, got, tc.wantReason)
			}
			if diff := cmp.Diff(tc.wantUpstream, h.received()); diff != "" {
				t.Errorf("X-Posture-* headers the application received (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("no certificate refused in the handshake", func(t *testing.T) {
		resp, body, err := h.get(t, addr, nil)
		if err == nil {
			t.Fatalf("status %d without a client certificate, want a refused handshake; body:\n%s", resp.StatusCode, body)
		}
		if h.received() != nil {
			t.Error("the application was reached without a client certificate")
		}
	})

	t.Run("revoked device denied within a second", func(t *testing.T) {
		h.e.revoke(h.dev.id)
		revoked := time.Now()
		for {
			resp, body, err := h.get(t, addr, []tls.Certificate{h.dev.cert})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode == http.StatusForbidden {
				if got := resp.Header.Get(HeaderReason); !strings.Contains(got, "device is revoked: laptop stolen") {
					t.Errorf("%s = %q, want the revocation", HeaderReason, got)
				}
				if h.received() != nil {
					t.Error("the application was reached by a revoked device")
				}
				return
			}
			if time.Since(revoked) > time.Second {
				t.Fatalf("still %d a second after revocation:\n%s", resp.StatusCode, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// TestCaddySeveralCollectors runs the guide's forward_auth of several
// collectors inside its site: with the first collector down, the others
// answer; with every collector down, Caddy refuses and never allows.
func TestCaddySeveralCollectors(t *testing.T) {
	h := newCaddyHarness(t)
	site, several := docsCaddy(t)

	// The guide's fragment in place of the site's forward_auth line and
	// transport, its comment lines aside.
	var head, transport []string
	inTransport := false
	for _, line := range strings.Split(strings.TrimRight(several, "\n"), "\n") {
		switch trimmed := strings.TrimSpace(line); {
		case strings.HasPrefix(trimmed, "transport http {"):
			inTransport = true
			transport = append(transport, line)
		case inTransport:
			transport = append(transport, line)
			if trimmed == "}" {
				inTransport = false
			}
		case strings.HasPrefix(trimmed, "#"), trimmed == "}":
		default:
			head = append(head, line)
		}
	}
	if len(head) == 0 || len(transport) == 0 {
		t.Fatalf("the several-collectors fragment has no forward_auth line or no transport:\n%s", several)
	}
	i := strings.Index(site, "\t\t\ttransport http {")
	j := strings.Index(site[max(i, 0):], "\t\t\t}\n")
	if i < 0 || j < 0 {
		t.Fatalf("the guide's site has no transport block:\n%s", site)
	}
	site = site[:i] + strings.Join(transport, "\n") + "\n" + site[i+j+len("\t\t\t}\n"):]
	site = substitute(t, site, "\t\tforward_auth https://collector.example.com:8444 {", strings.Join(head, "\n"))

	const shared = "posture.example.com"
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // collector-a: nothing listens
	b, c := h.checkServer(t, shared), h.checkServer(t, shared)
	addr := h.start(t, site,
		"collector-a.example.com:8444", deadAddr,
		"collector-b.example.com:8444", strings.TrimPrefix(b.URL, "https://"),
		"collector-c.example.com:8444", strings.TrimPrefix(c.URL, "https://"),
	)

	allowed := func(t *testing.T) {
		t.Helper()
		resp, body, err := h.get(t, addr, []tls.Certificate{h.dev.cert})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || h.received().Get(HeaderDevice) != h.dev.id {
			t.Fatalf("status %d, device header %q; want 200 for %s; body:\n%s", resp.StatusCode, h.received().Get(HeaderDevice), h.dev.id, body)
		}
	}
	t.Run("first collector down, the next answers", allowed)
	b.Close()
	t.Run("two collectors down, the third answers", allowed)
	c.Close()
	t.Run("every collector down: refused", func(t *testing.T) {
		resp, body, err := h.get(t, addr, []tls.Certificate{h.dev.cert})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode < 500 || h.received() != nil {
			t.Fatalf("status %d with no collector answering, want a 5xx and nothing reaching the application; body:\n%s", resp.StatusCode, body)
		}
	})
}
