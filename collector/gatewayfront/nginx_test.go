package gatewayfront

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
)

// nginxConfig fills testdata/nginx.conf.tmpl.
type nginxConfig struct {
	Dir     string
	Servers []string // server blocks, each listening on "listen 443 ssl;"
}

// readmeNginx returns the nginx configurations in the nginx guide's
// section, in order: the server block, the /posture location for nginx on
// the collector host, and the upstream of several collectors with its
// /posture location (which e2e's TestNginxSeveralCollectors runs).
func readmeNginx(t *testing.T) []string {
	t.Helper()
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "gateways", "nginx.md"), "# nginx", "nginx")
	if len(blocks) != 3 {
		t.Fatalf("docs/gateways/nginx.md has %d nginx blocks, want 3 (the server, the loopback /posture location, several collectors)", len(blocks))
	}
	return blocks
}

// substitute replaces each old with its new in conf, and fails when an old
// is missing: the guide changed, and this test must follow it.
func substitute(t *testing.T, conf string, oldnew ...string) string {
	t.Helper()
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(conf, oldnew[i]) {
			t.Fatalf("the nginx guide's configuration no longer has %q:\n%s", oldnew[i], conf)
		}
		conf = strings.ReplaceAll(conf, oldnew[i], oldnew[i+1])
	}
	return conf
}

// TestNginx puts Debian's nginx, configured as docs/gateways/nginx.md says, in front of
// a test application, and drives it with a real enrolled device's
// certificate: once with nginx authenticating to /check by its gateway
// certificate over TLS, once by a bearer secret over loopback.
func TestNginx(t *testing.T) {
	bin := testtools.Nginx(t)

	e := startCollector(t)
	dev := e.enroll()
	gw := e.gatewayCert("edge-1")

	// The X-Posture-* headers of the request the application last
	// received; nil when none reached it.
	var mu sync.Mutex
	var upstream http.Header
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := http.Header{}
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-Posture-") {
				got[k] = v
			}
		}
		mu.Lock()
		upstream = got
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
	// TLS as the collector serves /check when started with --advertise
	// collector.example.com:8443, the name the nginx guide's verifies.
	checkTLS := httptest.NewUnstartedServer(fa)
	if checkTLS.TLS, err = e.c.ServingTLS("collector.example.com"); err != nil {
		t.Fatal(err)
	}
	// httptest puts its own certificate in a configuration without
	// Certificates, and TLS serves that to clients that send no server
	// name (nginx by default); the collector's own listener has none.
	cert, err := checkTLS.TLS.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	checkTLS.TLS.Certificates = []tls.Certificate{*cert}
	checkTLS.StartTLS()
	t.Cleanup(checkTLS.Close)

	dir := t.TempDir()
	paths := map[string]string{}
	for _, f := range []string{"server.crt", "server.key", "ca.crt", "gateway.crt", "gateway.key"} {
		paths[f] = filepath.Join(dir, f)
	}
	server := e.serverCert()
	nginxGW := e.gatewayCert("nginx-1")
	if err := pki.WriteCertificates(paths["gateway.crt"], nginxGW.Leaf); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(paths["gateway.key"], nginxGW.PrivateKey.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(paths["server.crt"], server.Leaf); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(paths["server.key"], server.PrivateKey.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(paths["ca.crt"], e.c.CA()); err != nil {
		t.Fatal(err)
	}

	readme := readmeNginx(t)
	serverBlock, loopbackLocation := readme[0], readme[1]
	// Where the guide's paths and addresses are in this test. The test
	// device meets basic but not trusted.
	local := []string{
		"/etc/nginx/app.crt", paths["server.crt"],
		"/etc/nginx/app.key", paths["server.key"],
		"/etc/posture/ca.crt", paths["ca.crt"],
		"http://app_backend", strings.TrimSuffix(app.URL, "/"),
		"?level=trusted", "?level=basic",
	}
	gatewayServer := substitute(t, serverBlock, append(local,
		"/etc/posture/gateway.crt", paths["gateway.crt"],
		"/etc/posture/gateway.key", paths["gateway.key"],
		"https://collector.example.com:8444/", checkTLS.URL+"/",
	)...)
	// The same server with the loopback /posture location in place of
	// the TLS one.
	i := strings.Index(serverBlock, "    location = /posture {")
	j := strings.Index(serverBlock[max(i, 0):], "\n    }\n")
	if i < 0 || j < 0 {
		t.Fatalf("the nginx guide's server has no location = /posture block:\n%s", serverBlock)
	}
	loopback := serverBlock[:i] + strings.TrimSuffix(loopbackLocation, "\n") + serverBlock[i+j+len("\n    }"):]
	bearerServer := substitute(t, loopback, append(local,
		"http://127.0.0.1:8444/", check.URL+"/",
		"Bearer SECRET", "Bearer "+testSecret,
	)...)
	addrs := startNginx(t, bin, nginxConfig{Dir: dir, Servers: []string{gatewayServer, bearerServer}})

	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: e.roots, Certificates: certs},
			DisableKeepAlives: true,
		}}
	}
	get := func(t *testing.T, c *http.Client, addr string, headers ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/app", nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Add(headers[i], headers[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET through nginx: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}

	// The collector's answer for the device, and nothing else.
	decided := http.Header{
		HeaderDevice:    {dev.id},
		HeaderLevel:     {"basic"},
		HeaderScore:     {"50"},
		HeaderAssurance: {"software"},
	}
	// A client's claims to a decision of its own.
	claims := []string{
		HeaderDevice, "someone-else",
		HeaderLevel, "trusted",
		HeaderLevel, "admin",
		HeaderScore, "100",
		HeaderAssurance, "tpm_ek_verified",
		HeaderReason, "approved by security",
		HeaderWarning, "nothing to see",
	}
	servers := []struct {
		name string
		addr string
	}{
		{"gateway certificate", addrs[0]},
		{"bearer on loopback", addrs[1]},
	}
	tests := []struct {
		name       string
		client     *http.Client
		headers    []string // sent by the client
		wantCode   int
		wantBody   string
		wantReason string
		// wantUpstream is the X-Posture-* headers the application
		// receives; nil when the request must not reach it.
		wantUpstream http.Header
	}{
		{"enrolled healthy device", client(dev.cert), nil, 200, "hello from the application", "", decided},
		{"client's own X-Posture-* headers replaced by the collector's", client(dev.cert), claims, 200, "hello from the application", "", decided},
		{"no certificate", client(), nil, 400, "No required SSL certificate was sent", "", nil},
		// nginx accepts it (same CA); the collector does not: not a device.
		{"gateway certificate", client(gw), claims, 401, "", "a gateway, not a device", nil},
		// proxy_pass_request_headers off keeps the client's own claims away
		// from the collector.
		{
			"client-supplied certificate and level headers ignored", client(gw),
			[]string{HeaderTraefikClientCert, base64.StdEncoding.EncodeToString(dev.chain[0].Raw), HeaderLevel, "basic"},
			401, "", "a gateway, not a device", nil,
		},
	}
	for _, srv := range servers {
		for _, tc := range tests {
			t.Run(srv.name+"/"+tc.name, func(t *testing.T) {
				mu.Lock()
				upstream = nil
				mu.Unlock()
				resp, body := get(t, tc.client, srv.addr, tc.headers...)
				if resp.StatusCode != tc.wantCode {
					t.Fatalf("status %d, want %d; body:\n%s", resp.StatusCode, tc.wantCode, body)
				}
				if !strings.Contains(body, tc.wantBody) {
					t.Errorf("body %q, want it to contain %q", body, tc.wantBody)
				}
				if got := resp.Header.Get(HeaderReason); !strings.Contains(got, tc.wantReason) {
					t.Errorf("%s = %q, want it to contain %q", HeaderReason, got, tc.wantReason)
				}
				mu.Lock()
				got := upstream
				mu.Unlock()
				if diff := cmp.Diff(tc.wantUpstream, got); diff != "" {
					t.Errorf("X-Posture-* headers the application received (-want +got):\n%s", diff)
				}
			})
		}
	}

	t.Run("revoked device denied within a second", func(t *testing.T) {
		c := client(dev.cert)
		e.revoke(dev.id)
		revoked := time.Now()
		for {
			resp, body := get(t, c, addrs[0])
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

// startNginx renders the configuration into cfg.Dir with each server on a
// free loopback port in place of "listen 443 ssl;", runs nginx in the
// foreground until the test ends, and returns the servers' addresses.
func startNginx(t *testing.T, bin string, cfg nginxConfig) []string {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "nginx.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	servers := cfg.Servers
	return testtools.StartNginx(t, bin, cfg.Dir, len(servers), func(addrs []string) []byte {
		cfg.Servers = make([]string, len(servers))
		for i, s := range servers {
			cfg.Servers[i] = substitute(t, s, "listen 443 ssl;", "listen "+addrs[i]+" ssl;")
		}
		var conf bytes.Buffer
		if err := tmpl.Execute(&conf, cfg); err != nil {
			t.Fatal(err)
		}
		return conf.Bytes()
	})
}
