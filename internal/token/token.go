// Package token encodes enrollment tokens. A token carries everything an
// agent needs for first contact: the collector's addresses (several when
// collectors share a database), the fingerprint of its CA (which the agent
// pins), and a random secret the collector stores only as a hash.
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
	// Addr is the collector's address; Others are further collectors
	// sharing its database, which an agent moves to when one is lost.
	// Agents that know only Addr still enroll with the first.
	Addr        string   `json:"a"`
	Others      []string `json:"o,omitempty"`
	Fingerprint string   `json:"f"`
	Secret      string   `json:"s"`
}

// maxAddrs bounds the collector addresses a token carries.
const maxAddrs = 16

// New makes a token for the collectors at addrs (at least one) with a
// fresh 256-bit secret.
func New(addrs []string, fingerprint string) (Token, error) {
	if len(addrs) == 0 {
		return Token{}, errors.New("make token: no collector address")
	}
	if len(addrs) > maxAddrs {
		addrs = addrs[:maxAddrs]
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return Token{}, fmt.Errorf("make token secret: %w", err)
	}
	t := Token{Addr: addrs[0], Fingerprint: fingerprint, Secret: base64.RawURLEncoding.EncodeToString(b)}
	if len(addrs) > 1 {
		t.Others = addrs[1:]
	}
	return t, nil
}

// Addrs lists the collector addresses, the first one first.
func (t Token) Addrs() []string { return append([]string{t.Addr}, t.Others...) }

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
	if len(t.Others) >= maxAddrs {
		return Token{}, fmt.Errorf("%w: %d collector addresses, at most %d", ErrFormat, len(t.Others)+1, maxAddrs)
	}
	for _, a := range t.Others {
		if a == "" {
			return Token{}, fmt.Errorf("%w: an empty collector address", ErrFormat)
		}
	}
	if fp, err := hex.DecodeString(t.Fingerprint); err != nil || len(fp) != sha256.Size {
		return Token{}, fmt.Errorf("%w: CA fingerprint is not a SHA-256 hex digest", ErrFormat)
	}
	return t, nil
}
