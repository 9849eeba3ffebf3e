package gatewayfront

import (
	"crypto/x509"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/pki"
)

// testCA is a collector CA in a temporary directory with one device and
// one gateway certificate.
func testCA(t *testing.T) (ca *pki.CA, roots *x509.CertPool, dev, gw *x509.Certificate) {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir(), testTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(ca.Cert)
	issue := func(role, name string) *x509.Certificate {
		key, err := pki.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.IssueClient(key.Public(), pki.SPIFFEID(testTrustDomain, role, name), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return ca, roots, issue(pki.RoleDevice, "d1"), issue(pki.RoleGateway, "edge")
}

func TestDecodeForwardedCert(t *testing.T) {
	ca, _, dev, _ := testCA(t)
	der := base64.StdEncoding.EncodeToString(dev.Raw)
	tests := []struct {
		name    string
		value   string
		want    int // certificates decoded
		wantErr string
	}{
		{"nginx escaped PEM", nginxEscaped(dev), 1, ""},
		{"nginx escaped chain", nginxEscaped(dev, ca.Cert), 2, ""},
		{"query escaped PEM", envoyQueryEscaped(dev), 1, ""},
		{"path escaped PEM", url.PathEscape(pemOf(dev)), 1, ""},
		{"plain PEM", pemOf(dev), 1, ""},
		{"base64 DER", der, 1, ""},
		{"base64 DER without padding", strings.TrimRight(der, "="), 1, ""},
		{"base64url DER", base64.RawURLEncoding.EncodeToString(dev.Raw), 1, ""},
		{"base64 wrapped at 64 columns", wrap(der, 64), 1, ""},
		{"Traefik chain", der + "," + base64.StdEncoding.EncodeToString(ca.Cert.Raw), 2, ""},
		{"Traefik escaped chain", url.QueryEscape(der + "," + base64.StdEncoding.EncodeToString(ca.Cert.Raw)), 2, ""},
		{"surrounding space", "  " + der + "\t", 1, ""},
		{"empty", "", 0, "no client certificate"},
		{"blank", "   ", 0, "no client certificate"},
		{"PEM without certificate", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0, "holds no CERTIFICATE block"},
		{"bad URL encoding", "%ZZ" + der, 0, "not valid URL encoding"},
		{"not base64", "certificate?", 0, "neither PEM nor base64 DER"},
		{"base64 of something else", base64.StdEncoding.EncodeToString([]byte("hello world")), 0, "cannot be parsed"},
		{"empty chain element", der + ",", 0, "certificate 2 is neither PEM nor base64 DER"},
		{"too large", strings.Repeat("A", maxCertHeader+1), 0, "more than the"},
		{"too many certificates", strings.Repeat(der+",", maxChainCerts) + der, 0, "more than 8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certs, err := decodeForwardedCert(tc.value)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != tc.want {
				t.Fatalf("%d certificates, want %d", len(certs), tc.want)
			}
			if !certs[0].Equal(dev) {
				t.Error("first certificate is not the leaf")
			}
		})
	}
}

func wrap(s string, n int) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n] + "\n")
		s = s[n:]
	}
	b.WriteString(s)
	return b.String()
}

func TestVerifier(t *testing.T) {
	ca, roots, dev, gw := testCA(t)
	_, _, otherDev, _ := testCA(t)
	v := newVerifier(roots, testTrustDomain)

	serverKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.IssueServer(serverKey.Public(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherTD, err := pki.LoadOrCreateCA(t.TempDir(), "elsewhere.test")
	if err != nil {
		t.Fatal(err)
	}
	otherTDRoots := x509.NewCertPool()
	otherTDRoots.AddCert(otherTD.Cert)
	key, _ := pki.NewKey()
	elsewhere, err := otherTD.IssueClient(key.Public(), pki.SPIFFEID("elsewhere.test", pki.RoleDevice, "d9"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		v       *verifier
		chain   []*x509.Certificate
		want    string
		wantErr string
	}{
		{"device", v, []*x509.Certificate{dev}, "d1", ""},
		{"device with CA in chain", v, []*x509.Certificate{dev, ca.Cert}, "d1", ""},
		{"gateway is not a device", v, []*x509.Certificate{gw}, "", "a gateway, not a device"},
		{"server certificate lacks client auth", v, []*x509.Certificate{server}, "", "not a valid client certificate"},
		{"another CA", v, []*x509.Certificate{otherDev}, "", "not a valid client certificate from this collector's CA"},
		{"another trust domain", newVerifier(otherTDRoots, testTrustDomain), []*x509.Certificate{elsewhere}, "", `of trust domain "elsewhere.test", not "gateway.test"`},
		{"CA itself", v, []*x509.Certificate{ca.Cert}, "", "is not a SPIFFE ID of the form"},
		{"nothing", v, nil, "", "no client certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Parsed and as forwarded, each twice: the second answer comes
			// from the cache and must agree.
			check := []func() (string, error){
				func() (string, error) { return tc.v.device(tc.chain) },
				func() (string, error) { return tc.v.deviceEncoded(nginxEscaped(tc.chain...)) },
			}
			for i := range 4 {
				id, err := check[i/2]()
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if id != tc.want {
					t.Fatalf("device %q, want %q", id, tc.want)
				}
			}
		})
	}

	t.Run("cached chain expires", func(t *testing.T) {
		v := newVerifier(roots, testTrustDomain)
		enc := nginxEscaped(dev)
		if _, err := v.device([]*x509.Certificate{dev}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.deviceEncoded(enc); err != nil {
			t.Fatal(err)
		}
		v.now = func() time.Time { return dev.NotAfter.Add(time.Second) }
		if _, err := v.device([]*x509.Certificate{dev}); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("error %v, want an expired certificate", err)
		}
		if _, err := v.deviceEncoded(enc); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("error %v, want an expired certificate", err)
		}
	})

	t.Run("cache is bounded", func(t *testing.T) {
		v := newVerifier(roots, testTrustDomain)
		for i := range maxVerifiedCache {
			v.cache[[32]byte{byte(i), byte(i >> 8), 0xff}] = verified{}
		}
		// Adding to a full cache evicts an entry rather than growing it.
		if _, err := v.device([]*x509.Certificate{dev}); err != nil {
			t.Fatal(err)
		}
		if n := len(v.cache); n != maxVerifiedCache {
			t.Fatalf("cache holds %d entries, want %d", n, maxVerifiedCache)
		}
	})
}

func TestDeviceFromPrincipal(t *testing.T) {
	v := newVerifier(x509.NewCertPool(), testTrustDomain)
	tests := []struct {
		principal, want, wantErr string
	}{
		{"spiffe://gateway.test/device/abc", "abc", ""},
		{"spiffe://gateway.test/gateway/edge", "", "is not a device of trust domain gateway.test"},
		{"spiffe://other.test/device/abc", "", "is not a device of trust domain gateway.test"},
		{"CN=laptop,O=Posture", "", "not a SPIFFE ID"},
		{"laptop.example.com", "", "not a SPIFFE ID"},
		{"spiffe://gateway.test/device/abc/extra", "", "not a SPIFFE ID"},
	}
	for _, tc := range tests {
		t.Run(tc.principal, func(t *testing.T) {
			id, err := v.deviceFromPrincipal(tc.principal)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || id != tc.want {
				t.Fatalf("got %q, %v; want %q", id, err, tc.want)
			}
		})
	}
}
