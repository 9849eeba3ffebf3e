package testtools

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/posture-project/posture/internal/pki"
)

// MintLike makes what whoever holds a collector's CA key can make: a
// certificate that copies genuine (its serial, subject, SPIFFE ID, usages
// and validity) for a new key, signed with the CA in caDir (a collector's
// data directory: ca.crt and ca.key). It verifies against the collector's
// CA exactly as genuine does.
func MintLike(t testing.TB, caDir string, genuine *x509.Certificate) tls.Certificate {
	t.Helper()
	caCert, err := pki.ReadCertificate(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.ReadPrivateKey(filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: genuine.SerialNumber,
		Subject:      genuine.Subject,
		NotBefore:    genuine.NotBefore,
		NotAfter:     genuine.NotAfter,
		KeyUsage:     genuine.KeyUsage,
		ExtKeyUsage:  genuine.ExtKeyUsage,
		URIs:         genuine.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
