package ssf

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/go-jose/go-jose/v4"

	"github.com/posture-project/posture/internal/durable"
)

// KeyFile is the name of the signing key's file in the data directory.
const KeyFile = "ssf-signing.key"

// Key is the collector's key for Security Event Tokens: RSA 2048 signing
// with RS256, which every receiver (Okta among them) verifies. Each
// collector keeps its own in its data directory; their public keys are
// published in the database, so that the JWKS any of them serves has all.
type Key struct {
	private *rsa.PrivateKey
	kid     string
}

// LoadOrCreateKey reads the key from path, or creates it (mode 0600).
func LoadOrCreateKey(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("create the SSF signing key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("create the SSF signing key: %w", err)
		}
		if err := durable.WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, fmt.Errorf("write the SSF signing key: %w", err)
		}
		return newKey(k)
	case err != nil:
		return nil, fmt.Errorf("read the SSF signing key: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("the SSF signing key %s has mode %v: chmod 600 it", path, st.Mode().Perm())
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM key; remove it to have a new one made", path)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse the SSF signing key %s: %w", path, err)
	}
	k, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the SSF signing key %s is %T, not RSA", path, parsed)
	}
	return newKey(k)
}

func newKey(k *rsa.PrivateKey) (*Key, error) {
	jwk := jose.JSONWebKey{Key: k.Public(), Algorithm: string(jose.RS256), Use: "sig"}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("SSF signing key thumbprint: %w", err)
	}
	return &Key{private: k, kid: base64.RawURLEncoding.EncodeToString(tp)}, nil
}

// KID is the key's ID: its RFC 7638 thumbprint.
func (k *Key) KID() string { return k.kid }

// PublicJWK is the public key as a JSON Web Key.
func (k *Key) PublicJWK() ([]byte, error) {
	return json.Marshal(jose.JSONWebKey{Key: k.private.Public(), KeyID: k.kid, Algorithm: string(jose.RS256), Use: "sig"})
}

// signer signs SETs with the key.
func (k *Key) signer() (jose.Signer, error) {
	opts := (&jose.SignerOptions{}).WithType("secevent+jwt").WithHeader(jose.HeaderKey("kid"), k.kid)
	return jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: k.private}, opts)
}
