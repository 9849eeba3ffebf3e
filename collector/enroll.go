package collector

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type enrollService struct {
	posturev1.UnimplementedEnrollmentServiceServer
	c *Collector
}

// DeviceID derives a device ID from its identity public key (PKIX DER), so
// re-enrolling the same key yields the same device.
func DeviceID(identityKey []byte) string {
	sum := sha256.Sum256(identityKey)
	return hex.EncodeToString(sum[:16])
}

// refuse counts, logs and returns an enrollment refusal.
func (s *enrollService) refuse(reason string, code codes.Code, format string, args ...any) error {
	s.c.stats.enrollRejected(reason)
	s.c.log.Warn("enrollment refused", "reason", reason, "detail", fmt.Sprintf(format, args...))
	return status.Errorf(code, format, args...)
}

func (s *enrollService) Enroll(stream posturev1.EnrollmentService_EnrollServer) error {
	c := s.c
	first, err := stream.Recv()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "enrollment stream ended before it began: %v", err)
	}
	begin := first.GetBegin()
	if begin == nil {
		return s.refuse("malformed", codes.InvalidArgument, "enrollment must start with EnrollBegin")
	}
	tlsKey, err := parseP256(begin.GetTlsPublicKey())
	if err != nil {
		return s.refuse("malformed", codes.InvalidArgument, "tls_public_key: %v", err)
	}
	sw := begin.GetIdentity().GetSoftware()
	if sw == nil {
		return s.refuse("malformed", codes.InvalidArgument, "identity: this collector supports software identities (an ECDSA P-256 key); none was sent")
	}
	idKey, err := parseP256(sw.GetPublicKey())
	if err != nil {
		return s.refuse("malformed", codes.InvalidArgument, "identity public key: %v", err)
	}
	tokenHash := token.Hash(begin.GetToken())
	tok, err := c.store.Token(stream.Context(), tokenHash)
	now := c.cfg.Now()
	switch {
	case errors.Is(err, store.ErrNotFound):
		return s.refuse("token_unknown", codes.Unauthenticated, "enrollment token is not known to this collector; check that you copied the whole token, or ask your admin for a new one")
	case err != nil:
		return status.Errorf(codes.Internal, "look up token: %v", err)
	case !tok.ExpiresAt.After(now):
		return s.refuse("token_expired", codes.Unauthenticated, "enrollment token expired at %s; ask your admin for a new one (posture-collector token create)", tok.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
	case tok.Used >= tok.Uses:
		return s.refuse("token_used", codes.Unauthenticated, "enrollment token was already used (it allowed %d enrollment(s)); ask your admin for a new one", tok.Uses)
	}
	id := DeviceID(sw.GetPublicKey())
	if e, ok := c.fleet.get(id); ok && e.dev.State == int32(posturev1.DeviceState_DEVICE_STATE_REVOKED) {
		return s.refuse("device_revoked", codes.PermissionDenied, "device %s was revoked (%s) and cannot enroll again with the same identity key; remove the agent's state directory to make a new identity", id, e.dev.StateReason)
	}

	// Proof of possession: the agent signs a fresh challenge that also binds
	// the TLS key the certificate will name.
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return status.Errorf(codes.Internal, "make challenge: %v", err)
	}
	if err := stream.Send(&posturev1.EnrollResponse{Step: &posturev1.EnrollResponse_Challenge{Challenge: &posturev1.EnrollChallenge{Nonce: nonce}}}); err != nil {
		return err
	}
	msg, err := stream.Recv()
	if err == io.EOF {
		return s.refuse("abandoned", codes.InvalidArgument, "agent ended enrollment before answering the challenge")
	} else if err != nil {
		return err
	}
	ans := msg.GetAnswer()
	if ans == nil {
		return s.refuse("malformed", codes.InvalidArgument, "expected EnrollAnswer after the challenge")
	}
	if !ecdsa.VerifyASN1(idKey, envelope.EnrollDigest(nonce, begin.GetTlsPublicKey(), sw.GetPublicKey()), ans.GetSignature()) {
		return s.refuse("bad_proof", codes.PermissionDenied, "the challenge signature does not verify with the identity key sent: the agent does not hold that key")
	}

	spiffe := pki.SPIFFEID(c.cfg.TrustDomain, pki.RoleDevice, id)
	cert, err := c.ca.IssueClient(tlsKey, spiffe, c.cfg.DeviceCertTTL)
	if err != nil {
		return status.Errorf(codes.Internal, "issue device certificate: %v", err)
	}
	dev, err := c.store.EnrollDevice(stream.Context(), tokenHash, now, store.Device{
		ID:          id,
		Hostname:    begin.GetHostname(),
		Platform:    begin.GetPlatform(),
		Identity:    "software",
		IdentityKey: sw.GetPublicKey(),
		Assurance:   int32(posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE),
		State:       int32(posturev1.DeviceState_DEVICE_STATE_ACTIVE),
		EnrolledAt:  now,
		CertSerial:  cert.SerialNumber.Text(16),
	})
	switch {
	case errors.Is(err, store.ErrTokenUsedUp):
		return s.refuse("token_used", codes.Unauthenticated, "enrollment token was already used; ask your admin for a new one")
	case errors.Is(err, store.ErrTokenExpired):
		return s.refuse("token_expired", codes.Unauthenticated, "enrollment token expired; ask your admin for a new one")
	case errors.Is(err, store.ErrTokenUnknown):
		return s.refuse("token_unknown", codes.Unauthenticated, "enrollment token is not known to this collector")
	case errors.Is(err, store.ErrDeviceRevoked):
		return s.refuse("device_revoked", codes.PermissionDenied, "device %s was revoked and cannot enroll again with the same identity key", id)
	case err != nil:
		return status.Errorf(codes.Internal, "store enrollment: %v", err)
	}
	if err := c.fleet.put(dev); err != nil {
		return status.Errorf(codes.Internal, "load enrolled device: %v", err)
	}
	c.publish(id, "enrolled", true)
	c.stats.enrolled()
	c.log.Info("device enrolled", "device", id, "hostname", dev.Hostname, "platform", dev.Platform, "identity", dev.Identity)
	return stream.Send(&posturev1.EnrollResponse{Step: &posturev1.EnrollResponse_Result{Result: &posturev1.EnrollResult{
		DeviceId:       id,
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
