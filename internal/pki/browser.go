package pki

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"time"
)

// IssueBrowser issues a client certificate for a key a device's user holds
// in their browsers: it names the device by id (its SPIFFE ID, as the
// device certificate does, so gateways map it the same way) and carries a
// common name a person recognises in a browser's certificate picker. It
// expires at notAfter at the latest, and never after the CA.
func (ca *CA) IssueBrowser(pub crypto.PublicKey, id *url.URL, commonName string, ttl time.Duration, notAfter time.Time) (*x509.Certificate, error) {
	now := time.Now()
	end := now.Add(ttl)
	if end.After(notAfter) {
		end = notAfter
	}
	if end.After(ca.Cert.NotAfter) {
		end = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{Organization: []string{"Posture"}, CommonName: commonName},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     end,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue browser certificate for %s: %w", id, err)
	}
	return x509.ParseCertificate(der)
}

// DeriveKey derives a 32-byte secret for purpose from the CA's private key:
// every collector holding the CA derives the same one (several collectors
// share the CA), and nobody without it can.
func (ca *CA) DeriveKey(purpose string) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("derive a key for %s: %w", purpose, err)
	}
	m := hmac.New(sha256.New, der)
	m.Write([]byte("posture.v1.derive\x00" + purpose))
	return m.Sum(nil), nil
}
