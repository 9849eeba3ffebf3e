package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/internal/collectors"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// EnrollResult describes a completed enrollment.
type EnrollResult struct {
	DeviceID  string
	SPIFFEID  string
	Collector string
	Identity  string
	Assurance posturev1.IdentityAssurance
	State     posturev1.DeviceState
	// Note explains a fallback (no TPM reachable) when there was one.
	Note string
}

// EnrollOptions chooses the identity to enroll with.
type EnrollOptions struct {
	// Identity is auto (TPM when reachable, else software), tpm or software.
	Identity string
	// TPM is the TPM to use: empty for the platform TPM (/dev/tpmrm0, TBS),
	// or tcp://host:port for swtpm or a simulator.
	TPM string
	// EventLog is the TCG event log to send with quotes; empty means the
	// platform's.
	EventLog string
	// TPMDevice, when set, is used instead of opening TPM (tests hand in a
	// simulator). The agent closes it when done.
	TPMDevice transport.TPMCloser
	// Hostname is the name the device enrolls with; empty means the
	// machine's host name.
	Hostname string
}

// Enroll enrolls with a software identity; see EnrollWith.
func Enroll(ctx context.Context, stateDir, tokenText string) (*EnrollResult, error) {
	return EnrollWith(ctx, stateDir, tokenText, EnrollOptions{Identity: IdentitySoftware})
}

// EnrollWith redeems a token with the collector it names. The collector's
// CA must match the fingerprint in the token. Keys are created on first use
// and kept, so enrolling again keeps the device ID and its report chain.
func EnrollWith(ctx context.Context, stateDir, tokenText string, opts EnrollOptions) (*EnrollResult, error) {
	tok, err := token.Parse(tokenText)
	if err != nil {
		return nil, err
	}
	if err := ensureStateDir(stateDir); err != nil {
		return nil, err
	}
	id, note, err := openIdentity(stateDir, opts.Identity, opts.TPM, opts.EventLog, opts.TPMDevice)
	if err != nil {
		return nil, err
	}
	if c, ok := id.(io.Closer); ok {
		defer c.Close()
	}
	tlsKey, err := loadOrCreateKey(filepath.Join(stateDir, tlsKeyFile))
	if err != nil {
		return nil, err
	}
	tlsPub, err := x509.MarshalPKIXPublicKey(tlsKey.Public())
	if err != nil {
		return nil, fmt.Errorf("encode TLS key: %w", err)
	}

	var pinned *x509.Certificate
	// Any of the token's collectors enrolls the device: they share one
	// database and one CA.
	conn, err := collectors.Dial(tok.Addrs(), grpc.WithTransportCredentials(credentials.NewTLS(pki.PinnedTLS(tok.Fingerprint, &pinned))))
	if err != nil {
		return nil, fmt.Errorf("collector address %q: %w", tok.Addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	stream, err := posturev1.NewEnrollmentServiceClient(conn).Enroll(ctx, grpc.WaitForReady(false))
	if err != nil {
		return nil, enrollErr(tok.Addr, err)
	}
	host := opts.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	if err := stream.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
		Token: tok.Secret, Hostname: host, Platform: runtime.GOOS, TlsPublicKey: tlsPub, Identity: id.Claim(),
	}}}); err != nil {
		return nil, enrollErr(tok.Addr, recvErr(stream, err))
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, enrollErr(tok.Addr, err)
	}
	ch := resp.GetChallenge()
	if ch == nil {
		return nil, errors.New("collector did not send an enrollment challenge")
	}
	ans, err := id.Answer(ch, tlsPub)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Answer{Answer: ans}}); err != nil {
		return nil, enrollErr(tok.Addr, recvErr(stream, err))
	}
	resp, err = stream.Recv()
	if err != nil {
		return nil, enrollErr(tok.Addr, err)
	}
	res := resp.GetResult()
	if res == nil {
		return nil, errors.New("collector did not send an enrollment result")
	}
	_ = stream.CloseSend()

	cert, err := x509.ParseCertificate(res.GetCertificate())
	if err != nil {
		return nil, fmt.Errorf("device certificate from collector: %w", err)
	}
	if pinned == nil {
		return nil, errors.New("collector CA was not pinned during the handshake")
	}
	if err := pki.WriteCertificates(filepath.Join(stateDir, certFile), cert); err != nil {
		return nil, err
	}
	if err := pki.WriteCertificates(filepath.Join(stateDir, caFile), pinned); err != nil {
		return nil, err
	}
	e := enrollment{Collector: tok.Addr, Collectors: tok.Others, DeviceID: res.GetDeviceId(), SPIFFEID: res.GetSpiffeId(), TrustDomain: res.GetTrustDomain(), Identity: id.Kind(), TPM: opts.TPM, EventLog: opts.EventLog}
	if err := writeJSON(filepath.Join(stateDir, configFile), e); err != nil {
		return nil, err
	}
	// The collector's chain head is authoritative after an enrollment: a
	// device enrolling again (reinstalled agent, new key in the same TPM)
	// continues from it.
	if err := writeJSON(filepath.Join(stateDir, chainFile), chainHead{Seq: res.GetLastSeq(), Digest: res.GetLastDigest()}); err != nil {
		return nil, err
	}
	return &EnrollResult{DeviceID: e.DeviceID, SPIFFEID: e.SPIFFEID, Collector: e.Collector, Identity: e.Identity,
		Assurance: res.GetAssurance(), State: res.GetState(), Note: note}, nil
}

// recvErr surfaces the server's status when a Send fails because the server
// already ended the stream.
func recvErr(stream posturev1.EnrollmentService_EnrollClient, sendErr error) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

func enrollErr(addr string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("enroll with %s: %s", addr, st.Message())
	}
	return fmt.Errorf("enroll with %s: %w", addr, err)
}
