package collector

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/pki"
)

// The serving certificate is replaced, with a new key, once two thirds of
// its lifetime have passed, and a failed renewal keeps the old one while
// it is valid.
func TestServingCertRenews(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir(), "posture.local")
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServingCert(ca, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.now = func() time.Time { return now }
	first, err := s.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Leaf.NotAfter.Sub(first.Leaf.NotBefore); got < servingLifetime-time.Hour {
		t.Fatalf("serving certificate valid for %s, want about %s", got, servingLifetime)
	}
	now = first.Leaf.NotBefore.Add(servingLifetime / 2)
	if c, _ := s.get(nil); c != first {
		t.Error("replaced half way through its lifetime")
	}
	life := first.Leaf.NotAfter.Sub(first.Leaf.NotBefore)
	now = first.Leaf.NotBefore.Add(life * 2 / 3).Add(time.Minute)
	second, err := s.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if second == first || second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("not replaced after two thirds of its lifetime")
	}
	if second.Leaf.PublicKeyAlgorithm != x509.ECDSA || string(second.Leaf.RawSubjectPublicKeyInfo) == string(first.Leaf.RawSubjectPublicKeyInfo) {
		t.Error("the new certificate reuses the old key")
	}
	// It verifies against the CA as a server certificate for the hosts.
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := second.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("renewed certificate: %v", err)
	}
	// A renewal that cannot issue keeps a valid certificate, and fails
	// once none is valid.
	s.ca = &pki.CA{Cert: ca.Cert} // no key: issuing fails
	now = second.Leaf.NotBefore.Add(servingLifetime * 3 / 4)
	if c, err := s.get(nil); err != nil || c != second {
		t.Errorf("failed renewal: %v, %v; want the still valid certificate", c, err)
	}
	now = second.Leaf.NotAfter.Add(time.Minute)
	if _, err := s.get(nil); err == nil {
		t.Error("no valid certificate and none issued, yet no error")
	}
	var _ func(*tls.ClientHelloInfo) (*tls.Certificate, error) = s.get
}
