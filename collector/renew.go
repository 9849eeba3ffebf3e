package collector

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// renewAnswerWait is how long a renewal challenge waits for its answer: a
// software signature takes microseconds, a TPM quote about a second.
const renewAnswerWait = 30 * time.Second

// RenewCertificate issues a device a new certificate for a new TLS key. It
// is a stream rather than a pair of calls so that the nonce never leaves
// the call that issued it: nothing to keep per device between calls, to
// expire or to clean up, and an answer can only use the nonce of its own
// stream, once.
func (s *reportService) RenewCertificate(stream posturev1.ReportService_RenewCertificateServer) error {
	c := s.c
	who := callerFrom(stream.Context())
	err := s.renew(stream, who)
	var r *refusal
	if errors.As(err, &r) {
		c.stats.renewRejected(r.reason)
		c.log.Warn("certificate renewal refused", "device", who.name, "reason", r.reason, "detail", r.msg)
		return status.Error(r.code, r.msg)
	}
	return err
}

func (s *reportService) renew(stream posturev1.ReportService_RenewCertificateServer, who caller) error {
	c := s.c
	id := who.name
	if err := c.renewable(id); err != nil {
		return err
	}
	nonce := newNonce()
	if err := stream.Send(&posturev1.RenewResponse{Step: &posturev1.RenewResponse_Challenge{Challenge: &posturev1.RenewChallenge{Nonce: nonce}}}); err != nil {
		return err
	}
	msg, err := recvWithin(stream.Context(), stream.Recv, renewAnswerWait, "answer to the renewal challenge", "renew again")
	if err != nil {
		return err
	}
	ans := msg.GetAnswer()
	if ans == nil {
		return refuse("malformed", codes.InvalidArgument, "expected RenewAnswer after the challenge")
	}
	tlsKey, err := parseP256(ans.GetTlsPublicKey())
	if err != nil {
		return refuse("malformed", codes.InvalidArgument, "tls_public_key: %v", err)
	}
	e, ok := c.fleet.get(id)
	if !ok {
		return status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	}
	var key streamKey
	if err := key.load(e); err != nil {
		return status.Errorf(codes.Internal, "device %s: %v", id, err)
	}
	err = envelope.VerifyProof(key.key, key.ak, envelope.RenewDigest(nonce, ans.GetTlsPublicKey()), ans.GetSignature(), ans.GetQuote())
	switch {
	case errors.Is(err, envelope.ErrMalformed):
		return refuse("malformed", codes.InvalidArgument, "renewal quote: %v", err)
	case err != nil:
		return refuse("bad_proof", codes.PermissionDenied, "the renewal proof does not verify with the identity device %s enrolled (%v): it must be made by that identity over this stream's nonce and the new TLS key", id, err)
	}

	spiffe := pki.SPIFFEID(c.cfg.TrustDomain, pki.RoleDevice, id)
	cert, err := c.ca.IssueClient(tlsKey, spiffe, c.cfg.DeviceCertTTL)
	if err != nil {
		return status.Errorf(codes.Internal, "issue device certificate: %v", err)
	}
	serial := cert.SerialNumber.Text(16)
	// The store and the fleet change together: renewals and enrollments
	// racing (two agents with one identity) must leave memory with the
	// serials the store committed last.
	c.certs.Lock()
	dev, err := c.store.RenewCertificate(stream.Context(), id, who.certSerial, serial)
	if err == nil {
		c.fleet.setCertificates(id, dev.CertSerial, dev.PrevCertSerial)
	}
	c.certs.Unlock()
	if err == nil {
		// Gateways caching decisions learn which certificate counts now.
		c.publish(id, "certificate", true)
	}
	switch {
	case errors.Is(err, store.ErrDeviceRevoked):
		return refuse("device_revoked", codes.PermissionDenied, "device %s was revoked", id)
	case errors.Is(err, store.ErrDeviceNotActive):
		// Its state changed meanwhile: say how it stands now.
		if err := c.renewable(id); err != nil {
			return err
		}
		return refuse("device_state", codes.FailedPrecondition, "device %s is no longer active: only active devices renew their certificates", id)
	case errors.Is(err, store.ErrCertReplaced):
		return refuse("certificate_replaced", codes.PermissionDenied, "%v", errOldCertificate)
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	case err != nil:
		return status.Errorf(codes.Internal, "store renewed certificate: %v", err)
	}
	c.stats.renewed()
	c.log.Info("device certificate renewed", "device", id, "serial", serial, "not_after", cert.NotAfter.UTC().Format(time.RFC3339),
		"replaced_serial", who.certSerial, "asked_with_replaced", who.replacedCert)
	return stream.Send(&posturev1.RenewResponse{Step: &posturev1.RenewResponse_Result{Result: &posturev1.RenewResult{Certificate: cert.Raw}}})
}

// renewable refuses devices whose certificates are not renewed: any but
// active ones.
func (c *Collector) renewable(id string) error {
	subj, ok := c.fleet.subject(id)
	if !ok {
		return status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", id)
	}
	switch subj.State {
	case posturev1.DeviceState_DEVICE_STATE_ACTIVE:
		return nil
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return refuse("device_suspect", codes.FailedPrecondition, "device %s is suspect (%s): its certificate is not renewed; an admin decides what happens to it (posture-collector devices show %s)", id, subj.StateReason, id)
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return refuse("device_pending", codes.FailedPrecondition, "device %s is pending approval: its certificate is renewed once an admin approves it (posture-collector devices approve %s)", id, id)
	case posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return refuse("device_revoked", codes.PermissionDenied, "device %s was revoked (%s)", id, subj.StateReason)
	}
	return refuse("device_state", codes.FailedPrecondition, "device %s is in state %v: only active devices renew their certificates", id, subj.State)
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
			return none, refuse("abandoned", codes.InvalidArgument, "the client ended the call without sending the %s; %s", what, again)
		}
		return r.m, r.err
	case <-t.C:
		return none, refuse("abandoned", codes.DeadlineExceeded, "no %s within %s; %s", what, d, again)
	case <-ctx.Done():
		// The call ended (the client went away, a certificate expired,
		// the enrollment ran out of time): the cause says why.
		return none, context.Cause(ctx)
	}
}
