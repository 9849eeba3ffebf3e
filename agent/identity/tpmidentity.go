package identity

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// EventLogPath is where Linux exposes the TCG measured-boot event log.
const EventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// TPMIdentity signs every report with a TPM2_Quote by the AK whose
// qualifying data is the report digest, so one TPM operation signs the
// report and attests the boot state.
type TPMIdentity struct {
	tpm          *TPM
	eventLogPath string
}

// NewTPMIdentity wraps a TPM. eventLogPath, when readable, is sent with
// each quote so the collector can replay it; empty means EventLogPath.
func NewTPMIdentity(t *TPM, eventLogPath string) *TPMIdentity {
	if eventLogPath == "" {
		eventLogPath = EventLogPath
	}
	return &TPMIdentity{tpm: t, eventLogPath: eventLogPath}
}

// Kind is "tpm".
func (i *TPMIdentity) Kind() string { return KindTPM }

// Close releases the TPM.
func (i *TPMIdentity) Close() error { return i.tpm.Close() }

// Claim presents the EK (certificate when the TPM has one) and the AK.
func (i *TPMIdentity) Claim() *posturev1.IdentityClaim {
	return &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Tpm{Tpm: &posturev1.TPMIdentity{
		EkCertificate: i.tpm.EKCertificate(),
		EkPublic:      i.tpm.EKPublic(),
		AkPublic:      i.tpm.AKPublic(),
	}}}
}

// Answer activates the collector's credential, which only the TPM holding
// the EK can do and only for this AK, and quotes the enrollment digest,
// which proves the AK signs and binds the TLS key.
func (i *TPMIdentity) Answer(ch *posturev1.EnrollChallenge, tlsKey []byte) (*posturev1.EnrollAnswer, error) {
	cred := ch.GetTpm()
	if cred == nil {
		return nil, errors.New("collector sent no TPM credential to activate; it may not support TPM identities (enroll with --identity software)")
	}
	secret, err := i.tpm.ActivateCredential(cred.GetCredentialBlob(), cred.GetEncryptedSecret())
	if err != nil {
		return nil, fmt.Errorf("answer enrollment challenge: %w", err)
	}
	q, err := i.quote(envelope.EnrollDigest(ch.GetNonce(), tlsKey, i.tpm.AKPublic()), false)
	if err != nil {
		return nil, fmt.Errorf("answer enrollment challenge: %w", err)
	}
	return &posturev1.EnrollAnswer{ActivatedSecret: secret, Quote: q}, nil
}

// AnswerRenewal quotes the renewal digest, which binds tlsKey (PKIX DER)
// to the collector's nonce, with the AK the device enrolled.
func (i *TPMIdentity) AnswerRenewal(nonce, tlsKey []byte) (*posturev1.RenewAnswer, error) {
	q, err := i.quote(envelope.RenewDigest(nonce, tlsKey), false)
	if err != nil {
		return nil, fmt.Errorf("answer renewal challenge: %w", err)
	}
	return &posturev1.RenewAnswer{TlsPublicKey: tlsKey, Quote: q}, nil
}

// Seal quotes the report digest.
func (i *TPMIdentity) Seal(nonce, report []byte) (*posturev1.SignedReport, error) {
	q, err := i.quote(envelope.Digest(nonce, report), true)
	if err != nil {
		return nil, fmt.Errorf("seal report: %w", err)
	}
	return &posturev1.SignedReport{Report: report, Nonce: nonce, Proof: &posturev1.SignedReport_Tpm{Tpm: q}}, nil
}

func (i *TPMIdentity) quote(digest []byte, withLog bool) (*posturev1.TPMQuote, error) {
	q, err := i.tpm.Quote(digest)
	if err != nil {
		return nil, err
	}
	out := &posturev1.TPMQuote{Attest: q.Attest, Signature: q.Signature}
	idx := make([]uint32, 0, len(q.PCRs))
	for k := range q.PCRs {
		idx = append(idx, k)
	}
	slices.Sort(idx)
	for _, k := range idx {
		out.Pcrs = append(out.Pcrs, &posturev1.PCRValue{Index: k, Value: q.PCRs[k]})
	}
	if withLog {
		// Reading the log needs root; without it the collector is told
		// nothing and says so, rather than guessing.
		if log, err := os.ReadFile(i.eventLogPath); err == nil {
			out.EventLog = log
		}
	}
	return out, nil
}
