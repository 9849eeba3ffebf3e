package gatewayfront

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const testSecret = "0123456789abcdef-gateway-secret"

// failingDecider stands in for a collector that cannot decide.
type failingDecider struct{ err error }

func (f failingDecider) CheckAccess(context.Context, *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	return nil, f.err
}

// rejectionLog is a Rejections that remembers what it was told.
type rejectionLog struct {
	mu      sync.Mutex
	reasons []string
	details []string
}

func (l *rejectionLog) Rejected(reason, detail string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reasons = append(l.reasons, reason)
	l.details = append(l.details, detail)
}

// take returns and forgets what was reported so far.
func (l *rejectionLog) take() (reasons, details []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	reasons, details = l.reasons, l.details
	l.reasons, l.details = nil, nil
	return reasons, details
}

func TestForwardAuth(t *testing.T) {
	e := startCollector(t)
	dev := e.enroll()
	rev := e.enroll()
	e.revoke(rev.id)
	gw := e.gatewayCert("edge-1")
	foreign := foreignDeviceCert(t, dev.id)

	handlers := map[string]*ForwardAuth{}
	rejections := map[string]*rejectionLog{}
	for name, cfg := range map[string]ForwardAuthConfig{
		"":            {},
		"default":     {DefaultLevel: "basic"},
		"certheader":  {CertHeader: "X-SSL-Client-Cert"},
		"traefik":     {CertHeader: HeaderTraefikClientCert},
		"unavailable": {Decider: failingDecider{status.Error(codes.Unavailable, "collector restarting")}},
		"internal":    {Decider: failingDecider{status.Error(codes.Internal, "store broken")}},
	} {
		if cfg.Decider == nil {
			cfg.Decider = e.c
		}
		rejections[name] = &rejectionLog{}
		cfg.TrustDomain, cfg.Roots, cfg.Rejections = testTrustDomain, e.roots, rejections[name]
		cfg.BearerSecrets = []string{"another-secret-of-16+chars", testSecret}
		f, err := NewForwardAuth(cfg)
		if err != nil {
			t.Fatal(err)
		}
		handlers[name] = f
	}

	devDER := base64.StdEncoding.EncodeToString(dev.chain[0].Raw)
	bearer := map[string]string{"Authorization": "Bearer " + testSecret}
	with := func(h map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range h {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}

	tests := []struct {
		name    string
		handler string
		// caller: "" plain HTTP; "gateway" or "device" for mTLS with that
		// certificate.
		caller      string
		query       string
		headers     map[string]string
		wantCode    int
		wantReason  string            // substring of X-Posture-Reason
		wantBody    []string          // substrings of the body
		wantHeaders map[string]string // exact values
		// wantRejected is the reason reported to Rejections for a request
		// refused before a decision; empty when a decision was asked for.
		wantRejected string
	}{
		{
			name: "allowed, nginx escaped PEM, bearer", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, nginxEscaped(dev.chain...)),
			wantCode: 200, wantHeaders: map[string]string{HeaderDevice: dev.id, HeaderLevel: "basic", HeaderScore: "50", HeaderAssurance: "software"},
		},
		{
			name: "allowed, gateway mTLS", caller: "gateway", query: "level=basic",
			headers:  map[string]string{HeaderClientCert: nginxEscaped(dev.chain...)},
			wantCode: 200, wantHeaders: map[string]string{HeaderDevice: dev.id, HeaderLevel: "basic"},
		},
		{
			name: "allowed, Traefik base64 DER", handler: "traefik", query: "level=basic",
			headers:  with(bearer, HeaderTraefikClientCert, devDER),
			wantCode: 200, wantHeaders: map[string]string{HeaderDevice: dev.id},
		},
		{
			name: "allowed, Traefik escaped chain", handler: "traefik", query: "level=basic",
			headers:  with(bearer, HeaderTraefikClientCert, url.QueryEscape(devDER+","+base64.StdEncoding.EncodeToString(e.c.CA().Raw))),
			wantCode: 200, wantHeaders: map[string]string{HeaderDevice: dev.id},
		},
		{
			name: "allowed, Caddy certificate_der_base64", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 200, wantHeaders: map[string]string{HeaderDevice: dev.id},
		},
		{
			name: "allowed, default level", handler: "default", headers: with(bearer, HeaderClientCert, devDER),
			wantCode: 200, wantHeaders: map[string]string{HeaderLevel: "basic"},
		},
		{
			name: "query level wins over header", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER, HeaderLevel, "trusted"),
			wantCode: 200, wantHeaders: map[string]string{HeaderLevel: "basic"},
		},
		{
			name: "denied with reason and fix", query: "level=trusted",
			headers:  with(bearer, HeaderClientCert, nginxEscaped(dev.chain...)),
			wantCode: 403, wantReason: "score 50 is below 80 required by trusted",
			wantBody:    []string{"access denied: device " + dev.id, "trusted requires disk_encryption", "to fix:", "disk_encryption: "},
			wantHeaders: map[string]string{HeaderDevice: dev.id, HeaderLevel: "trusted", HeaderScore: "50"},
		},
		{
			name: "revoked", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, nginxEscaped(rev.chain...)),
			wantCode: 403, wantReason: "device is revoked: laptop stolen", wantHeaders: map[string]string{HeaderDevice: rev.id},
		},
		{
			name: "unknown level", query: "level=gold",
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 403, wantReason: `access level "gold" is not defined`,
		},
		{
			name: "missing level", headers: with(bearer, HeaderClientCert, devDER),
			wantCode: 400, wantReason: "put ?level=NAME in the auth URL",
			wantRejected: RejectLevelMissing,
		},
		{
			// A gateway passes client headers on: the level must not come
			// from one.
			name: "level header ignored", headers: with(bearer, HeaderClientCert, devDER, HeaderLevel, "basic"),
			wantCode: 400, wantReason: "no access level in the URL",
			wantRejected: RejectLevelMissing,
		},
		{
			name: "level header ignored with a default level", handler: "default",
			headers:  with(bearer, HeaderClientCert, nginxEscaped(dev.chain...), HeaderLevel, "trusted"),
			wantCode: 200, wantHeaders: map[string]string{HeaderLevel: "basic"},
		},
		{
			name: "malformed level", query: "level=" + url.QueryEscape("basic\r\nX-Evil: 1"),
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 400, wantReason: "has a character other than",
			wantRejected: RejectLevelInvalid,
		},
		{
			name: "no device certificate", query: "level=basic", headers: bearer,
			wantCode: 401, wantReason: "no device certificate",
			wantRejected: RejectDeviceCertMissing,
		},
		{
			name: "certificate from another CA", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, nginxEscaped(foreign)),
			wantCode: 401, wantReason: "not a valid client certificate from this collector's CA",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "gateway certificate instead of a device", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, nginxEscaped(gw.Leaf)),
			wantCode: 401, wantReason: "spiffe://" + testTrustDomain + "/gateway/edge-1, a gateway, not a device",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "garbage certificate", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, "not a certificate!"),
			wantCode: 401, wantReason: "neither PEM nor base64 DER",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "two certificate headers", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER, HeaderTraefikClientCert, devDER),
			wantCode: 400, wantReason: "a certificate came in X-Forwarded-Tls-Client-Cert, which the gateway does not set",
			wantRejected: RejectDeviceCertAmbiguous,
		},
		{
			// A gateway that lets clients without a certificate through
			// forwards none; the client names a device by its (public)
			// certificate in the header the gateway does not use.
			name: "client's certificate header, the gateway's absent", query: "level=basic",
			headers:  with(bearer, HeaderTraefikClientCert, devDER),
			wantCode: 400, wantReason: "the client sent it, and the gateway must drop it",
			wantRejected: RejectDeviceCertAmbiguous,
		},
		{
			name: "client's certificate header, Traefik's absent", handler: "traefik", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 400, wantReason: "a certificate came in X-Client-Cert, which the gateway does not set (it forwards the device's in X-Forwarded-Tls-Client-Cert",
			wantRejected: RejectDeviceCertAmbiguous,
		},
		{
			name: "Traefik's header without a certificate", handler: "traefik", query: "level=basic",
			headers:  bearer,
			wantCode: 401, wantReason: "did not forward it in X-Forwarded-Tls-Client-Cert",
			wantRejected: RejectDeviceCertMissing,
		},
		{
			name: "configured certificate header only", handler: "certheader", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 400, wantReason: "a certificate came in X-Client-Cert, which the gateway does not set (it forwards the device's in X-Ssl-Client-Cert",
			wantRejected: RejectDeviceCertAmbiguous,
		},
		{
			name: "configured certificate header", handler: "certheader", query: "level=basic",
			headers:  with(bearer, "X-SSL-Client-Cert", devDER),
			wantCode: 200, wantHeaders: map[string]string{HeaderDevice: dev.id},
		},
		{
			name: "no caller authentication", query: "level=basic",
			headers:  map[string]string{HeaderClientCert: devDER},
			wantCode: 401, wantReason: "gateway not authenticated: present a gateway client certificate",
			wantHeaders:  map[string]string{"WWW-Authenticate": `Bearer realm="posture"`},
			wantRejected: RejectGatewayUnauthenticated,
		},
		{
			name: "bad bearer", query: "level=basic",
			headers:  map[string]string{"Authorization": "Bearer " + testSecret + "x", HeaderClientCert: devDER},
			wantCode: 401, wantReason: "the bearer secret is not one this collector accepts",
			wantRejected: RejectGatewayUnauthenticated,
		},
		{
			name: "basic auth instead of bearer", query: "level=basic",
			headers:  map[string]string{"Authorization": "Basic Z3c6c2VjcmV0", HeaderClientCert: devDER},
			wantCode: 401, wantReason: "not Bearer",
			wantRejected: RejectGatewayUnauthenticated,
		},
		{
			name: "device certificate as caller", caller: "device", query: "level=basic",
			headers:  map[string]string{HeaderClientCert: devDER},
			wantCode: 401, wantReason: "a device, not a gateway",
			wantRejected: RejectGatewayUnauthenticated,
		},
		{
			name: "collector unavailable fails closed", handler: "unavailable", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 503, wantReason: "access is denied until the collector answers",
		},
		{
			name: "collector error fails closed", handler: "internal", query: "level=basic",
			headers:  with(bearer, HeaderClientCert, devDER),
			wantCode: 500, wantReason: "store broken",
		},
	}

	// One plain and one TLS server per handler; the TLS servers verify
	// client certificates against the collector CA, as the collector's
	// listener would.
	plain, secure := map[string]*httptest.Server{}, map[string]*httptest.Server{}
	for name, h := range handlers {
		plain[name] = httptest.NewServer(h)
		t.Cleanup(plain[name].Close)
		s := httptest.NewUnstartedServer(h)
		s.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{e.serverCert()}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: e.roots}
		s.StartTLS()
		t.Cleanup(s.Close)
		secure[name] = s
	}
	clients := map[string]*http.Client{"": http.DefaultClient}
	for caller, cert := range map[string]tls.Certificate{"gateway": gw, "device": dev.cert} {
		clients[caller] = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.roots, Certificates: []tls.Certificate{cert}}}}
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := plain[tc.handler].URL
			if tc.caller != "" {
				base = secure[tc.handler].URL
			}
			req, err := http.NewRequest(http.MethodGet, base+"/check?"+tc.query, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, err := clients[tc.caller].Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d; reason %q; body:\n%s", resp.StatusCode, tc.wantCode, resp.Header.Get(HeaderReason), body)
			}
			if got := resp.Header.Get(HeaderReason); !strings.Contains(got, tc.wantReason) {
				t.Errorf("%s = %q, want it to contain %q", HeaderReason, got, tc.wantReason)
			}
			if tc.wantCode != 200 && resp.Header.Get(HeaderReason) == "" {
				t.Errorf("rejection without %s", HeaderReason)
			}
			if tc.wantCode != 200 && len(strings.TrimSpace(string(body))) == 0 {
				t.Error("rejection with an empty body")
			}
			for _, want := range tc.wantBody {
				if !strings.Contains(string(body), want) {
					t.Errorf("body does not contain %q:\n%s", want, body)
				}
			}
			for k, want := range tc.wantHeaders {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if got := resp.Header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}
			var want []string
			if tc.wantRejected != "" {
				want = []string{tc.wantRejected}
			}
			reasons, details := rejections[tc.handler].take()
			if !slices.Equal(reasons, want) {
				t.Errorf("reported rejections %q, want %q", reasons, want)
			}
			if len(details) == 1 && details[0] != resp.Header.Get(HeaderReason) {
				t.Errorf("reported detail %q, want what the gateway was told, %q", details[0], resp.Header.Get(HeaderReason))
			}
		})
	}

	// The decision log names who asked: the gateway by its certificate, or
	// which bearer secret it presented.
	log, err := e.admin.ListDecisions(context.Background(), &posturev1.ListDecisionsRequest{DeviceId: dev.id})
	if err != nil {
		t.Fatal(err)
	}
	callers := map[string]bool{}
	for _, d := range log.GetDecisions() {
		callers[d.GetCaller()] = true
	}
	for _, want := range []string{"gateway edge-1 (/check)", "bearer secret 2 (/check)"} {
		if !callers[want] {
			t.Errorf("decision log callers %v lack %q", callers, want)
		}
	}
}

func TestNewForwardAuthConfig(t *testing.T) {
	roots := x509.NewCertPool()
	d := failingDecider{}
	tests := []struct {
		name string
		cfg  ForwardAuthConfig
		want string
	}{
		{"no decider", ForwardAuthConfig{TrustDomain: "td", Roots: roots}, "Decider is required"},
		{"no trust domain", ForwardAuthConfig{Decider: d, Roots: roots}, "trust domain is required"},
		{"no roots", ForwardAuthConfig{Decider: d, TrustDomain: "td"}, "roots are required"},
		{"short secret", ForwardAuthConfig{Decider: d, TrustDomain: "td", Roots: roots, BearerSecrets: []string{"short"}}, "shorter than 16"},
		{"empty secret", ForwardAuthConfig{Decider: d, TrustDomain: "td", Roots: roots, BearerSecrets: []string{""}}, "shorter than 16"},
		{"bad default level", ForwardAuthConfig{Decider: d, TrustDomain: "td", Roots: roots, DefaultLevel: "a b"}, "character other than"},
		{"ok", ForwardAuthConfig{Decider: d, TrustDomain: "td", Roots: roots, DefaultLevel: "basic"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewForwardAuth(tc.cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestForwardAuthCertHeaderName(t *testing.T) {
	e := startCollector(t)
	for _, name := range []string{"X Client Cert", "X-Client-Cert:", "Ä-Cert"} {
		if _, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots, CertHeader: name}); err == nil || !strings.Contains(err.Error(), "not a header name") {
			t.Errorf("certificate header %q: %v; want it refused", name, err)
		}
	}
}
