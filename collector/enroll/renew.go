package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"io"
	"time"

	"github.com/posture-project/posture/collector/fault"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/ingest"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// renewAnswerWait is how long a renewal challenge waits for its answer: a
// software signature takes microseconds, a TPM quote about a second.
const renewAnswerWait = 30 * time.Second

// RenewStream is a renewal as the enroller uses it.
type RenewStream interface {
	Context() context.Context
	Send(*posturev1.RenewResponse) error
	Recv() (*posturev1.RenewRequest, error)
}

// Renew issues a device a new certificate for a new TLS key. askedWith is
// the certificate the device asked with: its serial and key hash. It is a stream
// rather than a pair of calls so that the nonce never leaves the call that
// issued it: nothing to keep per device between calls, to expire or to
// clean up, and an answer can only use the nonce of its own stream, once.
// A refusal is counted, logged and returned as a *fault.Error.
func (e *Enroller) Renew(stream RenewStream, id string, askedWith store.Cert, replaced bool) error {
	err := e.renew(stream, id, askedWith, replaced)
	if r, ok := fault.As(err); ok && r.Reason != "" {
		e.cfg.Stats.RenewRejected(r.Reason)
		e.cfg.Logger.Warn("certificate renewal refused", "device", id, "reason", r.Reason, "detail", r.Msg)
	}
	return err
}

func (e *Enroller) renew(stream RenewStream, id string, askedWith store.Cert, replaced bool) error {
	if err := e.renewable(id); err != nil {
		return err
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return fault.Wrap(fault.Internal, "", err, "make challenge")
	}
	if err := stream.Send(&posturev1.RenewResponse{Step: &posturev1.RenewResponse_Challenge{Challenge: &posturev1.RenewChallenge{Nonce: nonce}}}); err != nil {
		return err
	}
	msg, err := recvWithin(stream.Context(), stream.Recv, renewAnswerWait, "answer to the renewal challenge", "renew again")
	if err != nil {
		return err
	}
	ans := msg.GetAnswer()
	if ans == nil {
		return refuse("malformed", fault.Invalid, "expected RenewAnswer after the challenge")
	}
	tlsKey, err := ingest.ParseP256(ans.GetTlsPublicKey())
	if err != nil {
		return refuse("malformed", fault.Invalid, "tls_public_key: %v", err)
	}
	der, tpm, ok := e.cfg.Fleet.Identity(id)
	if !ok {
		return fault.New(fault.NotFound, "", "device %s is not enrolled with this collector", id)
	}
	var (
		swKey *ecdsa.PublicKey
		ak    *attest.AK
	)
	if tpm {
		ak, err = attest.ParseAK(der)
	} else {
		swKey, err = ingest.ParseP256(der)
	}
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "the enrolled identity key of device "+id+" cannot be parsed")
	}
	err = envelope.VerifyProof(swKey, ak, envelope.RenewDigest(nonce, ans.GetTlsPublicKey()), ans.GetSignature(), ans.GetQuote())
	switch {
	case errors.Is(err, envelope.ErrMalformed):
		return refuse("malformed", fault.Invalid, "renewal quote: %v", err)
	case err != nil:
		return refuse("bad_proof", fault.Denied, "the renewal proof does not verify with the identity device %s enrolled (%v): it must be made by that identity over this stream's nonce and the new TLS key", id, err)
	}

	spiffe := pki.SPIFFEID(e.cfg.TrustDomain, pki.RoleDevice, id)
	cert, err := e.cfg.CA.IssueClient(tlsKey, spiffe, e.cfg.CertTTL)
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "issue device certificate")
	}
	serial := pki.SerialHex(cert)
	_, ev, err := e.cfg.Store.RenewCertificate(stream.Context(), id, askedWith, store.Cert{Serial: serial, KeySHA256: pki.KeySHA256(cert)}, e.cfg.Now())
	switch {
	case err == nil:
		// Gateways caching decisions learn which certificate counts now.
		e.cfg.Feed.Apply(ev, nil)
	case errors.Is(err, store.ErrDeviceRevoked):
		return refuse("device_revoked", fault.Denied, "device %s was revoked", id)
	case errors.Is(err, store.ErrDeviceNotActive):
		// Its state changed meanwhile: say how it stands now.
		if err := e.renewable(id); err != nil {
			return err
		}
		return refuse("device_state", fault.Precondition, "device %s is no longer active: only active devices renew their certificates", id)
	case errors.Is(err, store.ErrCertReplaced):
		return refuse("certificate_replaced", fault.Denied, "%v", fleet.ErrOldCertificate)
	case errors.Is(err, store.ErrCertKey):
		return refuse("certificate_key", fault.Denied, "the certificate device %s asked with carries the serial of one the collector issued it, but another public key: the collector did not issue it", id)
	case errors.Is(err, store.ErrNotFound):
		return fault.New(fault.NotFound, "", "device %s is not enrolled with this collector", id)
	case stream.Context().Err() != nil && errors.Is(err, stream.Context().Err()):
		return context.Cause(stream.Context()) // ended before it was stored
	default:
		// Nothing was stored: the certificate the device holds still
		// counts, and renews again later.
		return fault.Wrap(fault.Unavailable, "storage", err, "the collector could not store the renewed certificate (the current one keeps working); renew again later")
	}
	e.cfg.Stats.Renewed()
	e.cfg.Logger.Info("device certificate renewed", "device", id, "serial", serial, "not_after", cert.NotAfter.UTC().Format(time.RFC3339),
		"replaced_serial", askedWith.Serial, "asked_with_replaced", replaced)
	return stream.Send(&posturev1.RenewResponse{Step: &posturev1.RenewResponse_Result{Result: &posturev1.RenewResult{Certificate: cert.Raw}}})
}

// renewable refuses devices whose certificates are not renewed: any but
// active ones.
func (e *Enroller) renewable(id string) error {
	subj, ok := e.cfg.Fleet.Subject(id)
	if !ok {
		return fault.New(fault.NotFound, "", "device %s is not enrolled with this collector", id)
	}
	switch subj.State {
	case posturev1.DeviceState_DEVICE_STATE_ACTIVE:
		return nil
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return refuse("device_suspect", fault.Precondition, "device %s is suspect (%s): its certificate is not renewed; an admin decides what happens to it (posture-collector devices show %s)", id, subj.StateReason, id)
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return refuse("device_pending", fault.Precondition, "device %s is pending approval: its certificate is renewed once an admin approves it (posture-collector devices approve %s)", id, id)
	case posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return refuse("device_revoked", fault.Denied, "device %s was revoked (%s)", id, subj.StateReason)
	}
	return refuse("device_state", fault.Precondition, "device %s is in state %v: only active devices renew their certificates", id, subj.State)
}

// recvWithin receives the next message of an enrollment or a renewal,
// waiting at most d, and no longer than ctx allows (its cause says why it
// ended): a client that opens either and goes quiet holds the collector's
// memory. what names the message awaited, again what to do then.
func recvWithin[M any](ctx context.Context, recv func() (M, error), d time.Duration, what, again string) (M, error) {
	type received struct {
		m   M
		err error
	}
	ch := make(chan received, 1)
	go func() {
		m, err := recv() // returns when the call ends, at the latest
		ch <- received{m, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	var none M
	select {
	case r := <-ch:
		if r.err == io.EOF {
			return none, refuse("abandoned", fault.Invalid, "the client ended the call without sending the %s; %s", what, again)
		}
		return r.m, r.err
	case <-t.C:
		return none, refuse("abandoned", fault.Timeout, "no %s within %s; %s", what, d, again)
	case <-ctx.Done():
		// The call ended (the client went away, a certificate expired,
		// the enrollment ran out of time): the cause says why.
		return none, context.Cause(ctx)
	}
}
