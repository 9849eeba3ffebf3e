// Package softquote makes TPM2_Quote structures in software: an
// attestation key (AK) public area with the attributes of a TPM-resident
// restricted signing key, and quotes it signs, marshalled exactly as a TPM
// marshals them. The key is fixed by a seed, so quotes made in one process
// verify in another: fuzz targets keep signed reports in their corpus
// files. Only tests import it; a verifier cannot tell these quotes from a
// TPM's, which is what lets tests probe it without a TPM.
package softquote

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"maps"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Key returns the fixed ECDSA P-256 key of seed: the same in every
// process. Tests use it as a device's software identity key or an AK.
func Key(seed string) *ecdsa.PrivateKey {
	for i := 0; ; i++ {
		scalar := sha256.Sum256(fmt.Appendf(nil, "posture test key %s %d", seed, i))
		if key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), scalar[:]); err == nil {
			return key
		}
	}
}

// AK is a software attestation key.
type AK struct {
	Key *ecdsa.PrivateKey
	// Public is the marshalled TPMT_PUBLIC, as agents send it at
	// enrollment: fixedTPM, fixedParent, sensitiveDataOrigin, restricted,
	// sign, ECC NIST P-256 with ECDSA-SHA256.
	Public []byte
	// Name is its TPM Name (nameAlg, then the SHA-256 of Public).
	Name []byte
}

// NewAK returns the fixed AK of seed.
func NewAK(seed string) *AK {
	key := Key(seed)
	point, err := key.PublicKey.Bytes() // 0x04, X, Y
	if err != nil {
		panic("softquote: AK public key: " + err.Error())
	}
	pub := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			Restricted: true, SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: point[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: point[33:]},
		}),
	}
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		panic("softquote: AK name: " + err.Error())
	}
	return &AK{Key: key, Public: tpm2.Marshal(pub), Name: name.Buffer}
}

// Clock is the clock information a quote carries.
type Clock struct {
	Clock        uint64
	ResetCount   uint32
	RestartCount uint32
}

// Quote makes a TPM2_Quote by the AK over the sha256 PCRs in pcrs with
// qualifyingData as its extra data, and returns the TPMS_ATTEST bytes and
// the marshalled TPMT_SIGNATURE over them. The attestation bytes depend
// only on the arguments; the signature is randomized, as a TPM's is.
func (a *AK) Quote(qualifyingData []byte, pcrs map[uint32][]byte, clock Clock) (attest, signature []byte) {
	order := slices.Sorted(maps.Keys(pcrs))
	bitmap := make([]byte, 3)
	h := sha256.New()
	for _, p := range order {
		bitmap[p/8] |= 1 << (p % 8)
		h.Write(pcrs[p])
	}
	attest = tpm2.Marshal(tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: a.Name},
		ExtraData:       tpm2.TPM2BData{Buffer: qualifyingData},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: clock.Clock, ResetCount: clock.ResetCount, RestartCount: clock.RestartCount, Safe: true},
		FirmwareVersion: 0x2000_0001_0000_0000,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)},
		}),
	})
	return attest, a.Sign(attest)
}

// Sign signs any bytes the way an AK signs an attestation: ECDSA over
// their SHA-256, marshalled as a TPMT_SIGNATURE.
func (a *AK) Sign(attest []byte) []byte {
	digest := sha256.Sum256(attest)
	r, s, err := ecdsa.Sign(rand.Reader, a.Key, digest[:])
	if err != nil {
		panic("softquote: sign: " + err.Error())
	}
	return tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()},
		}),
	})
}

// PCRs returns sha256 values for PCRs 0–7 that depend only on seed.
func PCRs(seed string) map[uint32][]byte {
	out := make(map[uint32][]byte, 8)
	for p := range uint32(8) {
		sum := sha256.Sum256(fmt.Appendf(nil, "posture test PCR %s %d", seed, p))
		out[p] = sum[:]
	}
	return out
}
