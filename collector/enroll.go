package collector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type enrollService struct {
	posturev1.UnimplementedEnrollmentServiceServer
	c *Collector
}

// DeviceID derives a device ID from a public key in PKIX DER form: the
// software identity key, or the TPM's endorsement key. Enrolling again with
// the same key (or TPM) yields the same device.
func DeviceID(publicKey []byte) string {
	sum := sha256.Sum256(publicKey)
	return hex.EncodeToString(sum[:16])
}

// refusal is an enrollment refusal with the reason it is counted under.
type refusal struct {
	reason string
	code   codes.Code
	msg    string
}

func (r *refusal) Error() string { return r.msg }

func refuse(reason string, code codes.Code, format string, args ...any) *refusal {
	return &refusal{reason: reason, code: code, msg: fmt.Sprintf(format, args...)}
}

// claim is a checked identity claim: what the device says it is, and what
// it must prove in answer to the challenge.
type claim struct {
	kind        string
	deviceID    string
	identityKey []byte // stored: software PKIX DER, or the AK's TPMT_PUBLIC
	swKey       *ecdsa.PublicKey
	ak          *attest.AK
	ekPublic    []byte
	ekHash      string
	assurance   posturev1.IdentityAssurance
	state       posturev1.DeviceState
	stateReason string
	secret      []byte // the credential secret a TPM must recover
}

func (s *enrollService) Enroll(stream posturev1.EnrollmentService_EnrollServer) error {
	c := s.c
	// A peer that keeps failing is refused at once, before its token is
	// looked up or it is waited for: the throttle counts by the TCP
	// peer's address.
	pr, _ := peer.FromContext(stream.Context())
	var who peerAddr
	counted := false // only IP peers are; the admin socket refuses enrollments anyway
	if pr != nil {
		who, counted = peerOf(pr.Addr)
	}
	if counted {
		if wait, ok := c.throttle.admit(who, time.Now()); !ok {
			msg := fmt.Sprintf("too many failed enrollment attempts from %s; retry after %s", who, wholeSeconds(wait))
			c.refused(limitThrottled, who, msg)
			return status.Error(codes.ResourceExhausted, msg)
		}
	}
	// The whole enrollment is bounded too, whatever the client sends.
	ctx, cancel := context.WithTimeoutCause(stream.Context(), c.cfg.limits.enrollWait,
		refuse("abandoned", codes.DeadlineExceeded, "enrollment did not finish within %s; enroll again", c.cfg.limits.enrollWait))
	defer cancel()
	err := s.enroll(ctx, stream)
	if counted && err != nil && status.Code(err) != codes.Internal {
		// Anything but success, or an error of the collector's own, is
		// the peer's failure.
		c.throttle.failed(who, time.Now())
	}
	var r *refusal
	if errors.As(err, &r) {
		c.stats.enrollRejected(r.reason)
		c.log.Warn("enrollment refused", "reason", r.reason, "peer", who.String(), "detail", r.msg)
		return status.Error(r.code, r.msg)
	}
	return err
}

// wholeSeconds rounds d up to whole seconds, at least one: what a client
// told to wait can count.
func wholeSeconds(d time.Duration) time.Duration {
	return max(time.Second, (d + time.Second - 1).Truncate(time.Second))
}

func (s *enrollService) enroll(ctx context.Context, stream posturev1.EnrollmentService_EnrollServer) error {
	c := s.c
	step := c.cfg.limits.enrollStepWait
	first, err := recvWithin(ctx, stream.Recv, step, "first enrollment message (EnrollBegin)", "enroll again")
	if err != nil {
		return err
	}
	begin := first.GetBegin()
	if begin == nil {
		return refuse("malformed", codes.InvalidArgument, "enrollment must start with EnrollBegin")
	}
	for field, v := range map[string]string{"hostname": begin.GetHostname(), "platform": begin.GetPlatform()} {
		if len(v) > envelope.MaxNameLen {
			return refuse("malformed", codes.InvalidArgument, "%s is %d bytes; at most %d", field, len(v), envelope.MaxNameLen)
		}
	}
	tlsKey, err := parseP256(begin.GetTlsPublicKey())
	if err != nil {
		return refuse("malformed", codes.InvalidArgument, "tls_public_key: %v", err)
	}
	tokenHash := token.Hash(begin.GetToken())
	if err := c.checkToken(ctx, tokenHash); err != nil {
		return err
	}
	cl, err := c.checkClaim(ctx, begin.GetIdentity())
	if err != nil {
		return err
	}
	if revoked, why := c.fleet.revoked(cl.deviceID); revoked {
		return refuse("device_revoked", codes.PermissionDenied, "device %s was revoked (%s) and cannot enroll again with the same identity; remove the agent's state directory to make a new software identity", cl.deviceID, why)
	}

	// The challenge: a fresh nonce to sign (software) or quote (TPM), which
	// also binds the TLS key the certificate will name, and for a TPM a
	// credential only the TPM holding the EK can activate, for this AK.
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return status.Errorf(codes.Internal, "make challenge: %v", err)
	}
	ch := &posturev1.EnrollChallenge{Nonce: nonce}
	if cl.kind == "tpm" {
		cl.secret = make([]byte, 32)
		if _, err := rand.Read(cl.secret); err != nil {
			return status.Errorf(codes.Internal, "make credential: %v", err)
		}
		blob, encSecret, err := attest.MakeCredential(cl.ekPublic, cl.ak.Name, cl.secret)
		if err != nil {
			return refuse("malformed", codes.InvalidArgument, "cannot make a credential for this EK: %v", err)
		}
		ch.Tpm = &posturev1.TPMCredential{CredentialBlob: blob, EncryptedSecret: encSecret}
	}
	if err := stream.Send(&posturev1.EnrollResponse{Step: &posturev1.EnrollResponse_Challenge{Challenge: ch}}); err != nil {
		return err
	}
	msg, err := recvWithin(ctx, stream.Recv, step, "answer to the enrollment challenge", "enroll again")
	if err != nil {
		return err
	}
	ans := msg.GetAnswer()
	if ans == nil {
		return refuse("malformed", codes.InvalidArgument, "expected EnrollAnswer after the challenge")
	}
	if err := cl.verifyAnswer(ans, nonce, begin.GetTlsPublicKey()); err != nil {
		return err
	}

	spiffe := pki.SPIFFEID(c.cfg.TrustDomain, pki.RoleDevice, cl.deviceID)
	cert, err := c.ca.IssueClient(tlsKey, spiffe, c.cfg.DeviceCertTTL)
	if err != nil {
		return status.Errorf(codes.Internal, "issue device certificate: %v", err)
	}
	now := c.cfg.Now()
	c.certs.Lock() // with the fleet update below, in the store's order (see renew)
	certsHeld := true
	defer func() {
		if certsHeld {
			c.certs.Unlock()
		}
	}()
	dev, err := c.store.EnrollDevice(ctx, tokenHash, now, store.Device{
		ID:          cl.deviceID,
		Hostname:    begin.GetHostname(),
		Platform:    begin.GetPlatform(),
		Identity:    cl.kind,
		IdentityKey: cl.identityKey,
		Assurance:   int32(cl.assurance),
		State:       int32(cl.state),
		StateReason: cl.stateReason,
		EnrolledAt:  now,
		CertSerial:  cert.SerialNumber.Text(16),
		EKSHA256:    cl.ekHash,
	})
	switch {
	case errors.Is(err, store.ErrTokenUsedUp):
		return refuse("token_used", codes.Unauthenticated, "enrollment token was already used; ask your admin for a new one")
	case errors.Is(err, store.ErrTokenExpired):
		return refuse("token_expired", codes.Unauthenticated, "enrollment token expired; ask your admin for a new one")
	case errors.Is(err, store.ErrTokenUnknown):
		return refuse("token_unknown", codes.Unauthenticated, "enrollment token is not known to this collector")
	case errors.Is(err, store.ErrDeviceRevoked):
		return refuse("device_revoked", codes.PermissionDenied, "device %s was revoked and cannot enroll again with the same identity", cl.deviceID)
	case errors.Is(err, store.ErrIdentityKind):
		return refuse("identity_kind", codes.PermissionDenied, "device %s enrolled with another kind of identity than this %s claim; a device keeps its kind of identity: revoke it and enroll this machine as a new device", cl.deviceID, cl.kind)
	case err != nil:
		return status.Errorf(codes.Internal, "store enrollment: %v", err)
	}
	if err := c.fleet.put(dev); err != nil {
		return status.Errorf(codes.Internal, "load enrolled device: %v", err)
	}
	c.certs.Unlock()
	certsHeld = false
	c.publish(dev.ID, "enrolled", true)
	c.stats.enrolled()
	c.log.Info("device enrolled", "device", dev.ID, "hostname", dev.Hostname, "platform", dev.Platform,
		"identity", dev.Identity, "assurance", cl.assurance.String(), "state", posturev1.DeviceState(dev.State).String())
	return stream.Send(&posturev1.EnrollResponse{Step: &posturev1.EnrollResponse_Result{Result: &posturev1.EnrollResult{
		DeviceId:       dev.ID,
		SpiffeId:       spiffe.String(),
		Certificate:    cert.Raw,
		CaCertificates: [][]byte{c.ca.Cert.Raw},
		TrustDomain:    c.cfg.TrustDomain,
		Assurance:      posturev1.IdentityAssurance(dev.Assurance),
		State:          posturev1.DeviceState(dev.State),
		LastSeq:        dev.LastSeq,
		LastDigest:     dev.LastDigest,
	}}})
}

// checkToken refuses an unknown, expired or used-up token before any work
// is done; the store checks again when it consumes the token.
func (c *Collector) checkToken(ctx context.Context, hash []byte) error {
	tok, err := c.store.Token(ctx, hash)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return refuse("token_unknown", codes.Unauthenticated, "enrollment token is not known to this collector; check that you copied the whole token, or ask your admin for a new one")
	case err != nil:
		return status.Errorf(codes.Internal, "look up token: %v", err)
	case !tok.ExpiresAt.After(c.cfg.Now()):
		return refuse("token_expired", codes.Unauthenticated, "enrollment token expired at %s; ask your admin for a new one (posture-collector token create)", tok.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
	case tok.Used >= tok.Uses:
		return refuse("token_used", codes.Unauthenticated, "enrollment token was already used (it allowed %d enrollment(s)); ask your admin for a new one", tok.Uses)
	}
	return nil
}

// checkClaim checks what can be checked before the challenge.
func (c *Collector) checkClaim(ctx context.Context, id *posturev1.IdentityClaim) (*claim, error) {
	if sw := id.GetSoftware(); sw != nil {
		key, err := parseP256(sw.GetPublicKey())
		if err != nil {
			return nil, refuse("malformed", codes.InvalidArgument, "identity public key: %v", err)
		}
		// One key, one encoding, one device ID: the parser tolerates
		// extra elements that would give the same key another ID.
		if canonical, err := x509.MarshalPKIXPublicKey(key); err != nil || !bytes.Equal(canonical, sw.GetPublicKey()) {
			return nil, refuse("malformed", codes.InvalidArgument, "identity public key is not in canonical PKIX DER form")
		}
		return &claim{
			kind: "software", deviceID: DeviceID(sw.GetPublicKey()), identityKey: sw.GetPublicKey(), swKey: key,
			assurance: posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE, state: posturev1.DeviceState_DEVICE_STATE_ACTIVE,
		}, nil
	}
	t := id.GetTpm()
	if t == nil {
		return nil, refuse("malformed", codes.InvalidArgument, "identity: send a software key or a TPM identity")
	}
	ak, err := attest.ParseAK(t.GetAkPublic())
	if err != nil {
		return nil, refuse("bad_ak", codes.InvalidArgument, "attestation key refused: %v", err)
	}
	ekHash, err := attest.EKPublicHash(t.GetEkPublic())
	if err != nil {
		return nil, refuse("malformed", codes.InvalidArgument, "endorsement key: %v", err)
	}
	cl := &claim{kind: "tpm", deviceID: ekHash[:32], identityKey: t.GetAkPublic(), ak: ak, ekPublic: t.GetEkPublic(), ekHash: ekHash,
		state: posturev1.DeviceState_DEVICE_STATE_ACTIVE}

	// EK trust: a certificate chaining to a manufacturer root, else a pin,
	// else an admin decides.
	var why string
	switch {
	case len(t.GetEkCertificate()) == 0:
		why = "the TPM has no EK certificate"
	case c.cfg.EKRoots == nil:
		why = "no ekcert_roots are configured"
	default:
		if _, err := attest.VerifyEKCertificate(t.GetEkCertificate(), t.GetEkPublic(), c.cfg.EKRoots); err != nil {
			why = fmt.Sprintf("its EK certificate does not verify: %v", err)
		} else {
			cl.assurance = posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED
			return cl, nil
		}
	}
	pinned, err := c.store.EKPinned(ctx, ekHash)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "look up pinned EKs: %v", err)
	}
	if pinned {
		cl.assurance = posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED
		return cl, nil
	}
	cl.state = posturev1.DeviceState_DEVICE_STATE_PENDING
	cl.stateReason = fmt.Sprintf("TPM endorsement key %s is neither verified (%s) nor pinned; an admin must approve it: posture-collector devices approve %s", ekHash, why, cl.deviceID)
	return cl, nil
}

// verifyAnswer checks the proof of possession.
func (cl *claim) verifyAnswer(ans *posturev1.EnrollAnswer, nonce, tlsKey []byte) error {
	if cl.kind == "tpm" && subtle.ConstantTimeCompare(ans.GetActivatedSecret(), cl.secret) != 1 {
		return refuse("credential_activation", codes.PermissionDenied, "TPM credential activation failed: the attestation key is not resident in the TPM whose endorsement key was presented")
	}
	digest := envelope.EnrollDigest(nonce, tlsKey, cl.identityKey)
	err := envelope.VerifyProof(cl.swKey, cl.ak, digest, ans.GetSignature(), ans.GetQuote())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, envelope.ErrMalformed):
		return refuse("malformed", codes.InvalidArgument, "enrollment quote: %v", err)
	case cl.kind == "software":
		return refuse("bad_proof", codes.PermissionDenied, "the challenge signature does not verify with the identity key sent: the agent does not hold that key")
	}
	return refuse("bad_proof", codes.PermissionDenied, "enrollment quote does not verify: %v", err)
}

func parseP256(der []byte) (*ecdsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not a PKIX public key: %w", err)
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("want an ECDSA P-256 key, got %T", pub)
	}
	return k, nil
}
