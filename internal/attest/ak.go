// Package attest verifies what a device's TPM produces: the attestation key
// (AK) public area, the endorsement key (EK) and its certificate, the
// credential challenge that proves the AK lives beside the EK, and quotes.
// It is the collector's side of agent/identity's TPM identity and is pure
// Go. Verifiers return only verified content.
package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// ErrAKAttributes reports an AK public area that is not a TPM-resident,
// restricted ECC P-256 ECDSA-SHA256 signing key.
var ErrAKAttributes = errors.New("AK is not a restricted TPM-resident ECC P-256 signing key")

// AK is a verified attestation key public area.
type AK struct {
	// Public is the *ecdsa.PublicKey that verifies quotes.
	Public crypto.PublicKey
	// Name is the TPM Name of the AK (nameAlg followed by the digest of the
	// public area), the form MakeCredential binds the secret to.
	Name []byte
	// Raw is the marshalled TPMT_PUBLIC as the device sent it.
	Raw []byte
}

// ParseAK parses a marshalled TPMT_PUBLIC and checks that it describes an
// attestation key: fixedTPM, fixedParent and sensitiveDataOrigin (the key
// was born in the TPM and cannot leave it), restricted and sign but not
// decrypt (it signs only TPM-generated structures), ECC NIST P-256 with the
// ECDSA-SHA256 scheme and a SHA-256 name. Errors name each wrong attribute
// and wrap ErrAKAttributes.
func ParseAK(tpmtPublic []byte) (*AK, error) {
	pub, err := unmarshalExact[tpm2.TPMTPublic](tpmtPublic)
	if err != nil {
		return nil, fmt.Errorf("parse AK public area (send the marshalled TPMT_PUBLIC): %w", err)
	}
	var wrong []string
	a := pub.ObjectAttributes
	for _, c := range []struct {
		ok   bool
		what string
	}{
		{pub.Type == tpm2.TPMAlgECC, fmt.Sprintf("type is %s, want ECC", algName(pub.Type))},
		{pub.NameAlg == tpm2.TPMAlgSHA256, fmt.Sprintf("nameAlg is %s, want SHA256", algName(pub.NameAlg))},
		{a.FixedTPM, "fixedTPM is clear"},
		{a.FixedParent, "fixedParent is clear"},
		{a.SensitiveDataOrigin, "sensitiveDataOrigin is clear (the key was imported, not generated in the TPM)"},
		{a.Restricted, "restricted is clear (the key could sign forged quotes)"},
		{a.SignEncrypt, "sign is clear"},
		{!a.Decrypt, "decrypt is set"},
	} {
		if !c.ok {
			wrong = append(wrong, c.what)
		}
	}
	if pub.Type == tpm2.TPMAlgECC {
		wrong = append(wrong, checkECCParms(pub)...)
	}
	if len(wrong) > 0 {
		return nil, fmt.Errorf("%s: %w", strings.Join(wrong, "; "), ErrAKAttributes)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("AK public key: %w", err)
	}
	ecKey, ok := key.(*ecdsa.PublicKey)
	if !ok || ecKey.Curve != elliptic.P256() {
		return nil, fmt.Errorf("AK public key is %T, want ECDSA P-256: %w", key, ErrAKAttributes)
	}
	if _, err := ecKey.ECDH(); err != nil {
		return nil, fmt.Errorf("AK public key is not a point on P-256: %w", err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, fmt.Errorf("AK name: %w", err)
	}
	return &AK{Public: ecKey, Name: bytes.Clone(name.Buffer), Raw: bytes.Clone(tpmtPublic)}, nil
}

func checkECCParms(pub *tpm2.TPMTPublic) []string {
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return []string{"ECC parameters missing"}
	}
	var wrong []string
	if parms.CurveID != tpm2.TPMECCNistP256 {
		wrong = append(wrong, fmt.Sprintf("curve is %#x, want NIST P-256", uint16(parms.CurveID)))
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		wrong = append(wrong, fmt.Sprintf("signing scheme is %s, want ECDSA", algName(parms.Scheme.Scheme)))
	} else if s, err := parms.Scheme.Details.ECDSA(); err != nil || s.HashAlg != tpm2.TPMAlgSHA256 {
		wrong = append(wrong, "signing scheme hash is not SHA256")
	}
	if parms.Symmetric.Algorithm != tpm2.TPMAlgNull {
		wrong = append(wrong, "symmetric algorithm is set, want NULL for a signing key")
	}
	return wrong
}

func algName(a tpm2.TPMAlgID) string {
	switch a {
	case tpm2.TPMAlgRSA:
		return "RSA"
	case tpm2.TPMAlgECC:
		return "ECC"
	case tpm2.TPMAlgSHA1:
		return "SHA1"
	case tpm2.TPMAlgSHA256:
		return "SHA256"
	case tpm2.TPMAlgSHA384:
		return "SHA384"
	case tpm2.TPMAlgECDSA:
		return "ECDSA"
	case tpm2.TPMAlgNull:
		return "NULL"
	}
	return fmt.Sprintf("algorithm %#x", uint16(a))
}

// unmarshalExact parses a TPM structure that must span all of b and
// re-encode to the same bytes, so what is verified is what was sent. It
// turns a panic in the reflective decoder on hostile input into an error.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (v *T, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("malformed TPM structure: %v", r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, errors.New("trailing or non-canonical bytes after the TPM structure")
	}
	return v, nil
}
