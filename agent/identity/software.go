// Package identity holds the keys that prove which device a report comes
// from. Software is an ECDSA P-256 key in a 0600 file: it works everywhere
// and says so, since a file can be copied where a TPM key cannot.
package identity

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// KindSoftware names the software identity in reports and on the wire.
const KindSoftware = "software"

// Software is a report-signing key kept in a file.
type Software struct {
	key    *ecdsa.PrivateKey
	pubDER []byte
}

// LoadOrCreateSoftware loads the key at path, or creates it (mode 0600).
func LoadOrCreateSoftware(path string) (*Software, error) {
	signer, err := pki.ReadPrivateKey(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		key, err := pki.NewKey()
		if err != nil {
			return nil, fmt.Errorf("create identity key: %w", err)
		}
		if err := pki.WritePrivateKey(path, key); err != nil {
			return nil, err
		}
		return newSoftware(key)
	case err != nil:
		return nil, fmt.Errorf("load identity key: %w", err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("identity key %s is %T, want ECDSA P-256", path, signer)
	}
	return newSoftware(key)
}

func newSoftware(key *ecdsa.PrivateKey) (*Software, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("encode identity public key: %w", err)
	}
	return &Software{key: key, pubDER: der}, nil
}

// Kind is "software".
func (s *Software) Kind() string { return KindSoftware }

// PublicKeyDER is the PKIX DER public key; the device ID derives from it.
func (s *Software) PublicKeyDER() []byte { return s.pubDER }

// Claim is what the agent presents at enrollment.
func (s *Software) Claim() *posturev1.IdentityClaim {
	return &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Software{Software: &posturev1.SoftwareIdentity{PublicKey: s.pubDER}}}
}

// Answer proves possession of the key for an enrollment challenge.
func (s *Software) Answer(ch *posturev1.EnrollChallenge, tlsKey []byte) (*posturev1.EnrollAnswer, error) {
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, envelope.EnrollDigest(ch.GetNonce(), tlsKey, s.pubDER))
	if err != nil {
		return nil, fmt.Errorf("answer enrollment challenge: %w", err)
	}
	return &posturev1.EnrollAnswer{Signature: sig}, nil
}

// AnswerRenewal proves, for a certificate renewal, that this identity asks
// for tlsKey (PKIX DER) to be certified, bound to the collector's nonce.
func (s *Software) AnswerRenewal(nonce, tlsKey []byte) (*posturev1.RenewAnswer, error) {
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, envelope.RenewDigest(nonce, tlsKey))
	if err != nil {
		return nil, fmt.Errorf("answer renewal challenge: %w", err)
	}
	return &posturev1.RenewAnswer{TlsPublicKey: tlsKey, Signature: sig}, nil
}

// Seal signs report bytes bound to a collector nonce.
func (s *Software) Seal(nonce, report []byte) (*posturev1.SignedReport, error) {
	return envelope.SignSoftware(s.key, nonce, report)
}
