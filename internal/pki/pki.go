// Package pki holds the collector's certificate authority and the helpers
// both sides use to name and check peers: SPIFFE IDs in URI SANs, CA
// fingerprints, and PEM files, written with package durable.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/posture-project/posture/internal/durable"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Roles a certificate can carry in its SPIFFE ID path.
const (
	RoleDevice    = "device"
	RoleGateway   = "gateway"
	RoleAdmin     = "admin"
	RoleCollector = "collector"
)

// File names inside a CA directory.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
)

// CA is a certificate authority that issues the collector's serving
// certificate and the client certificates of devices, gateways and admins.
type CA struct {
	Cert        *x509.Certificate
	key         crypto.Signer
	TrustDomain string
}

// HasCA says whether dir holds a CA certificate or key.
func HasCA(dir string) bool {
	for _, f := range []string{caCertFile, caKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// LoadOrCreateCA loads ca.crt and ca.key from dir, or creates them (key mode
// 0600) when neither exists. A directory holding only one of the two is an
// error: something removed half of the CA and guessing would split the trust.
func LoadOrCreateCA(dir, trustDomain string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		cert, err := ReadCertificate(certPath)
		if err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
		key, err := ReadPrivateKey(keyPath)
		if err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
		return &CA{Cert: cert, key: key, TrustDomain: trustDomain}, nil
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("CA in %s is incomplete (need both %s and %s); restore the missing file or remove both to create a new CA, which invalidates every enrolled device", dir, caCertFile, caKeyFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"Posture"}, CommonName: "Posture CA " + trustDomain},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory: %w", err)
	}
	if err := WritePrivateKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := WriteCertificates(certPath, cert); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key, TrustDomain: trustDomain}, nil
}

// Fingerprint is the SHA-256 of the CA certificate, hex encoded: what an
// enrollment token pins.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint returns the hex SHA-256 of a certificate's DER bytes.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// SPIFFEID builds spiffe://<trust-domain>/<role>/<name>.
func SPIFFEID(trustDomain, role, name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/" + role + "/" + name}
}

// ParseSPIFFEID splits a SPIFFE ID of the form spiffe://<td>/<role>/<name>.
// The ID must be valid by the SPIFFE ID standard (go-spiffe's parser: no
// query, fragment, user or port, and only the characters the standard
// allows), with exactly two path segments.
func ParseSPIFFEID(raw string) (trustDomain, role, name string, err error) {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return "", "", "", fmt.Errorf("%q is not a SPIFFE ID of the form spiffe://<trust-domain>/<role>/<name>: %w", raw, err)
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 2 {
		return "", "", "", fmt.Errorf("%q is not a SPIFFE ID of the form spiffe://<trust-domain>/<role>/<name>", raw)
	}
	return id.TrustDomain().Name(), parts[0], parts[1], nil
}

// PeerID returns the single SPIFFE URI SAN of a certificate, which must be
// a valid SPIFFE ID.
func PeerID(cert *x509.Certificate) (*url.URL, error) {
	var found *url.URL
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		if found != nil {
			return nil, errors.New("certificate has more than one SPIFFE ID")
		}
		found = u
	}
	if found == nil {
		return nil, errors.New("certificate has no SPIFFE ID")
	}
	if _, err := spiffeid.FromURI(found); err != nil {
		return nil, fmt.Errorf("certificate's SPIFFE ID %q: %w", found, err)
	}
	return found, nil
}

// IssueClient issues a client certificate for pub naming id.
func (ca *CA) IssueClient(pub crypto.PublicKey, id *url.URL, ttl time.Duration) (*x509.Certificate, error) {
	return ca.issue(pub, id, ttl, x509.ExtKeyUsageClientAuth, nil)
}

// IssueServer issues the collector's serving certificate. It names the
// collector by SPIFFE ID (which agents check) and also by the given DNS
// names and IP addresses for clients that check hostnames.
func (ca *CA) IssueServer(pub crypto.PublicKey, hosts []string, ttl time.Duration) (*x509.Certificate, error) {
	return ca.issue(pub, SPIFFEID(ca.TrustDomain, RoleCollector, "server"), ttl, x509.ExtKeyUsageServerAuth, hosts)
}

func (ca *CA) issue(pub crypto.PublicKey, id *url.URL, ttl time.Duration, usage x509.ExtKeyUsage, hosts []string) (*x509.Certificate, error) {
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{Organization: []string{"Posture"}, CommonName: id.Path},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		URIs:         []*url.URL{id},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	return x509.ParseCertificate(der)
}

// NewKey makes an ECDSA P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return n
}

// SerialHex is how the collector writes a certificate serial: lowercase
// hex without leading zeros, as big.Int.Text(16) gives it.
func SerialHex(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// CanonicalSerial reads a certificate serial in hex as people and tools
// write it (upper or lower case, leading zeros as openssl prints them,
// bytes separated by colons, an optional 0x) and returns it as SerialHex
// writes it, so that one serial has one spelling.
func CanonicalSerial(s string) (string, error) {
	h := strings.ReplaceAll(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"), ":", "")
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || h == "" || h[0] == '+' || h[0] == '-' || n.Sign() <= 0 || n.BitLen() > 160 {
		return "", fmt.Errorf("%q is not a certificate serial in hex", s)
	}
	return n.Text(16), nil
}

// WriteCertificates writes certificates as PEM (mode 0644), atomically.
func WriteCertificates(path string, certs ...*x509.Certificate) error {
	var buf []byte
	for _, c := range certs {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return durable.WriteFileAtomic(path, buf, 0o644)
}

// WritePrivateKey writes a key as PKCS#8 PEM (mode 0600), atomically.
func WritePrivateKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode private key: %w", err)
	}
	return durable.WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// ReadCertificate reads the first PEM certificate in path.
func ReadCertificate(path string) (*x509.Certificate, error) {
	certs, err := ReadCertificates(path)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ReadCertificates reads every PEM certificate in path.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	certs, err := ParsePEMCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("parse certificate in %s: %w", path, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return certs, nil
}

// ParsePEMCertificates parses every CERTIFICATE block in data, skipping
// blocks of other types.
func ParsePEMCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}

// ReadPrivateKey reads a PKCS#8 (or SEC1 EC) PEM private key.
func ReadPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM private key", path)
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: key type %T cannot sign", path, k)
		}
		return s, nil
	}
	k, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key in %s: %w", path, err)
	}
	return k, nil
}
