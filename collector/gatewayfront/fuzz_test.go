package gatewayfront

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools/fuzzseed"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// fuzzCertsDir holds the certificates the fuzz targets verify against:
// certificates only, so that what the corpus holds verifies in every run
// (the verifier's clock is set inside their validity). When it is missing,
// POSTURE_WRITE_FUZZ_SEEDS=1 makes it afresh with a new CA.
const fuzzCertsDir = "testdata/fuzzcerts"

// fuzzCerts are a collector CA, a device and a gateway certificate it
// issued, and a device certificate of another CA in the same trust domain.
type fuzzCerts struct {
	ca, device, gateway, stranger *x509.Certificate
	roots                         *x509.CertPool
	now                           time.Time
}

const fuzzDeviceID = "7c1d2e3f40516273"

func loadFuzzCerts(f *testing.F) fuzzCerts {
	f.Helper()
	if _, err := os.Stat(fuzzCertsDir); errors.Is(err, os.ErrNotExist) && os.Getenv(fuzzseed.WriteSeedsEnv) == "1" {
		writeFuzzCerts(f)
	}
	read := func(name string) *x509.Certificate {
		c, err := pki.ReadCertificate(filepath.Join(fuzzCertsDir, name+".pem"))
		if err != nil {
			f.Fatalf("%v (POSTURE_WRITE_FUZZ_SEEDS=1 makes %s when it is missing)", err, fuzzCertsDir)
		}
		return c
	}
	fc := fuzzCerts{ca: read("ca"), device: read("device"), gateway: read("gateway"), stranger: read("stranger"), roots: x509.NewCertPool()}
	fc.roots.AddCert(fc.ca)
	fc.now = fc.device.NotBefore.Add(time.Hour)
	return fc
}

func writeFuzzCerts(f *testing.F) {
	f.Helper()
	issue := func(ca *pki.CA, role, name string) *x509.Certificate {
		key, err := pki.NewKey()
		if err != nil {
			f.Fatal(err)
		}
		c, err := ca.IssueClient(key.Public(), pki.SPIFFEID(testTrustDomain, role, name), 10*365*24*time.Hour)
		if err != nil {
			f.Fatal(err)
		}
		return c
	}
	ca, err := pki.LoadOrCreateCA(f.TempDir(), testTrustDomain)
	if err != nil {
		f.Fatal(err)
	}
	other, err := pki.LoadOrCreateCA(f.TempDir(), testTrustDomain)
	if err != nil {
		f.Fatal(err)
	}
	if err := os.MkdirAll(fuzzCertsDir, 0o755); err != nil {
		f.Fatal(err)
	}
	for name, c := range map[string]*x509.Certificate{
		"ca": ca.Cert, "device": issue(ca, pki.RoleDevice, fuzzDeviceID), "gateway": issue(ca, pki.RoleGateway, "edge-1"),
		"stranger": issue(other, pki.RoleDevice, fuzzDeviceID),
	} {
		if err := pki.WriteCertificates(filepath.Join(fuzzCertsDir, name+".pem"), c); err != nil {
			f.Fatal(err)
		}
	}
}

func base64Chain(enc *base64.Encoding, chain ...*x509.Certificate) string {
	var parts []string
	for _, c := range chain {
		parts = append(parts, enc.EncodeToString(c.Raw))
	}
	return strings.Join(parts, ",")
}

// FuzzDecodeForwardedCert decodes and verifies arbitrary text as the
// device certificate a gateway forwards (nginx's URL-encoded PEM, Envoy's
// query-encoded PEM, plain PEM, Traefik's and Caddy's base64 DER). It must
// never panic; it may name a device only from the device certificate the
// collector CA issued, the same way from the text (cached by text) as from
// the parsed chain (cached by certificates), and whatever chain it decodes
// decodes the same from every other form gateways forward it in.
func FuzzDecodeForwardedCert(f *testing.F) {
	fc := loadFuzzCerts(f)
	for _, v := range []string{
		nginxEscaped(fc.device), nginxEscaped(fc.device, fc.ca), envoyQueryEscaped(fc.device), pemOf(fc.device),
		url.PathEscape(pemOf(fc.device)), base64Chain(base64.StdEncoding, fc.device), base64Chain(base64.RawURLEncoding, fc.device, fc.ca),
		url.QueryEscape(base64Chain(base64.StdEncoding, fc.device, fc.ca)),
		nginxEscaped(fc.gateway), base64Chain(base64.StdEncoding, fc.stranger), pemOf(fc.stranger, fc.ca),
		"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "%ZZ", "certificate?", strings.Repeat("A,", 9),
	} {
		fuzzseed.Add(f, v)
	}
	f.Fuzz(func(t *testing.T, value string) {
		v := newVerifier(fc.roots, testTrustDomain)
		v.now = func() time.Time { return fc.now }
		chain, decErr := decodeForwardedCert(value)
		id, cert, err := v.deviceCertEncoded(value)
		if err == nil {
			if decErr != nil || !chain[0].Equal(fc.device) {
				t.Fatalf("named device %s from a certificate the collector did not issue to it (decode: %v)", id, decErr)
			}
			if id != fuzzDeviceID || cert.serial != pki.SerialHex(fc.device) || !bytes.Equal(cert.key, pki.KeySHA256(fc.device)) {
				t.Fatalf("named device %s, serial %s, key %x; want %s, %s, %x", id, cert.serial, cert.key, fuzzDeviceID, pki.SerialHex(fc.device), pki.KeySHA256(fc.device))
			}
		}
		again, againCert, againErr := v.deviceCertEncoded(value)
		if again != id || againCert.serial != cert.serial || !bytes.Equal(againCert.key, cert.key) || (againErr == nil) != (err == nil) {
			t.Fatalf("asked twice: %q %q %x %v, then %q %q %x %v", id, cert.serial, cert.key, err, again, againCert.serial, againCert.key, againErr)
		}
		if decErr != nil {
			return
		}
		if len(chain) == 0 || len(chain) > maxChainCerts {
			t.Fatalf("decoded a chain of %d certificates", len(chain))
		}
		if fromChain, err2 := v.device(chain); fromChain != id || (err2 == nil) != (err == nil) {
			t.Fatalf("the text names %q (%v), its chain %q (%v)", id, err, fromChain, err2)
		}
		for _, form := range []string{nginxEscaped(chain...), envoyQueryEscaped(chain...), pemOf(chain...), base64Chain(base64.StdEncoding, chain...), url.QueryEscape(base64Chain(base64.RawURLEncoding, chain...))} {
			got, err := decodeForwardedCert(form)
			if err != nil || !slices.EqualFunc(got, chain, (*x509.Certificate).Equal) {
				t.Fatalf("a chain decoded from %q does not decode the same from %q: %v", value, form, err)
			}
		}
	})
}

// fuzzDecider decides like the collector would for the fixture device: it
// records what it was asked, allows level "basic" and denies anything else
// with reasons that try to break out of a response header.
type fuzzDecider struct {
	asked []*posturev1.CheckAccessRequest
}

func (d *fuzzDecider) CheckAccess(_ context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	d.asked = append(d.asked, req)
	if req.GetAccessLevel() == "basic" {
		return &posturev1.CheckAccessResponse{Allowed: true, Score: 70}, nil
	}
	return &posturev1.CheckAccessResponse{Score: 70, Reasons: []string{"denied\r\nX-Injected: 1\x00\x7f", "second"},
		FailedChecks: []*posturev1.CheckResult{{Name: "disk_encryption", Remediation: "encrypt\nthe disk"}}}, nil
}

// Bits of FuzzForwardAuth's flags input.
const (
	flagTraefik      = 1 << iota // the front reads X-Forwarded-Tls-Client-Cert
	flagSecondHeader             // the certificate header comes twice
	flagGatewayCert              // the gateway presents its certificate over TLS
	flagDeviceAsGW               // it presents the device certificate instead
	flagOtherHeader              // the header the front does not read carries the value too
	flagDefaultLevel             // the front has a default level
)

// FuzzForwardAuth sends /check arbitrary requests: method, URL,
// certificate headers, Authorization, and how the gateway connects. The
// handler must never panic, must answer one of its documented statuses,
// and must ask for a decision only for a gateway that authenticated (its
// certificate, or the bearer secret) about the device whose certificate
// the collector CA issued, for a valid level the URL (or the default)
// named; it allows only what the decision allowed, and no response header
// carries a control character.
func FuzzForwardAuth(f *testing.F) {
	fc := loadFuzzCerts(f)
	bearer := "Bearer " + testSecret
	for _, s := range []struct {
		method, target, cert, auth string
		flags                      byte
	}{
		{"GET", "/check?level=basic", nginxEscaped(fc.device), bearer, 0},
		{"GET", "/check?level=trusted", nginxEscaped(fc.device, fc.ca), bearer, 0},
		{"POST", "/check?level=basic", base64Chain(base64.StdEncoding, fc.device), "", flagTraefik | flagGatewayCert},
		{"GET", "/check", envoyQueryEscaped(fc.device), "bearer  " + testSecret + " ", flagDefaultLevel},
		{"GET", "/check?level=basic", nginxEscaped(fc.device), bearer, flagSecondHeader},
		{"GET", "/check?level=basic", nginxEscaped(fc.device), bearer, flagOtherHeader},
		{"GET", "/check?level=basic", nginxEscaped(fc.device), "", flagDeviceAsGW},
		{"GET", "/check?level=basic", nginxEscaped(fc.gateway), bearer, 0},
		{"GET", "/check?level=basic", nginxEscaped(fc.stranger), bearer, 0},
		{"GET", "/check?level=ba%0Dsic", nginxEscaped(fc.device), bearer, 0},
		{"GET", "/check?level=basic", nginxEscaped(fc.device), "Basic " + testSecret, 0},
		{"GET", "/check?level=basic&level=trusted", "", bearer, 0},
		{"GET", "http://[::1", "x", "", 0},
	} {
		fuzzseed.Add(f, s.method, s.target, s.cert, s.auth, s.flags)
	}
	f.Fuzz(func(t *testing.T, method, target, cert, authorization string, flags byte) {
		dec := &fuzzDecider{}
		cfg := ForwardAuthConfig{Decider: dec, TrustDomain: testTrustDomain, Roots: fc.roots, BearerSecrets: []string{testSecret}}
		header, other := HeaderClientCert, HeaderTraefikClientCert
		if flags&flagTraefik != 0 {
			cfg.CertHeader, header, other = HeaderTraefikClientCert, HeaderTraefikClientCert, HeaderClientCert
		}
		if flags&flagDefaultLevel != 0 {
			cfg.DefaultLevel = "trusted"
		}
		fa, err := NewForwardAuth(cfg)
		if err != nil {
			t.Fatal(err)
		}
		fa.verifier.now = func() time.Time { return fc.now }

		u, err := url.Parse(target)
		if err != nil {
			u = &url.URL{Path: "/check"}
		}
		r := &http.Request{Method: method, URL: u, Header: http.Header{}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
		r = r.WithContext(context.Background())
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		if cert != "" {
			r.Header[header] = []string{cert}
			if flags&flagSecondHeader != 0 {
				r.Header[header] = append(r.Header[header], cert)
			}
			if flags&flagOtherHeader != 0 {
				r.Header[other] = []string{cert}
			}
		}
		gatewayCert := false
		switch {
		case flags&flagGatewayCert != 0:
			r.TLS = tlsWithChain(fc.gateway, fc.ca)
			gatewayCert = true
		case flags&flagDeviceAsGW != 0:
			r.TLS = tlsWithChain(fc.device, fc.ca)
		}

		w := httptest.NewRecorder()
		fa.ServeHTTP(w, r)
		code := w.Code
		if !slices.Contains([]int{http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden}, code) {
			t.Fatalf("status %d", code)
		}
		for k, vs := range w.Header() {
			for _, v := range vs {
				if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
					t.Fatalf("response header %s carries a control character: %q", k, v)
				}
			}
		}
		decided := code == http.StatusOK || code == http.StatusForbidden
		if decided != (len(dec.asked) == 1) || len(dec.asked) > 1 {
			t.Fatalf("status %d after %d decisions", code, len(dec.asked))
		}
		if !decided {
			return
		}
		scheme, secret, _ := strings.Cut(authorization, " ")
		if !gatewayCert && !(strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(secret) == testSecret) {
			t.Fatalf("a decision for a gateway that did not authenticate (Authorization %q, flags %b)", authorization, flags)
		}
		asked := dec.asked[0]
		if asked.GetDeviceId() != fuzzDeviceID || asked.GetCertificateSerial() != pki.SerialHex(fc.device) {
			t.Fatalf("asked about device %q, serial %q, from %q", asked.GetDeviceId(), asked.GetCertificateSerial(), cert)
		}
		if !bytes.Equal([]byte(r.Header.Get(header)), []byte(cert)) || len(r.Header.Values(header)) != 1 || len(r.Header.Values(other)) != 0 {
			t.Fatal("a decision for a request whose certificate headers the gateway did not set alone")
		}
		level := u.Query().Get("level")
		if level == "" {
			level = cfg.DefaultLevel
		}
		if asked.GetAccessLevel() != level || validLevel(level) != nil {
			t.Fatalf("asked for level %q; the request named %q", asked.GetAccessLevel(), level)
		}
		if (code == http.StatusOK) != (level == "basic") {
			t.Fatalf("status %d for level %q", code, level)
		}
	})
}

// tlsWithChain is the TLS state of a connection whose client presented
// chain, as the listener verified it.
func tlsWithChain(chain ...*x509.Certificate) *tls.ConnectionState {
	return &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: chain, VerifiedChains: [][]*x509.Certificate{chain}}
}
