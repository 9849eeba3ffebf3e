package attest_test

import (
	"crypto/ecdsa"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
)

func TestParseAK(t *testing.T) {
	d := newDevice(t, 1, identity.TPMOptions{})
	good := d.id.AKPublic()

	// A key the TPM really made, but unrestricted: it would sign any
	// digest, including one of a forged TPMS_ATTEST.
	srk := d.srk(t)
	defer d.flush(srk.ObjectHandle)
	unrestricted, err := tpm2.Create{
		ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:    tpm2.TPMAlgECC,
			NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{
				FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
				UserWithAuth: true, SignEncrypt: true,
			},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Scheme: tpm2.TPMTECCScheme{
					Scheme:  tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
				CurveID: tpm2.TPMECCNistP256,
			}),
		}),
	}.Execute(d.tpm)
	if err != nil {
		t.Fatal(err)
	}

	// mutate returns the good AK with one field changed.
	mutate := func(f func(p *tpm2.TPMTPublic)) []byte {
		p, err := tpm2.Unmarshal[tpm2.TPMTPublic](good)
		if err != nil {
			t.Fatal(err)
		}
		f(p)
		return tpm2.Marshal(*p)
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		wantErr string // empty: accepted
	}{
		{"AK made by NewTPM", good, ""},
		{"non-restricted key made by the TPM", unrestricted.OutPublic.Bytes(), "restricted is clear"},
		{"fixedTPM clear", mutate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }), "fixedTPM is clear"},
		{"fixedParent clear", mutate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false }), "fixedParent is clear"},
		{"imported key", mutate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false }), "sensitiveDataOrigin is clear"},
		{"decrypt set", mutate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }), "decrypt is set"},
		{"sign clear", mutate(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false }), "sign is clear"},
		{"SHA-1 name", mutate(func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }), "nameAlg is SHA1"},
		{"P-384", mutate(func(p *tpm2.TPMTPublic) {
			e, _ := p.Parameters.ECCDetail()
			e.CurveID = tpm2.TPMECCNistP384
		}), "curve"},
		{"ECDSA-SHA384", mutate(func(p *tpm2.TPMTPublic) {
			e, _ := p.Parameters.ECCDetail()
			e.Scheme.Details = tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA384})
		}), "hash is not SHA256"},
		{"point off the curve", mutate(func(p *tpm2.TPMTPublic) {
			pt, _ := p.Unique.ECC()
			pt.X.Buffer[31] ^= 1
		}), "not a point on P-256"},
		{"RSA EK as AK", d.id.EKPublic(), "type is RSA"},
		{"trailing bytes", append(append([]byte(nil), good...), 0), "trailing"},
		{"truncated", good[:len(good)-3], "parse AK"},
		{"empty", nil, "parse AK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ak, err := attest.ParseAK(tc.in)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseAK: %v", err)
				}
				if _, ok := ak.Public.(*ecdsa.PublicKey); !ok {
					t.Errorf("Public is %T", ak.Public)
				}
				if len(ak.Name) != 34 || ak.Name[0] != 0x00 || ak.Name[1] != 0x0b {
					t.Errorf("Name = %x, want SHA-256 nameAlg and digest", ak.Name)
				}
				return
			}
			if err == nil {
				t.Fatal("ParseAK accepted it")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want it to say %q", err, tc.wantErr)
			}
			if strings.Contains(tc.wantErr, "clear") || strings.Contains(tc.wantErr, "set") {
				if !errors.Is(err, attest.ErrAKAttributes) {
					t.Errorf("err = %v, want ErrAKAttributes", err)
				}
			}
		})
	}
}
