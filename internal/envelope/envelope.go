// Package envelope defines how a posture report is bound to a nonce and a
// device key, and verifies that binding. Verification returns the decoded
// report only when the proof holds: unverified bytes have no way out.
package envelope

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Domain separation strings: a signature made for one purpose never verifies
// for another.
const (
	reportDomain = "posture.v1.report"
	enrollDomain = "posture.v1.enroll"
	renewDomain  = "posture.v1.renew"
)

// Sentinel errors for the ways a proof can fail.
var (
	ErrMalformed    = errors.New("malformed signed report")
	ErrBadSignature = errors.New("signature does not verify with the device's enrolled key")
)

// Digest is SHA-256("posture.v1.report" || nonce || report).
func Digest(nonce, report []byte) []byte {
	h := sha256.New()
	h.Write([]byte(reportDomain))
	h.Write(nonce)
	h.Write(report)
	return h.Sum(nil)
}

// EnrollDigest is what an enrolling agent signs to prove it holds its
// identity key: SHA-256("posture.v1.enroll" || nonce || tlsKey || identityKey).
func EnrollDigest(nonce, tlsKey, identityKey []byte) []byte {
	h := sha256.New()
	h.Write([]byte(enrollDomain))
	h.Write(nonce)
	h.Write(tlsKey)
	h.Write(identityKey)
	return h.Sum(nil)
}

// RenewDigest is what an agent proves with its identity to have a new TLS
// key certified: SHA-256("posture.v1.renew" || nonce || tlsKey). The
// collector verifies it with the identity key the device enrolled.
func RenewDigest(nonce, tlsKey []byte) []byte {
	h := sha256.New()
	h.Write([]byte(renewDomain))
	h.Write(nonce)
	h.Write(tlsKey)
	return h.Sum(nil)
}

// SignSoftware seals report bytes with an ECDSA identity key.
func SignSoftware(key *ecdsa.PrivateKey, nonce, report []byte) (*posturev1.SignedReport, error) {
	sig, err := ecdsa.SignASN1(rand.Reader, key, Digest(nonce, report))
	if err != nil {
		return nil, fmt.Errorf("sign report: %w", err)
	}
	return &posturev1.SignedReport{
		Report: report,
		Nonce:  nonce,
		Proof:  &posturev1.SignedReport_Software{Software: &posturev1.SoftwareSignature{Signature: sig}},
	}, nil
}

// Verified is a report whose proof holds.
type Verified struct {
	Report *posturev1.PostureReport
	Digest []byte
	Body   []byte // the report bytes exactly as signed
	Nonce  []byte
	Proof  []byte // the serialized proof, for storage
}

// VerifySoftware checks a software-signed report against the device's
// enrolled key and returns it decoded.
func VerifySoftware(key *ecdsa.PublicKey, sr *posturev1.SignedReport) (*Verified, error) {
	sw := sr.GetSoftware()
	if sw == nil {
		return nil, fmt.Errorf("%w: the device enrolled a software key but the report carries no software signature", ErrBadSignature)
	}
	if err := checkSizes(sr); err != nil {
		return nil, err
	}
	digest := Digest(sr.GetNonce(), sr.GetReport())
	if !ecdsa.VerifyASN1(key, digest, sw.GetSignature()) {
		return nil, ErrBadSignature
	}
	rep, err := decodeReport(sr.GetReport())
	if err != nil {
		return nil, err
	}
	proof, err := encodeProof(sw, 0)
	if err != nil {
		return nil, err
	}
	return &Verified{Report: rep, Digest: digest, Body: sr.GetReport(), Nonce: sr.GetNonce(), Proof: proof}, nil
}

// checkSizes refuses, before anything in it is verified, a signed report
// that is empty or carries more than the limits allow (MaxReportSize,
// MaxEventLogSize).
func checkSizes(sr *posturev1.SignedReport) error {
	switch {
	case len(sr.GetReport()) == 0 || len(sr.GetNonce()) == 0:
		return fmt.Errorf("%w: report or nonce is empty", ErrMalformed)
	case len(sr.GetReport()) > MaxReportSize:
		return fmt.Errorf("%w: the report is %d bytes; at most %d", ErrMalformed, len(sr.GetReport()), MaxReportSize)
	case len(sr.GetTpm().GetEventLog()) > MaxEventLogSize:
		return fmt.Errorf("%w: the TPM event log is %d bytes; at most %d", ErrMalformed, len(sr.GetTpm().GetEventLog()), MaxEventLogSize)
	}
	return nil
}

// decodeReport decodes the verified report bytes and checks its fields
// against the limits (CheckReport).
func decodeReport(body []byte) (*posturev1.PostureReport, error) {
	var rep posturev1.PostureReport
	if err := proto.Unmarshal(body, &rep); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := CheckReport(&rep); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &rep, nil
}

// encodeProof serializes a verified proof for storage, which holds it to
// MaxProofSize besides its event log of logSize bytes: fields the
// collector does not know would otherwise be stored with it.
func encodeProof(p proto.Message, logSize int) ([]byte, error) {
	proof, err := proto.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode proof: %w", err)
	}
	if n := len(proof) - logSize; n > MaxProofSize {
		return nil, fmt.Errorf("%w: the proof is %d bytes besides the event log; at most %d", ErrMalformed, n, MaxProofSize)
	}
	return proof, nil
}

// ClaimedDevice decodes the device ID a report claims, without trusting it.
// It is used only to explain a rejection (another device's report on this
// stream), never to store or score anything.
func ClaimedDevice(sr *posturev1.SignedReport) string {
	var rep posturev1.PostureReport
	if err := proto.Unmarshal(sr.GetReport(), &rep); err != nil {
		return ""
	}
	return rep.GetDeviceId()
}

// ClaimedSeq decodes the sequence number a report claims, without trusting
// it; it labels rejections only.
func ClaimedSeq(sr *posturev1.SignedReport) uint64 {
	var rep posturev1.PostureReport
	if err := proto.Unmarshal(sr.GetReport(), &rep); err != nil {
		return 0
	}
	return rep.GetSeq()
}
