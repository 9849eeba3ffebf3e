package envelope

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func TestSignVerify(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rep := &posturev1.PostureReport{DeviceId: "d1", Seq: 7}
	body, _ := proto.Marshal(rep)
	nonce := []byte("nonce-123")

	sr, err := SignSoftware(key, nonce, body)
	if err != nil {
		t.Fatal(err)
	}
	v, err := VerifySoftware(&key.PublicKey, sr)
	if err != nil {
		t.Fatalf("VerifySoftware: %v", err)
	}
	if diff := cmp.Diff(rep, v.Report, protocmp.Transform()); diff != "" {
		t.Errorf("verified report differs (-want +got):\n%s", diff)
	}
	if string(v.Digest) != string(Digest(nonce, body)) || string(v.Body) != string(body) {
		t.Error("verified digest or body differ from what was signed")
	}

	tests := []struct {
		name string
		mod  func(*posturev1.SignedReport)
		key  *ecdsa.PublicKey
		want error
	}{
		{"other key", func(*posturev1.SignedReport) {}, &other.PublicKey, ErrBadSignature},
		{"other nonce", func(s *posturev1.SignedReport) { s.Nonce = []byte("nonce-124") }, &key.PublicKey, ErrBadSignature},
		{"body changed", func(s *posturev1.SignedReport) { s.Report = append([]byte{}, s.Report...); s.Report[1] ^= 1 }, &key.PublicKey, ErrBadSignature},
		{"no proof", func(s *posturev1.SignedReport) { s.Proof = nil }, &key.PublicKey, ErrBadSignature},
		{"no nonce", func(s *posturev1.SignedReport) { s.Nonce = nil }, &key.PublicKey, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := proto.Clone(sr).(*posturev1.SignedReport)
			tt.mod(c)
			if _, err := VerifySoftware(tt.key, c); !errors.Is(err, tt.want) {
				t.Errorf("VerifySoftware = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDomainSeparation(t *testing.T) {
	digests := map[string][]byte{
		"report": Digest([]byte("n"), []byte("r")),
		"enroll": EnrollDigest([]byte("n"), []byte("r"), nil),
		"renew":  RenewDigest([]byte("n"), []byte("r")),
	}
	for a, da := range digests {
		for b, db := range digests {
			if a < b && string(da) == string(db) {
				t.Errorf("%s and %s digests coincide for the same input", a, b)
			}
		}
	}
}

// VerifyProof accepts a software identity's signature over exactly the
// digest, by exactly the enrolled key.
func TestVerifyProofSoftware(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := RenewDigest([]byte("nonce"), []byte("tls key"))
	sign := func(k *ecdsa.PrivateKey, d []byte) []byte {
		sig, err := ecdsa.SignASN1(rand.Reader, k, d)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	tests := []struct {
		name  string
		sig   []byte
		quote *posturev1.TPMQuote
		want  error
	}{
		{"signed by the key", sign(key, digest), nil, nil},
		{"signed by another key", sign(other, digest), nil, ErrBadSignature},
		{"another nonce", sign(key, RenewDigest([]byte("nonce2"), []byte("tls key"))), nil, ErrBadSignature},
		{"another TLS key", sign(key, RenewDigest([]byte("nonce"), []byte("tls key2"))), nil, ErrBadSignature},
		{"an enrollment signature", sign(key, EnrollDigest([]byte("nonce"), []byte("tls key"), nil)), nil, ErrBadSignature},
		{"a quote instead", nil, &posturev1.TPMQuote{Attest: []byte("a")}, ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyProof(&key.PublicKey, nil, digest, tt.sig, tt.quote)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("VerifyProof = %v, want %v", err, tt.want)
			}
		})
	}
	if err := VerifyProof(nil, nil, digest, sign(key, digest), nil); err == nil {
		t.Error("VerifyProof without a key accepted a proof")
	}
}
