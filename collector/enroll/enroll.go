// Package enroll admits devices: enrollment with a join token, which proves
// the device holds its identity (a software key, or a TPM's attestation
// key, with credential activation against its endorsement key), and the
// renewal of a device's certificate over its authenticated connection.
package enroll

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/posture-project/posture/collector/fault"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/ingest"
	"github.com/posture-project/posture/collector/stats"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Store is what enrollment and renewal read and write.
type Store interface {
	Token(ctx context.Context, hash []byte) (store.Token, error)
	EKPinned(ctx context.Context, hash string) (bool, error)
	EnrollDevice(ctx context.Context, tokenHash []byte, now time.Time, d store.Device) (store.Device, store.Event, error)
	RenewCertificate(ctx context.Context, id string, askedWith, issued store.Cert, now time.Time) (store.Device, store.Event, error)
}

// Applier applies what the store committed (feed.Feed).
type Applier interface {
	Apply(ev store.Event, pre *fleet.Assessed)
}

// Config configures an Enroller.
type Config struct {
	Store       Store
	Fleet       *fleet.Fleet
	Feed        Applier
	CA          *pki.CA
	TrustDomain string
	// EKRoots are the TPM manufacturer CAs that EK certificates must
	// chain to for tpm_ek_verified; nil verifies none.
	EKRoots *x509.CertPool
	// CertTTL is the lifetime of device certificates.
	CertTTL time.Duration
	Stats   *stats.Stats
	Logger  *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// StepWait bounds the wait for each message of an enrollment, and
	// Wait the whole enrollment: a client that opens one and goes quiet
	// holds the collector's memory. Zero means 30 s and 60 s.
	StepWait, Wait time.Duration
	// Admit, when set, decides whether an enrollment from the caller of
	// ctx may begin (a peer that keeps failing may not: the error says
	// until when), names the peer for the log, and is told at the end
	// whether the enrollment failed by the peer's doing.
	Admit func(ctx context.Context) (peer string, done func(failed bool), err error)
}

// Enroller enrolls devices and renews their certificates.
type Enroller struct{ cfg Config }

// New makes an Enroller.
func New(cfg Config) *Enroller {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StepWait <= 0 {
		cfg.StepWait = 30 * time.Second
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 60 * time.Second
	}
	if cfg.Admit == nil {
		cfg.Admit = func(context.Context) (string, func(bool), error) { return "", func(bool) {}, nil }
	}
	return &Enroller{cfg: cfg}
}

// DeviceID derives a device ID from a public key in PKIX DER form: the
// software identity key, or the TPM's endorsement key. Enrolling again with
// the same key (or TPM) yields the same device.
func DeviceID(publicKey []byte) string {
	sum := sha256.Sum256(publicKey)
	return hex.EncodeToString(sum[:16])
}

func refuse(reason string, kind fault.Kind, format string, args ...any) *fault.Error {
	return fault.New(kind, reason, format, args...)
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

// EnrollStream is an enrollment as the enroller uses it.
type EnrollStream interface {
	Context() context.Context
	Send(*posturev1.EnrollResponse) error
	Recv() (*posturev1.EnrollRequest, error)
}

// Enroll runs one enrollment. A refusal is counted, logged and returned as
// a *fault.Error.
func (e *Enroller) Enroll(stream EnrollStream) error {
	peer, done, err := e.cfg.Admit(stream.Context())
	if err != nil {
		return err
	}
	// The whole enrollment is bounded too, whatever the client sends.
	ctx, cancel := context.WithTimeoutCause(stream.Context(), e.cfg.Wait,
		refuse("abandoned", fault.Timeout, "enrollment did not finish within %s; enroll again", e.cfg.Wait))
	defer cancel()
	err = e.enroll(ctx, stream)
	// Anything but success, or a failure of the collector's own (its
	// database among them), is the peer's failure.
	f, isFault := fault.As(err)
	done(err != nil && !(isFault && (f.Kind == fault.Internal || f.Kind == fault.Unavailable)))
	if isFault && f.Reason != "" {
		e.cfg.Stats.EnrollRejected(f.Reason)
		e.cfg.Logger.Warn("enrollment refused", "reason", f.Reason, "peer", peer, "detail", f.Msg)
	}
	return err
}

func (e *Enroller) enroll(ctx context.Context, stream EnrollStream) error {
	first, err := recvWithin(ctx, stream.Recv, e.cfg.StepWait, "first enrollment message (EnrollBegin)", "enroll again")
	if err != nil {
		return err
	}
	begin := first.GetBegin()
	if begin == nil {
		return refuse("malformed", fault.Invalid, "enrollment must start with EnrollBegin")
	}
	for field, v := range map[string]string{"hostname": begin.GetHostname(), "platform": begin.GetPlatform()} {
		if len(v) > envelope.MaxNameLen {
			return refuse("malformed", fault.Invalid, "%s is %d bytes; at most %d", field, len(v), envelope.MaxNameLen)
		}
	}
	tlsKey, err := ingest.ParseP256(begin.GetTlsPublicKey())
	if err != nil {
		return refuse("malformed", fault.Invalid, "tls_public_key: %v", err)
	}
	tokenHash := token.Hash(begin.GetToken())
	if err := e.checkToken(ctx, tokenHash); err != nil {
		return err
	}
	cl, err := e.checkClaim(ctx, begin.GetIdentity())
	if err != nil {
		return err
	}
	if revoked, why := e.cfg.Fleet.Revoked(cl.deviceID); revoked {
		return refuse("device_revoked", fault.Denied, "device %s was revoked (%s) and cannot enroll again with the same identity; remove the agent's state directory to make a new software identity", cl.deviceID, why)
	}

	// The challenge: a fresh nonce to sign (software) or quote (TPM), which
	// also binds the TLS key the certificate will name, and for a TPM a
	// credential only the TPM holding the EK can activate, for this AK.
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return fault.Wrap(fault.Internal, "", err, "make challenge")
	}
	ch := &posturev1.EnrollChallenge{Nonce: nonce}
	if cl.kind == "tpm" {
		cl.secret = make([]byte, 32)
		if _, err := rand.Read(cl.secret); err != nil {
			return fault.Wrap(fault.Internal, "", err, "make credential")
		}
		blob, encSecret, err := attest.MakeCredential(cl.ekPublic, cl.ak.Name, cl.secret)
		if err != nil {
			return refuse("malformed", fault.Invalid, "cannot make a credential for this EK: %v", err)
		}
		ch.Tpm = &posturev1.TPMCredential{CredentialBlob: blob, EncryptedSecret: encSecret}
	}
	if err := stream.Send(&posturev1.EnrollResponse{Step: &posturev1.EnrollResponse_Challenge{Challenge: ch}}); err != nil {
		return err
	}
	msg, err := recvWithin(ctx, stream.Recv, e.cfg.StepWait, "answer to the enrollment challenge", "enroll again")
	if err != nil {
		return err
	}
	ans := msg.GetAnswer()
	if ans == nil {
		return refuse("malformed", fault.Invalid, "expected EnrollAnswer after the challenge")
	}
	if err := cl.verifyAnswer(ans, nonce, begin.GetTlsPublicKey()); err != nil {
		return err
	}

	spiffe := pki.SPIFFEID(e.cfg.TrustDomain, pki.RoleDevice, cl.deviceID)
	cert, err := e.cfg.CA.IssueClient(tlsKey, spiffe, e.cfg.CertTTL)
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "issue device certificate")
	}
	now := e.cfg.Now()
	dev, ev, err := e.cfg.Store.EnrollDevice(ctx, tokenHash, now, store.Device{
		ID:            cl.deviceID,
		Hostname:      begin.GetHostname(),
		Platform:      begin.GetPlatform(),
		Identity:      cl.kind,
		IdentityKey:   cl.identityKey,
		Assurance:     int32(cl.assurance),
		State:         int32(cl.state),
		StateReason:   cl.stateReason,
		EnrolledAt:    now,
		CertSerial:    pki.SerialHex(cert),
		CertKeySHA256: pki.KeySHA256(cert),
		EKSHA256:      cl.ekHash,
	})
	switch {
	case errors.Is(err, store.ErrTokenUsedUp):
		return refuse("token_used", fault.Unauthenticated, "enrollment token was already used; ask your admin for a new one")
	case errors.Is(err, store.ErrTokenExpired):
		return refuse("token_expired", fault.Unauthenticated, "enrollment token expired; ask your admin for a new one")
	case errors.Is(err, store.ErrTokenUnknown):
		return refuse("token_unknown", fault.Unauthenticated, "enrollment token is not known to this collector")
	case errors.Is(err, store.ErrDeviceRevoked):
		return refuse("device_revoked", fault.Denied, "device %s was revoked and cannot enroll again with the same identity", cl.deviceID)
	case errors.Is(err, store.ErrIdentityKind):
		return refuse("identity_kind", fault.Denied, "device %s enrolled with another kind of identity than this %s claim; a device keeps its kind of identity: revoke it and enroll this machine as a new device", cl.deviceID, cl.kind)
	case err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return context.Cause(ctx) // ended before it was stored
	case err != nil:
		// Nothing was stored: the token is not used, and the same
		// enrollment succeeds once the database can be written.
		return fault.Wrap(fault.Unavailable, "storage", err, "the collector could not store the enrollment (the token is not used up); enroll again later")
	}
	e.cfg.Feed.Apply(ev, nil)
	e.cfg.Stats.Enrolled()
	e.cfg.Logger.Info("device enrolled", "device", dev.ID, "hostname", dev.Hostname, "platform", dev.Platform,
		"identity", dev.Identity, "assurance", cl.assurance.String(), "state", posturev1.DeviceState(dev.State).String())
	return stream.Send(&posturev1.EnrollResponse{Step: &posturev1.EnrollResponse_Result{Result: &posturev1.EnrollResult{
		DeviceId:       dev.ID,
		SpiffeId:       spiffe.String(),
		Certificate:    cert.Raw,
		CaCertificates: [][]byte{e.cfg.CA.Cert.Raw},
		TrustDomain:    e.cfg.TrustDomain,
		Assurance:      posturev1.IdentityAssurance(dev.Assurance),
		State:          posturev1.DeviceState(dev.State),
		LastSeq:        dev.LastSeq,
		LastDigest:     dev.LastDigest,
	}}})
}

// checkToken refuses an unknown, expired or used-up token before any work
// is done; the store checks again when it consumes the token.
func (e *Enroller) checkToken(ctx context.Context, hash []byte) error {
	tok, err := e.cfg.Store.Token(ctx, hash)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return refuse("token_unknown", fault.Unauthenticated, "enrollment token is not known to this collector; check that you copied the whole token, or ask your admin for a new one")
	case err != nil:
		return fault.Wrap(fault.Internal, "", err, "look up token")
	}
	switch store.CheckToken(tok, e.cfg.Now()) {
	case store.ErrTokenExpired:
		return refuse("token_expired", fault.Unauthenticated, "enrollment token expired at %s; ask your admin for a new one (posture-collector token create)", tok.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
	case store.ErrTokenUsedUp:
		return refuse("token_used", fault.Unauthenticated, "enrollment token was already used (it allowed %d enrollment(s)); ask your admin for a new one", tok.Uses)
	}
	return nil
}

// checkClaim checks what can be checked before the challenge.
func (e *Enroller) checkClaim(ctx context.Context, id *posturev1.IdentityClaim) (*claim, error) {
	if sw := id.GetSoftware(); sw != nil {
		key, err := ingest.ParseP256(sw.GetPublicKey())
		if err != nil {
			return nil, refuse("malformed", fault.Invalid, "identity public key: %v", err)
		}
		// One key, one encoding, one device ID: the parser tolerates
		// extra elements that would give the same key another ID.
		if canonical, err := x509.MarshalPKIXPublicKey(key); err != nil || !bytes.Equal(canonical, sw.GetPublicKey()) {
			return nil, refuse("malformed", fault.Invalid, "identity public key is not in canonical PKIX DER form")
		}
		return &claim{
			kind: "software", deviceID: DeviceID(sw.GetPublicKey()), identityKey: sw.GetPublicKey(), swKey: key,
			assurance: posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE, state: posturev1.DeviceState_DEVICE_STATE_ACTIVE,
		}, nil
	}
	t := id.GetTpm()
	if t == nil {
		return nil, refuse("malformed", fault.Invalid, "identity: send a software key or a TPM identity")
	}
	ak, err := attest.ParseAK(t.GetAkPublic())
	if err != nil {
		return nil, refuse("bad_ak", fault.Invalid, "attestation key refused: %v", err)
	}
	ekHash, err := attest.EKPublicHash(t.GetEkPublic())
	if err != nil {
		return nil, refuse("malformed", fault.Invalid, "endorsement key: %v", err)
	}
	cl := &claim{kind: "tpm", deviceID: ekHash[:32], identityKey: t.GetAkPublic(), ak: ak, ekPublic: t.GetEkPublic(), ekHash: ekHash,
		state: posturev1.DeviceState_DEVICE_STATE_ACTIVE}

	// EK trust: a certificate chaining to a manufacturer root, else a pin,
	// else an admin decides.
	var why string
	switch {
	case len(t.GetEkCertificate()) == 0:
		why = "the TPM has no EK certificate"
	case e.cfg.EKRoots == nil:
		why = "no ekcert_roots are configured"
	default:
		if _, err := attest.VerifyEKCertificate(t.GetEkCertificate(), t.GetEkPublic(), e.cfg.EKRoots); err != nil {
			why = fmt.Sprintf("its EK certificate does not verify: %v", err)
		} else {
			cl.assurance = posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED
			return cl, nil
		}
	}
	pinned, err := e.cfg.Store.EKPinned(ctx, ekHash)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "look up pinned EKs")
	}
	if pinned {
		cl.assurance = posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED
		return cl, nil
	}
	cl.state = posturev1.DeviceState_DEVICE_STATE_PENDING
	cl.stateReason = fmt.Sprintf("TPM endorsement key %s is neither verified (%s) nor pinned; an admin approves it with posture-collector devices approve %s", ekHash, why, cl.deviceID)
	return cl, nil
}

// verifyAnswer checks the proof of possession.
func (cl *claim) verifyAnswer(ans *posturev1.EnrollAnswer, nonce, tlsKey []byte) error {
	if cl.kind == "tpm" && subtle.ConstantTimeCompare(ans.GetActivatedSecret(), cl.secret) != 1 {
		return refuse("credential_activation", fault.Denied, "TPM credential activation failed: the attestation key is not resident in the TPM whose endorsement key was presented")
	}
	digest := envelope.EnrollDigest(nonce, tlsKey, cl.identityKey)
	err := envelope.VerifyProof(cl.swKey, cl.ak, digest, ans.GetSignature(), ans.GetQuote())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, envelope.ErrMalformed):
		return refuse("malformed", fault.Invalid, "enrollment quote: %v", err)
	case cl.kind == "software":
		return refuse("bad_proof", fault.Denied, "the challenge signature does not verify with the identity key sent: the agent does not hold that key")
	}
	return refuse("bad_proof", fault.Denied, "enrollment quote does not verify: %v", err)
}
