package attest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// Some vendors label the RSA EK key id-RSAES-OAEP, which Go leaves unparsed.
func TestCertPublicKeyRSAESOAEP(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}{
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidRSAESOAEP},
		PublicKey: asn1.BitString{Bytes: x509.MarshalPKCS1PublicKey(&key.PublicKey), BitLength: 8 * len(x509.MarshalPKCS1PublicKey(&key.PublicKey))},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := certPublicKey(&x509.Certificate{RawSubjectPublicKeyInfo: spki})
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(got) {
		t.Error("parsed key differs")
	}

	if _, err := certPublicKey(&x509.Certificate{RawSubjectPublicKeyInfo: spki[:len(spki)-10]}); err == nil {
		t.Error("a corrupted key parsed")
	}
}

func TestSANIsDirectoryNamesOnly(t *testing.T) {
	dirName := func() []byte {
		name, _ := asn1.Marshal(pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:1"}}})
		gn, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name})
		return gn
	}
	dns, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("example.com")})
	seq := func(items ...[]byte) []byte {
		var b []byte
		for _, i := range items {
			b = append(b, i...)
		}
		out, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: b})
		return out
	}
	for _, tc := range []struct {
		name  string
		value []byte
		want  bool
	}{
		{"one directoryName", seq(dirName()), true},
		{"two directoryNames", seq(dirName(), dirName()), true},
		{"directoryName and dNSName", seq(dirName(), dns), false},
		{"empty", seq(), false},
		{"garbage", []byte{0x30, 0x05, 0x01}, false},
		{"trailing bytes", append(seq(dirName()), 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &x509.Certificate{Extensions: []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: tc.value}}}
			if got := sanIsDirectoryNamesOnly(c); got != tc.want {
				t.Errorf("sanIsDirectoryNamesOnly = %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzVerifyQuoteParse(f *testing.F) {
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18}, []byte{0x00, 0x18, 0x00, 0x0b})
	f.Fuzz(func(t *testing.T, attest, sig []byte) {
		// Hostile bytes must give errors, never panics.
		_, _ = unmarshalExact[tpm2.TPMSAttest](attest)
		_, _ = unmarshalExact[tpm2.TPMTSignature](sig)
		_, _ = ParseAK(attest)
	})
}
