package agent

import (
	"crypto/ecdsa"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/pki"
)

// issue has a real CA certify a new key for the test device.
func issue(t *testing.T, ca *pki.CA, ttl time.Duration) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueClient(key.Public(), pki.SPIFFEID("t.test", pki.RoleDevice, "d1"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

// Whatever point a renewal stopped at, the state directory holds a
// certificate with its key: the old pair before the new certificate is
// written, the new pair after, with the key moved in place.
func TestLoadClientCertAcrossInterruptedRenewal(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir(), "t.test")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		writeCert bool // the new certificate was written before the stop
		moveKey   bool // and its key moved in place
	}{
		{"stopped before the certificate was written", false, false},
		{"stopped between certificate and key", true, false},
		{"finished", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			oldKey, oldCert := issue(t, ca, time.Hour)
			if err := pki.WritePrivateKey(filepath.Join(dir, tlsKeyFile), oldKey); err != nil {
				t.Fatal(err)
			}
			if err := pki.WriteCertificates(filepath.Join(dir, certFile), oldCert); err != nil {
				t.Fatal(err)
			}
			newKey, newCert := issue(t, ca, time.Hour)
			if err := pki.WritePrivateKey(filepath.Join(dir, nextTLSKeyFile), newKey); err != nil {
				t.Fatal(err)
			}
			if tt.writeCert {
				if err := pki.WriteCertificates(filepath.Join(dir, certFile), newCert); err != nil {
					t.Fatal(err)
				}
			}
			if tt.moveKey {
				if err := os.Rename(filepath.Join(dir, nextTLSKeyFile), filepath.Join(dir, tlsKeyFile)); err != nil {
					t.Fatal(err)
				}
			}

			want := oldCert
			if tt.writeCert {
				want = newCert
			}
			for i := range 2 { // the second load finds the pair in place
				got, err := loadClientCert(dir)
				if err != nil {
					t.Fatalf("load %d: %v", i, err)
				}
				if got.Leaf.SerialNumber.Cmp(want.SerialNumber) != 0 {
					t.Fatalf("load %d: certificate %x, want %x", i, got.Leaf.SerialNumber, want.SerialNumber)
				}
			}
			if tt.writeCert {
				if _, err := os.Stat(filepath.Join(dir, nextTLSKeyFile)); !os.IsNotExist(err) {
					t.Errorf("the renewed key was not moved in place: %v", err)
				}
			}
		})
	}
}

// A certificate is due for renewal once a third of its lifetime or less is
// left.
func TestRenewDue(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: start, NotAfter: start.Add(300 * 24 * time.Hour)}
	if got, want := renewDue(cert), start.Add(200*24*time.Hour); !got.Equal(want) {
		t.Errorf("renewDue = %s, want %s", got, want)
	}
}

// Two agents on one state directory would end each other's streams and
// race for the chain head: the second refuses to run, and may once the
// first has stopped.
func TestStateDirLocked(t *testing.T) {
	dir := t.TempDir()
	release, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(dir); err == nil || !strings.Contains(err.Error(), "another posture-agent is running") {
		t.Errorf("second lock: %v; want another agent running", err)
	}
	release()
	again, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again()
}
