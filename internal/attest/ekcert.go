package attest

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/posture-project/posture/internal/pki"
)

// ErrEKCertificate reports an EK certificate that does not prove the EK
// was made by a trusted TPM manufacturer.
var ErrEKCertificate = errors.New("EK certificate not trusted")

var (
	// oidSubjectAltName is the X.509 subject alternative name extension.
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	// oidRSAESOAEP is the key algorithm some TPM vendors put in RSA EK
	// certificates instead of rsaEncryption; Go leaves such keys unparsed.
	oidRSAESOAEP = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
)

// VerifyEKCertificate checks that certDER chains to roots and that its
// public key is the key of ekPublic (a marshalled TPMT_PUBLIC), and returns
// the parsed certificate.
//
// EK certificates are unusual in two ways that it handles: their extended
// key usage is tcg-kp-EKCertificate (2.23.133.8.1), unknown to Go, so any
// usage is accepted; and their subject is empty with the TPM's manufacturer,
// model and version in a critical subject alternative name holding only a
// directoryName, which Go leaves unhandled, so such a SAN is accepted while
// any other unhandled critical extension still fails. Intermediate CAs must
// be in roots too, since TPMs do not carry them.
func VerifyEKCertificate(certDER []byte, ekPublic []byte, roots *x509.CertPool) (*x509.Certificate, error) {
	if roots == nil {
		return nil, fmt.Errorf("verify EK certificate: no EK roots configured (set ekcert_roots to your TPM vendors' CA certificates): %w", ErrEKCertificate)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("parse EK certificate: %w", err)
	}
	_, ekKey, err := parseEK(ekPublic)
	if err != nil {
		return nil, fmt.Errorf("verify EK certificate: %w", err)
	}
	certKey, err := certPublicKey(cert)
	if err != nil {
		return nil, fmt.Errorf("verify EK certificate: %w", err)
	}
	eq, ok := certKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(ekKey) {
		return nil, fmt.Errorf("verify EK certificate: its public key is not the EK the device presented (the certificate belongs to another key or TPM): %w", ErrEKCertificate)
	}

	check := *cert
	check.UnhandledCriticalExtensions = nil
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) && sanIsDirectoryNamesOnly(cert) {
			continue
		}
		check.UnhandledCriticalExtensions = append(check.UnhandledCriticalExtensions, oid)
	}
	if len(check.UnhandledCriticalExtensions) > 0 {
		return nil, fmt.Errorf("verify EK certificate: unknown critical extension %v: %w", check.UnhandledCriticalExtensions, ErrEKCertificate)
	}
	if _, err := check.Verify(x509.VerifyOptions{
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("verify EK certificate issued by %q (add the TPM vendor's root and intermediate CA certificates to ekcert_roots, or pin the EK hash): %w: %w", cert.Issuer.String(), ErrEKCertificate, err)
	}
	return cert, nil
}

// certPublicKey is the certificate's public key, including RSA keys
// labelled id-RSAES-OAEP.
func certPublicKey(cert *x509.Certificate) (crypto.PublicKey, error) {
	if cert.PublicKey != nil {
		return cert.PublicKey, nil
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if rest, err := asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("EK certificate public key is malformed: %w", ErrEKCertificate)
	}
	if !spki.Algorithm.Algorithm.Equal(oidRSAESOAEP) {
		return nil, fmt.Errorf("EK certificate public key algorithm %v is not supported: %w", spki.Algorithm.Algorithm, ErrEKCertificate)
	}
	key, err := x509.ParsePKCS1PublicKey(spki.PublicKey.RightAlign())
	if err != nil {
		return nil, fmt.Errorf("EK certificate RSA-OAEP public key: %w", err)
	}
	return key, nil
}

// sanIsDirectoryNamesOnly reports whether the certificate's SAN extension
// is a well-formed GeneralNames holding only directoryName entries, the
// form the TCG EK Credential Profile prescribes.
func sanIsDirectoryNamesOnly(cert *x509.Certificate) bool {
	const tagDirectoryName = 4
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &seq)
		if err != nil || len(rest) > 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence {
			return false
		}
		names := seq.Bytes
		if len(names) == 0 {
			return false
		}
		for len(names) > 0 {
			var gn asn1.RawValue
			names, err = asn1.Unmarshal(names, &gn)
			if err != nil || gn.Class != asn1.ClassContextSpecific || gn.Tag != tagDirectoryName || !gn.IsCompound {
				return false
			}
			var name pkix.RDNSequence
			if rest, err := asn1.Unmarshal(gn.Bytes, &name); err != nil || len(rest) > 0 {
				return false
			}
		}
		return true
	}
	return false
}

// LoadRoots reads EK root certificates for ekcert_roots: a file with one
// or more PEM certificates (or one DER certificate), or a directory whose
// .pem, .crt, .cer and .der files each hold such certificates, the form
// TPM vendors publish them in. It fails when it finds no certificate.
func LoadRoots(path string) (*x509.CertPool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load EK roots: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("load EK roots: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if e.Type().IsRegular() && slices.Contains([]string{".pem", ".crt", ".cer", ".der"}, ext) {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	}
	pool := x509.NewCertPool()
	n := 0
	for _, f := range files {
		certs, err := readCertificates(f)
		if err != nil {
			return nil, fmt.Errorf("load EK roots: %w", err)
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
		n += len(certs)
	}
	if n == 0 {
		return nil, fmt.Errorf("load EK roots: no certificates in %s (want PEM or DER files ending in .pem, .crt, .cer or .der)", path)
	}
	return pool, nil
}

func readCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		certs, err := x509.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("%s: neither PEM nor DER certificates: %w", path, err)
		}
		return certs, nil
	}
	certs, err := pki.ParsePEMCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}
