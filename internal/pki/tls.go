package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// ServerTLS is the collector listener's configuration: TLS 1.3 only, client
// certificates optional (enrollment has none) but verified against roots
// whenever presented.
func ServerTLS(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    roots,
	}
}

// ServerTLSRenewing is ServerTLS with the certificate that get returns at
// each handshake, so that it can be replaced while the server runs.
func ServerTLSRenewing(get func(*tls.ClientHelloInfo) (*tls.Certificate, error), roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: get,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      roots,
	}
}

// ChainValidity is when every certificate of a chain is valid: from the
// latest NotBefore to the earliest NotAfter.
func ChainValidity(chain []*x509.Certificate) (notBefore, notAfter time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(notBefore) {
			notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notBefore, notAfter
}

// ClientTLS is the configuration for a client (agent, gateway, admin) that
// already trusts the collector CA. The collector is recognised by its SPIFFE
// ID, not its host name, so agents can reach it by any address.
func ClientTLS(roots *x509.CertPool, trustDomain string, clientCert *tls.Certificate) *tls.Config {
	want := SPIFFEID(trustDomain, RoleCollector, "server").String()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyConnection: chain to roots and SPIFFE ID check
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyCollector(cs, roots, want)
		},
	}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	return cfg
}

// PinnedTLS is the configuration for an agent's first contact, when all it
// knows is the CA fingerprint from its enrollment token. The collector must
// present a CA certificate with exactly that fingerprint, and a serving
// certificate chaining to it. The pinned CA is stored in *pinned once the
// handshake succeeds.
func PinnedTLS(fingerprint string, pinned **x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyConnection: fingerprint pin, chain and SPIFFE ID check
		VerifyConnection: func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			var seen []string
			for _, c := range cs.PeerCertificates {
				fp := Fingerprint(c)
				if fp == fingerprint {
					ca = c
					break
				}
				if c.IsCA {
					seen = append(seen, fp)
				}
			}
			if ca == nil {
				return &PinError{Want: fingerprint, Got: seen}
			}
			td, err := caTrustDomain(ca)
			if err != nil {
				return err
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			if err := verifyCollector(cs, roots, SPIFFEID(td, RoleCollector, "server").String()); err != nil {
				return err
			}
			*pinned = ca
			return nil
		},
	}
}

// PinError reports a collector whose CA does not match the pinned fingerprint.
type PinError struct {
	Want string
	Got  []string
}

func (e *PinError) Error() string {
	got := "no CA certificate"
	if len(e.Got) > 0 {
		got = fmt.Sprintf("CA fingerprint %s", e.Got[0])
	}
	return fmt.Sprintf("collector presented %s, but the enrollment token pins CA fingerprint %s: the token was made for another collector, or the connection is being intercepted; ask your admin for a token from this collector", got, e.Want)
}

func caTrustDomain(ca *x509.Certificate) (string, error) {
	for _, u := range ca.URIs {
		if u.Scheme == "spiffe" && u.Host != "" {
			return u.Host, nil
		}
	}
	return "", errors.New("pinned CA certificate names no SPIFFE trust domain; it is not a Posture collector CA")
}

func verifyCollector(cs tls.ConnectionState, roots *x509.CertPool, want string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("collector presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("collector certificate does not chain to the trusted Posture CA: %w", err)
	}
	id, err := PeerID(leaf)
	if err != nil {
		return fmt.Errorf("collector certificate: %w", err)
	}
	if id.String() != want {
		return fmt.Errorf("collector certificate names %s, want %s", id, want)
	}
	return nil
}

// VerifiedPeerID returns the SPIFFE ID of a TLS client whose certificate the
// server verified, or nil when the client presented none.
func VerifiedPeerID(cs tls.ConnectionState) (*url.URL, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil, nil
	}
	return PeerID(cs.VerifiedChains[0][0])
}
