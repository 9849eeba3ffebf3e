package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// ErrEKAttributes reports an EK public area that is not a TPM-resident
// restricted decryption key, so a credential encrypted to it proves nothing.
var ErrEKAttributes = errors.New("EK is not a restricted TPM-resident decryption key")

// parseEK parses a marshalled TPMT_PUBLIC of an endorsement key.
func parseEK(ekPublic []byte) (*tpm2.TPMTPublic, crypto.PublicKey, error) {
	pub, err := unmarshalExact[tpm2.TPMTPublic](ekPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("parse EK public area (send the marshalled TPMT_PUBLIC): %w", err)
	}
	var wrong []string
	a := pub.ObjectAttributes
	if pub.Type != tpm2.TPMAlgRSA && pub.Type != tpm2.TPMAlgECC {
		wrong = append(wrong, fmt.Sprintf("type is %s, want RSA or ECC", algName(pub.Type)))
	}
	if !a.FixedTPM || !a.FixedParent {
		wrong = append(wrong, "fixedTPM or fixedParent is clear")
	}
	if !a.Restricted || !a.Decrypt || a.SignEncrypt {
		wrong = append(wrong, "not a restricted decryption key")
	}
	if len(wrong) > 0 {
		return nil, nil, fmt.Errorf("%s: %w", strings.Join(wrong, "; "), ErrEKAttributes)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, nil, fmt.Errorf("EK public key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("EK RSA key has %d bits, want at least 2048: %w", k.N.BitLen(), ErrEKAttributes)
		}
	case *ecdsa.PublicKey:
		if _, err := k.ECDH(); err != nil {
			return nil, nil, fmt.Errorf("EK ECC point is invalid: %w", err)
		}
	}
	return pub, key, nil
}

// MakeCredential encrypts secret to the EK so that only a TPM holding that
// EK and, loaded beside it, the object named akName can recover it with
// TPM2_ActivateCredential (TPM 2.0 Part 1, "Credential Protection"): the
// seed is RSA-OAEP encrypted for an RSA EK or agreed by ECDH for an ECC EK.
// secret must be 1 to 32 bytes, the size of the EK's SHA-256 name digest.
// credentialBlob is the TPM2B_ID_OBJECT and encryptedSecret the
// TPM2B_ENCRYPTED_SECRET contents, without their size prefixes.
func MakeCredential(ekPublic []byte, akName []byte, secret []byte) (credentialBlob, encryptedSecret []byte, err error) {
	pub, _, err := parseEK(ekPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: %w", err)
	}
	h, err := pub.NameAlg.Hash()
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: EK name algorithm: %w", err)
	}
	if len(secret) == 0 || len(secret) > h.Size() {
		return nil, nil, fmt.Errorf("make credential: secret is %d bytes, want 1 to %d", len(secret), h.Size())
	}
	if len(akName) < 2 {
		return nil, nil, errors.New("make credential: AK name is empty; use AK.Name from ParseAK")
	}
	key, err := tpm2.ImportEncapsulationKey(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: import EK: %w", err)
	}
	credentialBlob, encryptedSecret, err = tpm2.CreateCredential(rand.Reader, key, akName, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: %w", err)
	}
	return credentialBlob, encryptedSecret, nil
}

// EKPublicHash is the lowercase hex SHA-256 of the EK public key in PKIX
// DER, the value admins pin (posture-collector devices preregister
// --ek-sha256). It equals `openssl pkey -pubin -outform der | sha256sum`
// over the public key of the EK certificate.
func EKPublicHash(ekPublic []byte) (string, error) {
	_, key, err := parseEK(ekPublic)
	if err != nil {
		return "", fmt.Errorf("EK public hash: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return "", fmt.Errorf("EK public hash: encode public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}
