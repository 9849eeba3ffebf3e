package gatewayfront

import (
	"context"
	"crypto"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// warnPolicy is the built-in policy's checks, with a grace on disk
// encryption, and levels the test device (disk not encrypted: score 80
// while that is in its grace) does not meet: one in warn mode, one off,
// and one it meets only inside the grace.
const warnPolicy = `
freshness: {stale_after: 15m, expire_after: 24h}
checks:
  - {name: disk_encryption, weight: 30, grace: 72h}
  - {name: security_updates, weight: 20, max_security_pending: 0}
  - {name: secure_boot, weight: 15}
  - {name: os_version, weight: 15, min_versions: {debian: "12"}}
  - {name: firewall, weight: 10}
  - {name: screen_lock, weight: 10}
levels:
  - {name: basic, min_score: 40}
  - {name: watched, min_score: 90, enforce: warn}
  - {name: shadow, min_score: 90, enforce: off}
  - {name: graced, min_score: 0, require: [disk_encryption]}
`

// TestNginxWarnAndOff runs the README's nginx configuration in front of a
// test application for levels in warn and off mode and a level held by a
// grace: every one allows; warn and grace tell the user and the
// application why (X-Posture-Warning), off says nothing; the collector
// records each decision with its enforcement.
func TestNginxWarnAndOff(t *testing.T) {
	bin := testtools.Nginx(t)
	pol, err := policy.Parse([]byte(warnPolicy))
	if err != nil {
		t.Fatal(err)
	}
	e := startCollectorWith(t, pol)
	dev := e.enroll()

	var mu sync.Mutex
	upstream := map[string]string{} // level → X-Posture-Warning the application got
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstream[r.Header.Get(HeaderLevel)] = r.Header.Get(HeaderWarning)
		mu.Unlock()
		io.WriteString(w, "hello from the application\n")
	}))
	t.Cleanup(app.Close)
	fa, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots})
	if err != nil {
		t.Fatal(err)
	}
	checkTLS := httptest.NewUnstartedServer(fa)
	if checkTLS.TLS, err = e.c.ServingTLS("collector.example.com"); err != nil {
		t.Fatal(err)
	}
	cert, err := checkTLS.TLS.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	checkTLS.TLS.Certificates = []tls.Certificate{*cert}
	checkTLS.StartTLS()
	t.Cleanup(checkTLS.Close)

	dir := t.TempDir()
	path := func(f string) string { return filepath.Join(dir, f) }
	server, nginxGW := e.serverCert(), e.gatewayCert("nginx-1")
	for _, err := range []error{
		pki.WriteCertificates(path("gateway.crt"), nginxGW.Leaf),
		pki.WritePrivateKey(path("gateway.key"), nginxGW.PrivateKey.(crypto.Signer)),
		pki.WriteCertificates(path("server.crt"), server.Leaf),
		pki.WritePrivateKey(path("server.key"), server.PrivateKey.(crypto.Signer)),
		pki.WriteCertificates(path("ca.crt"), e.c.CA()),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	levels := []string{"watched", "shadow", "graced"}
	var servers []string
	for _, level := range levels {
		servers = append(servers, substitute(t, readmeNginx(t)[0],
			"/etc/nginx/app.crt", path("server.crt"),
			"/etc/nginx/app.key", path("server.key"),
			"/etc/posture/ca.crt", path("ca.crt"),
			"/etc/posture/gateway.crt", path("gateway.crt"),
			"/etc/posture/gateway.key", path("gateway.key"),
			"http://app_backend", strings.TrimSuffix(app.URL, "/"),
			"https://collector.example.com:8444/", checkTLS.URL+"/",
			"?level=trusted", "?level="+level,
		))
	}
	addrs := startNginx(t, bin, nginxConfig{Dir: dir, Servers: servers})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{dev.cert}}, DisableKeepAlives: true}}

	tests := []struct {
		level   string
		warning string // in the X-Posture-Warning both the user and the application get; "" for none
	}{
		{"watched", "only warns for now (enforce: warn): score 80 is below 90"},
		{"shadow", ""},
		{"graced", "disk_encryption failing since "},
	}
	for i, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "https://"+addrs[i]+"/app", nil)
			req.Header.Set(HeaderWarning, "a client's own") // replaced, or dropped
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "hello from the application") {
				t.Fatalf("status %d, body %q; want the application", resp.StatusCode, body)
			}
			got := resp.Header.Get(HeaderWarning)
			mu.Lock()
			app := upstream[tt.level]
			mu.Unlock()
			if tt.warning == "" {
				if got != "" || app != "" {
					t.Errorf("off mode warned: user %q, application %q", got, app)
				}
				return
			}
			if !strings.Contains(got, tt.warning) || got != app {
				t.Errorf("warning to the user %q, to the application %q; want both to say %q", got, app, tt.warning)
			}
			if tt.level == "graced" && !strings.Contains(got, "blocks at ") {
				t.Errorf("grace warning %q does not say when it blocks", got)
			}
		})
	}

	// Every decision is recorded with its enforcement, and whether the
	// device met the level and was warned.
	resp, err := e.admin.ListDecisions(context.Background(), &posturev1.ListDecisionsRequest{DeviceId: dev.id})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*posturev1.Decision{}
	for _, d := range resp.GetDecisions() {
		got[d.GetAccessLevel()] = d
	}
	for _, want := range []struct {
		level       string
		enforcement posturev1.Enforcement
		met, warned bool
	}{
		{"watched", posturev1.Enforcement_ENFORCEMENT_WARN, false, true},
		{"shadow", posturev1.Enforcement_ENFORCEMENT_OFF, false, false},
		{"graced", posturev1.Enforcement_ENFORCEMENT_BLOCK, true, true},
	} {
		d := got[want.level]
		if d == nil || !d.GetAllowed() || d.GetEnforcement() != want.enforcement || d.GetMet() != want.met || d.GetWarned() != want.warned || (want.warned && len(d.GetWarnings()) == 0) {
			t.Errorf("decision recorded for %s: %v; want allowed, %v, met %v, warned %v", want.level, d, want.enforcement, want.met, want.warned)
		}
		if !want.met && len(d.GetReasons()) == 0 {
			t.Errorf("decision for %s records no reason the level is not met", want.level)
		}
	}
}
