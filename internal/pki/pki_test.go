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
		// What url.Parse alone let through.
		{"spiffe://td/device/x?role=admin", "", "", "", false},
		{"spiffe://td/device/x#frag", "", "", "", false},
		{"spiffe://user@td/device/x", "", "", "", false},
		{"spiffe://td:8443/device/x", "", "", "", false},
		{"spiffe://TD/device/x", "", "", "", false},
		{"spiffe://td/device/%2e%2e", "", "", "", false},
		{"spiffe://td//x", "", "", "", false},
	}
	for _, tt := range tests {
		td, r, n, err := ParseSPIFFEID(tt.in)
		if (err == nil) != tt.ok || td != tt.td || r != tt.r || n != tt.n {
			t.Errorf("ParseSPIFFEID(%q) = %q %q %q %v", tt.in, td, r, n, err)
		}
	}
}

func TestCanonicalSerial(t *testing.T) {
	for in, want := range map[string]string{
		"a1b2":        "a1b2",
		"A1B2":        "a1b2",
		"00A1B2":      "a1b2",
		"0xa1b2":      "a1b2",
		"00:a1:b2":    "a1b2",
		"7fffffffff1": "7fffffffff1",
	} {
		if got, err := CanonicalSerial(in); err != nil || got != want {
			t.Errorf("CanonicalSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "00", "xyz", "-a1", "+a1", "a1 b2", "0x", strings.Repeat("f", 41)} {
		if got, err := CanonicalSerial(in); err == nil {
			t.Errorf("CanonicalSerial(%q) = %q; want an error", in, got)
		}
	}
}

func TestChainValidity(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotBefore: t0, NotAfter: t0.AddDate(1, 0, 0)}
	ca := &x509.Certificate{NotBefore: t0.AddDate(0, 1, 0), NotAfter: t0.AddDate(0, 6, 0)}
	nb, na := ChainValidity([]*x509.Certificate{leaf, ca})
	if !nb.Equal(ca.NotBefore) || !na.Equal(ca.NotAfter) {
		t.Errorf("ChainValidity = %v..%v, want the CA's narrower %v..%v", nb, na, ca.NotBefore, ca.NotAfter)
	}
	if nb, na := ChainValidity([]*x509.Certificate{leaf}); !nb.Equal(leaf.NotBefore) || !na.Equal(leaf.NotAfter) {
		t.Errorf("one certificate: %v..%v", nb, na)
	}
}
