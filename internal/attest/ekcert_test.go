package attest_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/testtools"
)

var (
	oidEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidSAN           = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufac    = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel      = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion    = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// tpmSAN is the subject alternative name of the TCG EK Credential
// Profile: a critical extension with only a directoryName naming the TPM.
func tpmSAN(t testing.TB) pkix.Extension {
	t.Helper()
	name, err := asn1.Marshal(pkix.RDNSequence{
		{{Type: oidTPMManufac, Value: "id:00001014"}},
		{{Type: oidTPMModel, Value: "test"}},
		{{Type: oidTPMVersion, Value: "id:00000001"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	gn, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: gn})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidSAN, Critical: true, Value: seq}
}

// issueEK makes an EK certificate shaped like a TPM vendor's: empty
// subject, tcg-kp-EKCertificate usage, the critical directoryName SAN.
func (ca *testCA) issueEK(t testing.TB, ekPub crypto.PublicKey, extra ...pkix.Extension) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidEKCertificate},
		BasicConstraintsValid: true,
		ExtraExtensions:       append([]pkix.Extension{tpmSAN(t)}, extra...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, ekPub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// writeNV stores data in an NV index the way TPM manufacturing does:
// defined by the platform, readable with an empty index password.
func writeNV(t testing.TB, tpm transport.TPM, index uint32, data []byte) {
	t.Helper()
	pub := tpm2.TPMSNVPublic{
		NVIndex: tpm2.TPMHandle(index),
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			PPWrite: true, PPRead: true, OwnerRead: true, AuthRead: true,
			NoDA: true, PlatformCreate: true, NT: tpm2.TPMNTOrdinary,
		},
		DataSize: uint16(len(data)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHPlatform, PublicInfo: tpm2.New2B(pub)}).Execute(tpm); err != nil {
		t.Fatalf("NV_DefineSpace %#x: %v", index, err)
	}
	rp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 512 {
		chunk := data[off:min(off+512, len(data))]
		if _, err := (tpm2.NVWrite{
			AuthHandle: tpm2.TPMRHPlatform,
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: rp.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: chunk},
			Offset:     uint16(off),
		}).Execute(tpm); err != nil {
			t.Fatalf("NV_Write %#x at %d: %v", index, off, err)
		}
	}
}

func ekPublicKey(t testing.TB, tpm transport.TPM, template tpm2.TPMTPublic) ([]byte, crypto.PublicKey) {
	t.Helper()
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(template)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(tpm)
	pub, err := ek.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	return ek.OutPublic.Bytes(), key
}

func TestEKCertificateFromNV(t *testing.T) {
	for _, tc := range []struct {
		name     string
		index    uint32
		template tpm2.TPMTPublic
		other    tpm2.TPMTPublic
	}{
		{"RSA EK", 0x01c00002, tpm2.RSAEKTemplate, tpm2.ECCEKTemplate},
		{"ECC EK", 0x01c0000a, tpm2.ECCEKTemplate, tpm2.RSAEKTemplate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tpm, sim := testtools.Simulator(t, 11)
			defer sim.Close()
			ekPub, ekKey := ekPublicKey(t, tpm, tc.template)
			otherPub, _ := ekPublicKey(t, tpm, tc.other)

			ca := newTestCA(t, "Test TPM Manufacturer Root")
			cert := ca.issueEK(t, ekKey)
			// Vendors leave padding after the certificate in NV.
			writeNV(t, tpm, tc.index, append(bytes.Clone(cert), make([]byte, 37)...))

			id, err := identity.NewTPM(tpm, t.TempDir(), identity.TPMOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(id.EKCertificate(), cert) {
				t.Fatalf("EKCertificate = %d bytes, want the %d-byte certificate written to NV %#x", len(id.EKCertificate()), len(cert), tc.index)
			}
			if !bytes.Equal(id.EKPublic(), ekPub) {
				t.Fatal("NewTPM chose an EK that does not match the certificate's template")
			}

			unknownCritical := ca.issueEK(t, ekKey, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{0x05, 0x00}})
			for _, v := range []struct {
				name    string
				cert    []byte
				ek      []byte
				roots   *x509.CertPool
				wantErr string
			}{
				{"accepted by its CA", cert, id.EKPublic(), ca.pool(), ""},
				{"another CA", cert, id.EKPublic(), newTestCA(t, "Other Root").pool(), "add the TPM vendor's root"},
				{"other EK presented", cert, otherPub, ca.pool(), "not the EK the device presented"},
				{"unknown critical extension", unknownCritical, id.EKPublic(), ca.pool(), "unknown critical extension"},
				{"no roots", cert, id.EKPublic(), nil, "no EK roots configured"},
				{"not a certificate", []byte("junk"), id.EKPublic(), ca.pool(), "parse EK certificate"},
			} {
				t.Run(v.name, func(t *testing.T) {
					got, err := attest.VerifyEKCertificate(v.cert, v.ek, v.roots)
					if v.wantErr == "" {
						if err != nil {
							t.Fatalf("VerifyEKCertificate: %v", err)
						}
						if !bytes.Equal(got.Raw, cert) {
							t.Error("returned another certificate")
						}
						return
					}
					if err == nil || !strings.Contains(err.Error(), v.wantErr) {
						t.Fatalf("err = %v, want %q", err, v.wantErr)
					}
					if got != nil {
						t.Error("returned a certificate with an error")
					}
				})
			}

			// The pinned hash is the hash of the certificate's key.
			h, err := attest.EKPublicHash(id.EKPublic())
			if err != nil {
				t.Fatal(err)
			}
			parsed, _ := x509.ParseCertificate(cert)
			want := sha256.Sum256(parsed.RawSubjectPublicKeyInfo)
			if h != hex.EncodeToString(want[:]) {
				t.Errorf("EKPublicHash = %s, want SHA-256 of the certificate's SubjectPublicKeyInfo %x", h, want)
			}
		})
	}
}

func TestMakeCredentialErrors(t *testing.T) {
	d := newDevice(t, 1, identity.TPMOptions{})
	ak := d.ak(t)
	for _, tc := range []struct {
		name    string
		ek      []byte
		name2   []byte
		secret  []byte
		wantErr error
		wantMsg string
	}{
		{"AK is not an EK", d.id.AKPublic(), ak.Name, []byte("s"), attest.ErrEKAttributes, "not a restricted decryption key"},
		{"secret too long", d.id.EKPublic(), ak.Name, make([]byte, 33), nil, "want 1 to 32"},
		{"empty secret", d.id.EKPublic(), ak.Name, nil, nil, "want 1 to 32"},
		{"no AK name", d.id.EKPublic(), nil, []byte("s"), nil, "AK name is empty"},
		{"garbage EK", []byte{1, 2, 3}, ak.Name, []byte("s"), nil, "parse EK public area"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := attest.MakeCredential(tc.ek, tc.name2, tc.secret)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %q", err, tc.wantMsg)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
	if _, err := attest.EKPublicHash(d.id.AKPublic()); !errors.Is(err, attest.ErrEKAttributes) {
		t.Errorf("EKPublicHash(AK) err = %v, want ErrEKAttributes", err)
	}
}

func TestLoadRoots(t *testing.T) {
	a, b := newTestCA(t, "A"), newTestCA(t, "B")
	pemOf := func(cs ...*testCA) []byte {
		var out []byte
		for _, c := range cs {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
		}
		return out
	}
	write := func(dir, name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bundleDir := t.TempDir()
	bundle := write(bundleDir, "roots.pem", pemOf(a, b))
	der := write(bundleDir, "a.der", a.cert.Raw)
	mixed := t.TempDir()
	write(mixed, "a.crt", a.cert.Raw)
	write(mixed, "b.PEM", pemOf(b))
	write(mixed, "README.txt", []byte("Vendor CA certificates"))
	empty := t.TempDir()
	write(empty, "notes.txt", []byte("nothing"))
	bad := t.TempDir()
	write(bad, "broken.cer", []byte("not a certificate"))

	for _, tc := range []struct {
		name    string
		path    string
		want    []*testCA
		wantErr string
	}{
		{"PEM bundle", bundle, []*testCA{a, b}, ""},
		{"single DER file", der, []*testCA{a}, ""},
		{"directory of DER and PEM", mixed, []*testCA{a, b}, ""},
		{"directory without certificates", empty, nil, "no certificates"},
		{"broken certificate file", bad, nil, "broken.cer"},
		{"missing path", filepath.Join(empty, "nope"), nil, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := attest.LoadRoots(tc.path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, ca := range tc.want {
				leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				cert, _ := x509.ParseCertificate(ca.issueEK(t, leafKey.Public()))
				if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil && !strings.Contains(err.Error(), "unhandled critical extension") {
					t.Errorf("pool does not hold %s: %v", ca.cert.Subject.CommonName, err)
				}
			}
		})
	}
}
