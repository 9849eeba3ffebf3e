package pki

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

// CertTag is what the certificate_tag of watch events documents, so that
// gateways in any language compute it alike.
func TestCertTag(t *testing.T) {
	key := sha256.Sum256([]byte("SubjectPublicKeyInfo DER"))
	first8 := func(b []byte) uint64 { s := sha256.Sum256(b); return binary.BigEndian.Uint64(s[:8]) }
	withKey := first8(append([]byte("posture.v1.certificate\x001f\x00"), key[:]...))
	if got := CertTag("1f", key[:]); got != withKey {
		t.Errorf("CertTag with a key = %x, want %x", got, withKey)
	}
	if got, want := CertTag("1f", nil), first8([]byte("1f")); got != want {
		t.Errorf("CertTag without a key = %x, want %x", got, want)
	}
	other := sha256.Sum256([]byte("another key"))
	for _, tt := range []struct {
		name   string
		tag    uint64
		serial string
		key    []byte
		want   bool
	}{
		{"serial and key", withKey, "1f", key[:], true},
		{"serial with another key", withKey, "1f", other[:], false},
		{"serial alone, key recorded", withKey, "1f", nil, false},
		{"another serial", withKey, "20", key[:], false},
		{"key not recorded, any key", CertTag("1f", nil), "1f", other[:], true},
		{"key not recorded, serial alone", CertTag("1f", nil), "1f", nil, true},
		{"key not recorded, another serial", CertTag("1f", nil), "20", key[:], false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := CertMatches(tt.tag, tt.serial, tt.key); got != tt.want {
				t.Errorf("CertMatches = %v, want %v", got, tt.want)
			}
		})
	}
}
