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
	a := Digest([]byte("n"), []byte("r"))
	b := EnrollDigest([]byte("n"), []byte("r"), nil)
	if string(a) == string(b) {
		t.Error("report and enrollment digests coincide for the same input")
	}
}
