package gatewayfront

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A device certificate replaced when the device enrolled again is denied
// at the gateway, with the reason; the current one is allowed.
func TestForwardAuthReplacedCertificate(t *testing.T) {
	e := startCollector(t)
	dev := e.enroll()
	tok, err := e.admin.CreateEnrollmentToken(context.Background(), &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Enroll(context.Background(), dev.stateDir, tok.GetToken()); err != nil {
		t.Fatalf("enroll again: %v", err)
	}
	current, err := pki.ReadCertificates(filepath.Join(dev.stateDir, "device.crt"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots, BearerSecrets: []string{testSecret}})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(cert string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/check?level=basic", nil)
		r.Header.Set("Authorization", "Bearer "+testSecret)
		r.Header.Set("X-Client-Cert", cert)
		w := httptest.NewRecorder()
		f.ServeHTTP(w, r)
		return w
	}
	if w := ask(nginxEscaped(dev.chain[0])); w.Code != http.StatusForbidden || !strings.Contains(w.Header().Get("X-Posture-Reason"), "replaced") {
		t.Errorf("certificate from before enrolling again: %d %q; want 403, replaced", w.Code, w.Header().Get("X-Posture-Reason"))
	}
	if w := ask(nginxEscaped(current[0])); w.Code != http.StatusOK {
		t.Errorf("current certificate: %d %q; want 200", w.Code, w.Body.String())
	}
}

// A certificate minted with the serial and SPIFFE ID of the device's
// current certificate but another key (what a stolen CA key makes) is
// denied at the gateway; the genuine one is allowed.
func TestForwardAuthMintedCertificate(t *testing.T) {
	e := startCollector(t)
	dev := e.enroll()
	minted := testtools.MintLike(t, e.dataDir, dev.chain[0])
	if minted.Leaf.SerialNumber.Cmp(dev.chain[0].SerialNumber) != 0 {
		t.Fatal("the minted certificate does not carry the device's serial")
	}
	f, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots, BearerSecrets: []string{testSecret}})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(cert *x509.Certificate) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/check?level=basic", nil)
		r.Header.Set("Authorization", "Bearer "+testSecret)
		r.Header.Set("X-Client-Cert", nginxEscaped(cert))
		w := httptest.NewRecorder()
		f.ServeHTTP(w, r)
		return w
	}
	if w := ask(minted.Leaf); w.Code != http.StatusForbidden || !strings.Contains(w.Header().Get("X-Posture-Reason"), "did not issue it with this serial and key") {
		t.Errorf("minted certificate: %d %q; want 403 naming the serial and key", w.Code, w.Header().Get("X-Posture-Reason"))
	}
	if w := ask(dev.chain[0]); w.Code != http.StatusOK {
		t.Errorf("genuine certificate: %d %q; want 200", w.Code, w.Body.String())
	}
}

// A revoked gateway certificate no longer authenticates a gateway at
// /check.
func TestForwardAuthRevokedGateway(t *testing.T) {
	e := startCollector(t)
	dev := e.enroll()
	gw := e.gatewayCert("edge")
	f, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots, GatewayRevoked: e.c.GatewayRevoked})
	if err != nil {
		t.Fatal(err)
	}
	ask := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/check?level=basic", nil)
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{gw.Leaf}}}
		r.Header.Set("X-Client-Cert", nginxEscaped(dev.chain[0]))
		w := httptest.NewRecorder()
		f.ServeHTTP(w, r)
		return w
	}
	if w := ask(); w.Code != http.StatusOK {
		t.Fatalf("before revocation: %d %s", w.Code, w.Body.String())
	}
	if _, err := e.admin.RevokeGateway(context.Background(), &posturev1.RevokeGatewayRequest{Name: "edge", Reason: "key leaked"}); err != nil {
		t.Fatal(err)
	}
	if w := ask(); w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "revoked") {
		t.Errorf("after revocation: %d %q; want 401, revoked", w.Code, w.Body.String())
	}
}
