// Package token encodes enrollment tokens. A token carries everything an
// agent needs for first contact: the collector's address, the fingerprint of
// its CA (which the agent pins), and a random secret the collector stores
// only as a hash.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

const prefix = "PT1."

// Token is a decoded enrollment token.
type Token struct {
	Addr        string `json:"a"`
	Fingerprint string `json:"f"`
	Secret      string `json:"s"`
}

// New makes a token with a fresh 256-bit secret.
func New(addr, fingerprint string) (Token, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return Token{}, fmt.Errorf("make token secret: %w", err)
	}
	return Token{Addr: addr, Fingerprint: fingerprint, Secret: base64.RawURLEncoding.EncodeToString(b)}, nil
}

// String encodes the token for copying into `posture-agent enroll --token`.
func (t Token) String() string {
	b, _ := json.Marshal(t) // a struct of strings always marshals
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// Hash is what the collector stores: SHA-256 of the secret.
func Hash(secret string) []byte {
	s := sha256.Sum256([]byte(secret))
	return s[:]
}

// ErrFormat reports a string that is not an enrollment token.
var ErrFormat = errors.New("not a Posture enrollment token (it should start with PT1.); copy the whole token printed by `posture-collector token create`")

// Parse decodes a token string.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, prefix) {
		return Token{}, ErrFormat
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, prefix))
	if err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	var t Token
	if err := json.Unmarshal(raw, &t); err != nil {
		return Token{}, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if t.Addr == "" || t.Secret == "" {
		return Token{}, fmt.Errorf("%w: collector address or secret missing", ErrFormat)
	}
	if fp, err := hex.DecodeString(t.Fingerprint); err != nil || len(fp) != sha256.Size {
		return Token{}, fmt.Errorf("%w: CA fingerprint is not a SHA-256 hex digest", ErrFormat)
	}
	return t, nil
}
