package identity

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// EventLogPath is where Linux exposes the TCG measured-boot event log.
const EventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// TPMIdentity signs every report with a TPM2_Quote by the AK whose
// qualifying data is the report digest, so one TPM operation signs the
// report and attests the boot state.
//
// The event log (15–40 KB) changes only when the PCR values do, so it
// travels with a quote only when the collector may lack it: the first
// quote after ResendEventLog (a new stream, or the collector asked) and
// the first quote whose PCR values differ from those of the last quote
// sent with a log.
type TPMIdentity struct {
	tpm          *TPM
	eventLogPath string

	mu      sync.Mutex
	resend  bool              // send the log with the next quote
	logSent bool              // logFor holds the PCR tag of a quote sent with a log
	logFor  [sha256.Size]byte // attest.PCRTag of that quote's PCR values
}

// NewTPMIdentity wraps a TPM. eventLogPath, when readable, is sent with
// the first quote and whenever the collector may lack it; empty means
// EventLogPath.
func NewTPMIdentity(t *TPM, eventLogPath string) *TPMIdentity {
	if eventLogPath == "" {
		eventLogPath = EventLogPath
	}
	return &TPMIdentity{tpm: t, eventLogPath: eventLogPath, resend: true}
}

// ResendEventLog makes the next quote carry the event log whatever the
// PCR values. The agent calls it when a report stream starts and when the
// collector asks for the log.
func (i *TPMIdentity) ResendEventLog() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.resend = true
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
		out.EventLog = i.eventLog(q.PCRs)
	}
	return out, nil
}

// eventLog returns the event log when a quote of pcrs should carry it,
// and nil otherwise.
func (i *TPMIdentity) eventLog(pcrs map[uint32][]byte) []byte {
	tag := attest.PCRTag(pcrs)
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.resend && i.logSent && i.logFor == tag {
		return nil
	}
	// Reading the log needs root; without it the collector is told
	// nothing and says so, rather than guessing.
	log, err := os.ReadFile(i.eventLogPath)
	if err != nil || len(log) > attest.MaxEventLogSize {
		// A collector refuses a report whose log is over the limit;
		// without one it says measured boot is unknown.
		return nil
	}
	i.resend, i.logSent, i.logFor = false, true, tag
	return log
}
