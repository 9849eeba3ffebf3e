package collector

import (
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"github.com/posture-project/posture/internal/pki"
)

// servingLifetime is how long a serving certificate is valid; it is
// replaced once two thirds of that have passed, so a collector that runs
// for months never presents an expired one.
const servingLifetime = 90 * 24 * time.Hour

// servingCert issues the collector's TLS serving certificate from its CA
// and issues a new one, with a new key, before the old one expires. New
// connections get the new certificate; open ones keep theirs.
type servingCert struct {
	ca    *pki.CA
	hosts []string
	now   func() time.Time

	mu  sync.Mutex
	cur *tls.Certificate
}

func newServingCert(ca *pki.CA, hosts []string) (*servingCert, error) {
	s := &servingCert{ca: ca, hosts: hosts, now: time.Now}
	if _, err := s.get(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// get is tls.Config.GetCertificate.
func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.cur != nil {
		leaf := s.cur.Leaf
		if now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)) {
			return s.cur, nil
		}
	}
	cert, err := s.issue()
	if err != nil {
		if s.cur != nil && now.Before(s.cur.Leaf.NotAfter) {
			return s.cur, nil // still valid: try again at the next handshake
		}
		return nil, err
	}
	s.cur = cert
	return cert, nil
}

func (s *servingCert) issue() (*tls.Certificate, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, fmt.Errorf("serving key: %w", err)
	}
	cert, err := s.ca.IssueServer(key.Public(), s.hosts, servingLifetime)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{cert.Raw, s.ca.Cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}
