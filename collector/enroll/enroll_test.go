package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/posture-project/posture/collector/fault"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A software identity key gets one device ID: another encoding of the same
// key, which the PKIX parser would accept, is refused.
func TestSoftwareKeyCanonical(t *testing.T) {
	c := New(Config{})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	cl, err := c.checkClaim(context.Background(), &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Software{Software: &posturev1.SoftwareIdentity{PublicKey: der}}})
	if err != nil || cl.deviceID != DeviceID(der) {
		t.Fatalf("canonical key: %v, %v", cl, err)
	}
	// The same key with a NULL appended inside the outer SEQUENCE.
	if der[0] != 0x30 || int(der[1]) != len(der)-2 || der[1] > 0x7d {
		t.Fatalf("unexpected PKIX encoding % x", der[:2])
	}
	other := append([]byte{0x30, der[1] + 2}, der[2:]...)
	other = append(other, 0x05, 0x00)
	// Refused either way; by the canonical check when the parser takes it.
	_, parseErr := x509.ParsePKIXPublicKey(other)
	_, err = c.checkClaim(context.Background(), &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Software{Software: &posturev1.SoftwareIdentity{PublicKey: other}}})
	r, ok := fault.As(err)
	if !ok || r.Reason != "malformed" || (parseErr == nil && !strings.Contains(r.Msg, "canonical")) {
		t.Errorf("another encoding of the same key: %v; want a malformed refusal", err)
	}
}
