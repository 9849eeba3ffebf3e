package testtools

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// GatewayCert has the collector behind admin issue a gateway certificate
// for name, as posture-collector gateway add does.
func GatewayCert(t testing.TB, admin posturev1.AdminServiceClient, name string) tls.Certificate {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.IssueGatewayCertificate(context.Background(), &posturev1.IssueGatewayCertificateRequest{Name: name, Csr: csr})
	if err != nil {
		t.Fatalf("issue gateway certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(resp.GetCertificate())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{resp.GetCertificate()}, PrivateKey: key, Leaf: leaf}
}
