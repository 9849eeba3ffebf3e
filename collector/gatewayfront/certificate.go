package gatewayfront

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/posture-project/posture/internal/pki"
)

// Limits on a forwarded certificate: a device certificate with the CA is
// about 1.5 KB of PEM, so anything near these is not one.
const (
	maxCertHeader = 32 << 10
	maxChainCerts = 8
)

// errNoCertificate means the gateway forwarded no client certificate.
var errNoCertificate = errors.New("no client certificate")

// decodeForwardedCert decodes a client certificate chain in the forms
// gateways forward it, leaf first:
//
//   - URL-encoded PEM: nginx $ssl_client_escaped_cert, Envoy's
//     source.certificate (percent-encoded, or query-encoded with '+' for
//     spaces);
//   - plain PEM;
//   - base64 DER without PEM armour, several joined by ',': Traefik's
//     X-Forwarded-Tls-Client-Cert (URL-escaped in some versions) and Caddy's
//     {http.request.tls.client.certificate_der_base64}.
func decodeForwardedCert(value string) ([]*x509.Certificate, error) {
	v := strings.TrimSpace(value)
	if v == "" {
		return nil, errNoCertificate
	}
	if len(v) > maxCertHeader {
		return nil, fmt.Errorf("forwarded certificate is %d bytes, more than the %d a certificate chain needs", len(v), maxCertHeader)
	}
	if strings.Contains(v, "%") {
		unescape := url.PathUnescape
		// Query encoding turns spaces into '+' and escapes a literal '+' as
		// %2B, so a '+' in the armour line means the whole text is query encoded.
		if strings.Contains(v, "BEGIN+CERTIFICATE") {
			unescape = url.QueryUnescape
		}
		u, err := unescape(v)
		if err != nil {
			return nil, fmt.Errorf("forwarded certificate is not valid URL encoding: %w", err)
		}
		v = strings.TrimSpace(u)
	}
	var ders [][]byte
	if strings.HasPrefix(v, "-----BEGIN") {
		rest := []byte(v)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type == "CERTIFICATE" {
				ders = append(ders, block.Bytes)
			}
		}
		if len(ders) == 0 {
			return nil, errors.New("forwarded certificate looks like PEM but holds no CERTIFICATE block")
		}
	} else {
		for i, part := range strings.Split(v, ",") {
			der, err := decodeBase64(part)
			if err != nil {
				return nil, fmt.Errorf("forwarded certificate %d is neither PEM nor base64 DER: %w", i+1, err)
			}
			ders = append(ders, der)
		}
	}
	if len(ders) > maxChainCerts {
		return nil, fmt.Errorf("forwarded chain has %d certificates, more than %d", len(ders), maxChainCerts)
	}
	certs := make([]*x509.Certificate, 0, len(ders))
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("forwarded certificate %d cannot be parsed: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// decodeBase64 accepts standard or URL alphabet, with or without padding,
// and ignores whitespace that line-wrapping proxies leave behind.
func decodeBase64(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n', '=':
			return -1
		case '-':
			return '+'
		case '_':
			return '/'
		}
		return r
	}, s)
	if s == "" {
		return nil, errors.New("empty")
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// verifier checks client certificates against the collector CA and names
// them by their SPIFFE ID. Decoding, parsing and verifying a forwarded
// chain costs tens of microseconds, and gateways forward the same few
// certificates with every request, so results are cached by the hash of
// the input: a chain that verified against fixed roots stays verified
// until it expires (revocation is the Decider's business, asked every
// time). Failures are not cached.
type verifier struct {
	roots       *x509.CertPool
	trustDomain string
	now         func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]verified
}

// verified is a chain that verified, and what it names.
type verified struct {
	role, name          string
	cert                certRef // the leaf
	notBefore, notAfter time.Time
}

// certRef names a certificate as the collector recognises a device's:
// by its serial and the SHA-256 of its public key.
type certRef struct {
	serial string // hex
	key    []byte // pki.KeySHA256
}

// maxVerifiedCache bounds the cache; a fleet's active devices and gateways
// fit, and a flood of distinct certificates only evicts entries.
const maxVerifiedCache = 4096

// Cache key domains: a parsed chain, or a certificate header's text.
const (
	keyChain   = "chain\x00"
	keyEncoded = "encoded\x00"
)

func newVerifier(roots *x509.CertPool, trustDomain string) *verifier {
	return &verifier{roots: roots, trustDomain: trustDomain, now: time.Now, cache: make(map[[sha256.Size]byte]verified)}
}

func (v *verifier) lookup(key [sha256.Size]byte, now time.Time) (verified, bool) {
	v.mu.Lock()
	e, ok := v.cache[key]
	v.mu.Unlock()
	return e, ok && !now.Before(e.notBefore) && !now.After(e.notAfter)
}

func (v *verifier) store(key [sha256.Size]byte, e verified) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.cache[key]; !ok && len(v.cache) >= maxVerifiedCache {
		for k := range v.cache {
			delete(v.cache, k)
			break
		}
	}
	v.cache[key] = e
}

// identify verifies chain (leaf first) for client authentication against
// the roots and returns the role and name of its single SPIFFE ID in the
// trust domain.
func (v *verifier) identify(chain []*x509.Certificate) (role, name string, err error) {
	e, err := v.identifyChain(chain)
	return e.role, e.name, err
}

func (v *verifier) identifyChain(chain []*x509.Certificate) (verified, error) {
	if len(chain) == 0 {
		return verified{}, errNoCertificate
	}
	h := sha256.New()
	h.Write([]byte(keyChain))
	for _, c := range chain {
		h.Write(c.Raw) // DER is self-delimiting
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	now := v.now()
	if e, ok := v.lookup(key, now); ok {
		return e, nil
	}
	e, err := v.verify(chain, now)
	if err != nil {
		return verified{}, err
	}
	v.store(key, e)
	return e, nil
}

// identifyEncodedChain is identifyChain for a chain as a gateway forwarded
// it (see decodeForwardedCert).
func (v *verifier) identifyEncodedChain(value string) (verified, error) {
	h := sha256.New()
	h.Write([]byte(keyEncoded))
	h.Write([]byte(value))
	var key [sha256.Size]byte
	h.Sum(key[:0])
	now := v.now()
	if e, ok := v.lookup(key, now); ok {
		return e, nil
	}
	chain, err := decodeForwardedCert(value)
	if err != nil {
		return verified{}, err
	}
	e, err := v.verify(chain, now)
	if err != nil {
		return verified{}, err
	}
	v.store(key, e)
	return e, nil
}

// verify checks chain at now, without the cache.
func (v *verifier) verify(chain []*x509.Certificate, now time.Time) (verified, error) {
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return verified{}, fmt.Errorf("certificate %q (issued by %q) is not a valid client certificate from this collector's CA; enroll the device with this collector: %w", leaf.Subject.CommonName, leaf.Issuer.CommonName, err)
	}
	id, err := pki.PeerID(leaf)
	if err != nil {
		return verified{}, fmt.Errorf("certificate %q: %w", leaf.Subject.CommonName, err)
	}
	td, role, name, err := pki.ParseSPIFFEID(id.String())
	if err != nil {
		return verified{}, fmt.Errorf("certificate %q: %w", leaf.Subject.CommonName, err)
	}
	if td != v.trustDomain {
		return verified{}, fmt.Errorf("certificate names %s, of trust domain %q, not %q", id, td, v.trustDomain)
	}
	// The chain is valid only while every certificate in it is.
	e := verified{role: role, name: name, cert: certRef{serial: pki.SerialHex(leaf), key: pki.KeySHA256(leaf)}}
	e.notBefore, e.notAfter = pki.ChainValidity(chains[0])
	return e, nil
}

// device verifies chain as a device certificate and returns the device ID.
func (v *verifier) device(chain []*x509.Certificate) (string, error) {
	role, name, err := v.identify(chain)
	return v.asDevice(role, name, err)
}

// deviceEncoded is device for a chain as a gateway forwarded it.
func (v *verifier) deviceEncoded(value string) (string, error) {
	id, _, err := v.deviceCertEncoded(value)
	return id, err
}

// deviceCertEncoded is deviceEncoded that also names the certificate
// (serial and key), for the collector to tell whether it is the one it
// issued the device last.
func (v *verifier) deviceCertEncoded(value string) (id string, cert certRef, err error) {
	e, err := v.identifyEncodedChain(value)
	id, err = v.asDevice(e.role, e.name, err)
	return id, e.cert, err
}

func (v *verifier) asDevice(role, name string, err error) (string, error) {
	if err != nil {
		return "", err
	}
	if role != pki.RoleDevice {
		return "", fmt.Errorf("certificate names %s, a %s, not a device; the client must present the device certificate that posture-agent enrolled (device.crt in its state directory)",
			pki.SPIFFEID(v.trustDomain, role, name), role)
	}
	return name, nil
}

// deviceFromPrincipal takes the device ID from a SPIFFE ID a gateway saw
// in a client certificate it verified.
func (v *verifier) deviceFromPrincipal(principal string) (string, error) {
	td, role, name, err := pki.ParseSPIFFEID(principal)
	if err != nil {
		return "", fmt.Errorf("client principal: %w", err)
	}
	if td != v.trustDomain || role != pki.RoleDevice {
		return "", fmt.Errorf("client principal %s is not a device of trust domain %s (want spiffe://%s/device/<id>); the client must present its device certificate", principal, v.trustDomain, v.trustDomain)
	}
	return name, nil
}
