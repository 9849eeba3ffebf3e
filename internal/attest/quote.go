package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Sentinel errors of VerifyQuote, one per reason a quote is rejected.
var (
	// ErrQuoteMalformed: the attestation or signature does not parse, or is
	// not a TPM-generated quote.
	ErrQuoteMalformed = errors.New("malformed TPM quote")
	// ErrQuoteSignature: the AK did not sign these attestation bytes.
	ErrQuoteSignature = errors.New("TPM quote signature does not verify with the enrolled AK")
	// ErrQualifyingData: the quote binds other data than expected, such as
	// a stale nonce or a report other than the one sent.
	ErrQualifyingData = errors.New("TPM quote qualifying data does not match the report digest")
	// ErrPCRMismatch: the PCR values sent are not the ones quoted.
	ErrPCRMismatch = errors.New("PCR values do not match the TPM quote")
)

// ClockInfo is the TPM clock state in a quote. Clock counts milliseconds
// the TPM has been powered; Safe is false when the TPM lost power before it
// could save Clock, which may then repeat values. ResetCount grows on every
// TPM Reset (reboot) and RestartCount on every resume from hibernation.
//
// The TPM obfuscates ResetCount and RestartCount (and FirmwareVersion) in
// quotes by keys of the owner hierarchy, such as the AK, by adding an
// offset fixed for that AK: compare them only with earlier values from the
// same AK, as wrapping differences (int32(new-old)), never with values from
// another key.
type ClockInfo struct {
	Clock        uint64
	ResetCount   uint32
	RestartCount uint32
	Safe         bool
}

// QuoteResult is the verified content of a quote.
type QuoteResult struct {
	Clock           ClockInfo
	FirmwareVersion uint64
	// PCRs maps each quoted sha256 PCR index to its verified value.
	PCRs map[uint32][]byte
}

// VerifyQuote verifies a TPM2_Quote: that ak signed attest (ECDSA-SHA256
// over a marshalled TPMT_SIGNATURE), that attest is a TPM-generated quote,
// that its extra data equals qualifyingData, that it covers exactly the
// sha256 PCRs in pcrs, and that its PCR digest is SHA-256 of those values
// concatenated in ascending PCR order. Each failure wraps its own sentinel:
// ErrQuoteMalformed, ErrQuoteSignature, ErrQualifyingData, ErrPCRMismatch.
func VerifyQuote(ak *AK, attest, signature []byte, qualifyingData []byte, pcrs map[uint32][]byte) (*QuoteResult, error) {
	if ak == nil {
		return nil, errors.New("verify quote: no AK; parse it with ParseAK")
	}
	akKey, ok := ak.Public.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("verify quote: AK key is %T, want *ecdsa.PublicKey from ParseAK", ak.Public)
	}
	// The signature is checked over the raw bytes before anything in them
	// is believed.
	sig, err := unmarshalExact[tpm2.TPMTSignature](signature)
	if err != nil {
		return nil, fmt.Errorf("verify quote: parse signature: %v: %w", err, ErrQuoteMalformed)
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("verify quote: signature algorithm is %s, want ECDSA: %w", algName(sig.SigAlg), ErrQuoteSignature)
	}
	ecSig, err := sig.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("verify quote: parse ECDSA signature: %v: %w", err, ErrQuoteMalformed)
	}
	if ecSig.Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("verify quote: signature hash is %s, want SHA256: %w", algName(ecSig.Hash), ErrQuoteSignature)
	}
	digest := sha256.Sum256(attest)
	r := new(big.Int).SetBytes(ecSig.SignatureR.Buffer)
	s := new(big.Int).SetBytes(ecSig.SignatureS.Buffer)
	if !ecdsa.Verify(akKey, digest[:], r, s) {
		return nil, fmt.Errorf("verify quote: %w", ErrQuoteSignature)
	}

	a, err := unmarshalExact[tpm2.TPMSAttest](attest)
	if err != nil {
		return nil, fmt.Errorf("verify quote: parse attestation: %v: %w", err, ErrQuoteMalformed)
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		return nil, fmt.Errorf("verify quote: magic is %#x, not TPM_GENERATED_VALUE: %w", uint32(a.Magic), ErrQuoteMalformed)
	}
	if a.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("verify quote: attestation type is %#x, not a quote: %w", uint16(a.Type), ErrQuoteMalformed)
	}
	q, err := a.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("verify quote: %v: %w", err, ErrQuoteMalformed)
	}
	if subtle.ConstantTimeCompare(a.ExtraData.Buffer, qualifyingData) != 1 {
		return nil, fmt.Errorf("verify quote: %w", ErrQualifyingData)
	}

	order, err := quotedPCRs(q.PCRSelect)
	if err != nil {
		return nil, fmt.Errorf("verify quote: %w", err)
	}
	if !slices.Equal(order, slices.Sorted(maps.Keys(pcrs))) {
		return nil, fmt.Errorf("verify quote: quote covers sha256 PCRs %v, values sent for %v: %w", order, slices.Sorted(maps.Keys(pcrs)), ErrPCRMismatch)
	}
	h := sha256.New()
	for _, p := range order {
		if len(pcrs[p]) != sha256.Size {
			return nil, fmt.Errorf("verify quote: PCR %d value is %d bytes, want %d: %w", p, len(pcrs[p]), sha256.Size, ErrPCRMismatch)
		}
		h.Write(pcrs[p])
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), q.PCRDigest.Buffer) != 1 {
		return nil, fmt.Errorf("verify quote: %w", ErrPCRMismatch)
	}

	out := &QuoteResult{
		Clock: ClockInfo{
			Clock:        a.ClockInfo.Clock,
			ResetCount:   a.ClockInfo.ResetCount,
			RestartCount: a.ClockInfo.RestartCount,
			Safe:         bool(a.ClockInfo.Safe),
		},
		FirmwareVersion: a.FirmwareVersion,
		PCRs:            make(map[uint32][]byte, len(order)),
	}
	for _, p := range order {
		out.PCRs[p] = bytes.Clone(pcrs[p])
	}
	return out, nil
}

// quotedPCRs lists the PCRs a quote covers, in the order the TPM hashed
// them. Only the sha256 bank is accepted: a selection in another bank
// would be digested with values the collector never sees.
func quotedPCRs(sel tpm2.TPMLPCRSelection) ([]uint32, error) {
	var out []uint32
	seen := false
	for _, s := range sel.PCRSelections {
		empty := !slices.ContainsFunc(s.PCRSelect, func(b byte) bool { return b != 0 })
		if empty {
			continue
		}
		if s.Hash != tpm2.TPMAlgSHA256 || seen {
			return nil, fmt.Errorf("quote selects PCRs outside one sha256 bank (%s): %w", algName(s.Hash), ErrPCRMismatch)
		}
		seen = true
		for i, b := range s.PCRSelect {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					out = append(out, uint32(i*8+bit))
				}
			}
		}
	}
	return out, nil
}

// PCRTag condenses a set of sha256 PCR values to SHA-256 over each PCR's
// index, value length and value, in ascending index order. Equal tags mean
// the same PCRs were quoted with the same values, so an event log replays
// against both alike and reads the same. The full hash is kept: the OS can
// extend PCRs after boot with values it chooses, so a shorter tag could be
// made to collide between a good boot and a bad one by a birthday search.
func PCRTag(pcrs map[uint32][]byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte("posture.v1.pcrs"))
	var b [8]byte
	for _, p := range slices.Sorted(maps.Keys(pcrs)) {
		binary.BigEndian.PutUint32(b[:4], p)
		binary.BigEndian.PutUint32(b[4:], uint32(len(pcrs[p])))
		h.Write(b[:])
		h.Write(pcrs[p])
	}
	var tag [sha256.Size]byte
	h.Sum(tag[:0])
	return tag
}
