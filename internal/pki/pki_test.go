package pki

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCAPersistsAndIssues(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode = %v (%v), want 0600", st.Mode().Perm(), err)
	}
	again, err := LoadOrCreateCA(dir, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	if again.Fingerprint() != ca.Fingerprint() {
		t.Error("reloading the CA changed its fingerprint")
	}

	key, _ := NewKey()
	id := SPIFFEID("example.test", RoleDevice, "abc")
	cert, err := again.IssueClient(key.Public(), id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued certificate does not verify: %v", err)
	}
	got, err := PeerID(cert)
	if err != nil || got.String() != "spiffe://example.test/device/abc" {
		t.Errorf("PeerID = %v, %v", got, err)
	}
}

func TestIncompleteCARefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir, "example.test"); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "ca.key"))
	if _, err := LoadOrCreateCA(dir, "example.test"); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("LoadOrCreateCA with only ca.crt = %v, want an 'incomplete' error", err)
	}
}

func TestParseSPIFFEID(t *testing.T) {
	tests := []struct {
		in       string
		td, r, n string
		ok       bool
	}{
		{"spiffe://td/device/x", "td", "device", "x", true},
		{"spiffe://td/device", "", "", "", false},
		{"spiffe://td/device/x/y", "", "", "", false},
		{"https://td/device/x", "", "", "", false},
		{"spiffe:///device/x", "", "", "", false},
	}
	for _, tt := range tests {
		td, r, n, err := ParseSPIFFEID(tt.in)
		if (err == nil) != tt.ok || td != tt.td || r != tt.r || n != tt.n {
			t.Errorf("ParseSPIFFEID(%q) = %q %q %q %v", tt.in, td, r, n, err)
		}
	}
}
