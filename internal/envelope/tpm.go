package envelope

import (
	"crypto/ecdsa"
	"errors"
	"fmt"

	"github.com/posture-project/posture/internal/attest"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// PCRMap turns the PCR values of a quote message into a map, refusing
// duplicates.
func PCRMap(values []*posturev1.PCRValue) (map[uint32][]byte, error) {
	m := make(map[uint32][]byte, len(values))
	for _, v := range values {
		if _, dup := m[v.GetIndex()]; dup {
			return nil, fmt.Errorf("%w: PCR %d sent twice", ErrMalformed, v.GetIndex())
		}
		m[v.GetIndex()] = v.GetValue()
	}
	return m, nil
}

// VerifyTPM checks a quote-signed report against the device's enrolled AK:
// the quote's qualifying data must be this report's digest, so one TPM
// signature covers the report, the nonce and the PCR values. Failures wrap
// ErrBadSignature (no quote, or not signed by the AK) or attest's
// ErrQuoteMalformed, ErrQualifyingData and ErrPCRMismatch.
func VerifyTPM(ak *attest.AK, sr *posturev1.SignedReport) (*Verified, *attest.QuoteResult, error) {
	q := sr.GetTpm()
	if q == nil {
		return nil, nil, fmt.Errorf("%w: the device enrolled a TPM identity but the report carries no TPM quote", ErrBadSignature)
	}
	if err := checkSizes(sr); err != nil {
		return nil, nil, err
	}
	digest := Digest(sr.GetNonce(), sr.GetReport())
	res, err := VerifyQuote(ak, q, digest)
	if errors.Is(err, attest.ErrQuoteSignature) {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if err != nil {
		return nil, nil, err
	}
	rep, err := decodeReport(sr.GetReport())
	if err != nil {
		return nil, nil, err
	}
	proof, err := encodeProof(q, len(q.GetEventLog()))
	if err != nil {
		return nil, nil, err
	}
	return &Verified{Report: rep, Digest: digest, Body: sr.GetReport(), Nonce: sr.GetNonce(), Proof: proof}, res, nil
}

// VerifyQuote checks a quote message: a TPM2_Quote by ak whose qualifying
// data is digest, over the PCR values it carries. Failures wrap ErrMalformed
// (a PCR sent twice) or attest's ErrQuoteMalformed, ErrQuoteSignature,
// ErrQualifyingData and ErrPCRMismatch.
func VerifyQuote(ak *attest.AK, q *posturev1.TPMQuote, digest []byte) (*attest.QuoteResult, error) {
	pcrs, err := PCRMap(q.GetPcrs())
	if err != nil {
		return nil, err
	}
	return attest.VerifyQuote(ak, q.GetAttest(), q.GetSignature(), digest, pcrs)
}

// VerifyProof checks that a device identity proved digest: for a software
// identity (key set) an ECDSA signature over it, for a TPM identity (ak
// set) a TPM2_Quote by the AK with digest as qualifying data. Enrollment
// and certificate renewal prove possession of the identity this way.
// Failures wrap ErrBadSignature, ErrMalformed or attest's sentinels.
func VerifyProof(key *ecdsa.PublicKey, ak *attest.AK, digest, signature []byte, quote *posturev1.TPMQuote) error {
	switch {
	case ak != nil:
		if quote == nil {
			return fmt.Errorf("%w: a TPM identity proves with a TPM quote, and none was sent", ErrBadSignature)
		}
		_, err := VerifyQuote(ak, quote, digest)
		return err
	case key != nil:
		if !ecdsa.VerifyASN1(key, digest, signature) {
			return ErrBadSignature
		}
		return nil
	}
	return errors.New("verify proof: no identity key to verify with")
}
