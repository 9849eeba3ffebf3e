package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Token, enrollment, first report, listing with a score, and a gateway's
// decisions over mTLS: allowed for the level the device meets, denied with
// reasons for the one it does not.
func TestEnrollReportDecide(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: false}, time.Hour)

	eventually(t, "first report stored", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= 1
	})
	d, _ := e.device(id)
	// disk_encryption (30) fails, the rest pass: 70.
	if d.GetScore() != 70 {
		t.Errorf("score = %d, want 70; checks: %v", d.GetScore(), d.GetChecks())
	}
	if got := d.GetDevice().GetAssurance(); got != posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE {
		t.Errorf("assurance = %v, want software", got)
	}

	gw := e.gateway("edge-1")
	spiffe := pki.SPIFFEID(trustDomain, pki.RoleDevice, id).String()
	basic, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{SpiffeId: spiffe, AccessLevel: "basic"})
	if err != nil {
		t.Fatalf("CheckAccess basic: %v", err)
	}
	if !basic.GetAllowed() || len(basic.GetReasons()) != 0 {
		t.Errorf("basic: allowed=%v reasons=%v, want allowed without reasons", basic.GetAllowed(), basic.GetReasons())
	}
	trusted, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"})
	if err != nil {
		t.Fatalf("CheckAccess trusted: %v", err)
	}
	if trusted.GetAllowed() {
		t.Fatal("trusted allowed for a device without disk encryption")
	}
	joined := strings.Join(trusted.GetReasons(), "\n")
	for _, want := range []string{"score 70 is below 80", "trusted requires disk_encryption"} {
		if !strings.Contains(joined, want) {
			t.Errorf("trusted reasons %q lack %q", joined, want)
		}
	}
	if len(trusted.GetFailedChecks()) != 1 || trusted.GetFailedChecks()[0].GetName() != "disk_encryption" || trusted.GetFailedChecks()[0].GetRemediation() == "" {
		t.Errorf("failed checks = %v, want disk_encryption with a remediation", trusted.GetFailedChecks())
	}
	unknown, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "no-such-level"})
	if err != nil || unknown.GetAllowed() {
		t.Errorf("unknown level: allowed=%v err=%v, want a denial", unknown.GetAllowed(), err)
	}

	// Silence decays trust: past expiry the score is zero and basic is denied.
	e.clock.Advance(25 * time.Hour)
	late, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	if late.GetAllowed() || late.GetScore() != 0 || !strings.Contains(strings.Join(late.GetReasons(), " "), "past expire_after 24h0m0s") {
		t.Errorf("after 25h of silence: allowed=%v score=%d reasons=%v, want denied at 0 with the expiry as reason", late.GetAllowed(), late.GetScore(), late.GetReasons())
	}
}

// Revocation closes the device's stream, refuses its next report, and
// denies every level at once.
func TestRevoke(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "stream open and report stored", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= 1 && e.stats().GetStreamsOpen() == 1
	})
	gw := e.gateway("edge")
	if r, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"}); err != nil || !r.GetAllowed() {
		t.Fatalf("before revocation: allowed=%v err=%v reasons=%v", r.GetAllowed(), err, r.GetReasons())
	}

	if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "laptop stolen"}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	r, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetAllowed() || r.GetState() != posturev1.DeviceState_DEVICE_STATE_REVOKED || !strings.Contains(strings.Join(r.GetReasons(), " "), "laptop stolen") {
		t.Errorf("after revocation: allowed=%v state=%v reasons=%v", r.GetAllowed(), r.GetState(), r.GetReasons())
	}
	eventually(t, "stream closed", func() bool { return e.stats().GetStreamsOpen() == 0 })

	// The next report, on a new stream with the device's certificate, is refused.
	cert, _ := deviceCreds(t, stateDir)
	st, err := posturev1.NewReportServiceClient(e.dial(&cert)).StreamReports(context.Background())
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "revoked") {
		t.Errorf("report stream after revocation: %v, want PermissionDenied naming the revocation", err)
	}
	if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "again"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second revoke: %v, want FailedPrecondition", err)
	}
}

// Bad tokens fail with a message that says what to do, and enroll nothing.
func TestEnrollmentRefusals(t *testing.T) {
	e := startCollector(t)
	used := e.token(time.Hour, 1)
	if _, err := agent.Enroll(context.Background(), t.TempDir(), used); err != nil {
		t.Fatalf("first use: %v", err)
	}
	expired := e.token(time.Minute, 1)
	wrongCA, err := token.Parse(e.token(time.Hour, 1))
	if err != nil {
		t.Fatal(err)
	}
	wrongCA.Fingerprint = strings.Repeat("ab", 32)
	e.clock.Advance(2 * time.Minute) // expires the one-minute token only

	tests := []struct {
		name, token, want, counter string
	}{
		{"used twice", used, "already used", "token_used"},
		{"expired", expired, "expired", "token_expired"},
		{"CA fingerprint mismatch", wrongCA.String(), "pins CA fingerprint " + wrongCA.Fingerprint, ""},
		{"not a token", "hello", "not a Posture enrollment token", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := agent.Enroll(context.Background(), dir, tt.token)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("enroll: %v, want an error containing %q", err, tt.want)
			}
			if tt.counter != "" && e.stats().GetEnrollmentsRejected()[tt.counter] == 0 {
				t.Errorf("refusal not counted under %s: %v", tt.counter, e.stats().GetEnrollmentsRejected())
			}
		})
	}
	// A hostname no machine has is refused before the token is spent.
	long := e.token(time.Hour, 1)
	parsed, err := token.Parse(long)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	st, err := posturev1.NewEnrollmentServiceClient(e.dial(nil)).Enroll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
		Token: parsed.Secret, Hostname: strings.Repeat("h", 300), Platform: "linux", TlsPublicKey: pub,
		Identity: &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Software{Software: &posturev1.SoftwareIdentity{PublicKey: pub}}},
	}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "hostname is 300 bytes; at most 256") {
		t.Errorf("enrollment with a 300-byte hostname: %v; want InvalidArgument naming the limit", err)
	}
	if _, err := agent.Enroll(context.Background(), t.TempDir(), long); err != nil {
		t.Errorf("the token after the refused enrollment: %v; want it unspent", err)
	}
	if n := len(e.devices()); n != 2 {
		t.Errorf("%d devices enrolled, want the first and the last", n)
	}
}

// reportClient speaks the report protocol by hand, to send what an honest
// agent never would.
type reportClient struct {
	t      testing.TB
	st     posturev1.ReportService_StreamReportsClient
	key    *ecdsa.PrivateKey
	id     string
	nonce  []byte
	seq    uint64
	digest []byte
}

func openReports(t testing.TB, e *env, cert tls.Certificate, key *ecdsa.PrivateKey, id string) *reportClient {
	t.Helper()
	c, err := startReports(e.dial(&cert), key, id)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	return c
}

// startReports opens a report stream and reads the collector's welcome.
func startReports(conn *grpc.ClientConn, key *ecdsa.PrivateKey, id string) (*reportClient, error) {
	st, err := posturev1.NewReportServiceClient(conn).StreamReports(context.Background())
	if err != nil {
		return nil, err
	}
	m, err := st.Recv()
	if err != nil {
		return nil, fmt.Errorf("welcome: %w", err)
	}
	w := m.GetWelcome()
	return &reportClient{st: st, key: key, id: id, nonce: w.GetNonce(), seq: w.GetLastSeq(), digest: w.GetLastDigest()}, nil
}

// next signs the next report in the chain with the current nonce.
func (c *reportClient) next() *posturev1.SignedReport {
	c.t.Helper()
	return c.nextAt(time.Now())
}

// nextAt is next for a report created at the given time.
func (c *reportClient) nextAt(created time.Time) *posturev1.SignedReport {
	c.t.Helper()
	return c.nextWith(created, nil)
}

// nextWith is nextAt for a report edit changes first.
func (c *reportClient) nextWith(created time.Time, edit func(*posturev1.PostureReport)) *posturev1.SignedReport {
	c.t.Helper()
	r := healthyReport(true, "hand")
	if edit != nil {
		edit(r)
	}
	r.DeviceId, r.Seq, r.PrevDigest, r.CreatedAt = c.id, c.seq+1, c.digest, timestamppb.New(created)
	body, err := proto.Marshal(r)
	if err != nil {
		c.t.Fatal(err)
	}
	sr, err := envelope.SignSoftware(c.key, c.nonce, body)
	if err != nil {
		c.t.Fatal(err)
	}
	return sr
}

// send sends a report and returns the collector's answer, keeping the chain
// head and nonce current.
func (c *reportClient) send(sr *posturev1.SignedReport) *posturev1.CollectorMessage {
	c.t.Helper()
	if err := c.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: sr}}); err != nil {
		c.t.Fatal(err)
	}
	m, err := c.st.Recv()
	if err != nil {
		c.t.Fatalf("answer: %v", err)
	}
	if a := m.GetAck(); a != nil {
		c.seq, c.digest, c.nonce = a.GetSeq(), a.GetDigest(), a.GetNextNonce()
	} else {
		c.nonce = m.GetRejected().GetNextNonce()
	}
	return m
}

// Reports that are not what the device signed for this stream are rejected,
// each with its own reason, counted, and never stored.
func TestReportRejections(t *testing.T) {
	e := startCollector(t)
	dirA, idA := e.enroll()
	dirB, idB := e.enroll()
	certA, keyA := deviceCreds(t, dirA)
	certB, keyB := deviceCreds(t, dirB)

	a := openReports(t, e, certA, keyA, idA)
	good := a.next()
	if m := a.send(good); m.GetAck() == nil {
		t.Fatalf("honest report: %v", m)
	}
	b := openReports(t, e, certB, keyB, idB)
	fromB := b.next()

	tests := []struct {
		name   string
		report func() *posturev1.SignedReport
		want   posturev1.RejectReason
	}{
		{"bad signature", func() *posturev1.SignedReport {
			sr := a.next()
			sig := sr.GetSoftware().GetSignature()
			sig[len(sig)-1] ^= 0xff
			return sr
		}, posturev1.RejectReason_REJECT_REASON_BAD_SIGNATURE},
		{"changed after signing", func() *posturev1.SignedReport {
			sr := a.next()
			sr.Report = append(sr.Report, 0x50, 0x01) // an extra field
			return sr
		}, posturev1.RejectReason_REJECT_REASON_BAD_SIGNATURE},
		{"replayed report", func() *posturev1.SignedReport { return good }, posturev1.RejectReason_REJECT_REASON_REPLAY},
		{"nonce never issued", func() *posturev1.SignedReport {
			saved := a.nonce
			a.nonce = make([]byte, 32)
			rand.Read(a.nonce)
			sr := a.next()
			a.nonce = saved
			return sr
		}, posturev1.RejectReason_REJECT_REASON_UNKNOWN_NONCE},
		{"another device's report", func() *posturev1.SignedReport {
			// B's genuine report, with this stream's nonce, re-signed by B.
			body := fromB.GetReport()
			sr, err := envelope.SignSoftware(keyB, a.nonce, body)
			if err != nil {
				t.Fatal(err)
			}
			return sr
		}, posturev1.RejectReason_REJECT_REASON_DEVICE_MISMATCH},
		{"signed by another device's key", func() *posturev1.SignedReport {
			sr := a.next()
			resigned, err := envelope.SignSoftware(keyB, sr.GetNonce(), sr.GetReport())
			if err != nil {
				t.Fatal(err)
			}
			return resigned
		}, posturev1.RejectReason_REJECT_REASON_BAD_SIGNATURE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.stats()
			m := a.send(tt.report())
			rej := m.GetRejected()
			if rej == nil {
				t.Fatalf("collector accepted it: %v", m)
			}
			if rej.GetReason() != tt.want || rej.GetMessage() == "" {
				t.Errorf("reason = %v (%q), want %v with a message", rej.GetReason(), rej.GetMessage(), tt.want)
			}
			after := e.stats()
			name := strings.ToLower(strings.TrimPrefix(tt.want.String(), "REJECT_REASON_"))
			if after.GetReportsRejected()[name] != before.GetReportsRejected()[name]+1 {
				t.Errorf("rejection not counted under %s: before %v after %v", name, before.GetReportsRejected(), after.GetReportsRejected())
			}
			if after.GetReportsAccepted() != before.GetReportsAccepted() {
				t.Errorf("accepted count moved from %d to %d", before.GetReportsAccepted(), after.GetReportsAccepted())
			}
		})
	}
	// The stream is still usable and the chain intact: the next honest report lands.
	if m := a.send(a.next()); m.GetAck() == nil {
		t.Fatalf("honest report after rejections: %v", m)
	}
	d, err := e.device(idA)
	if err != nil || d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device A: %v %v, want still active", d.GetDevice(), err)
	}

	e.stop()
	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for id, want := range map[string]int{idA: 2, idB: 0} {
		if n, err := st.CountReports(context.Background(), id); err != nil || n != want {
			t.Errorf("device %s: %d reports stored (%v), want %d", id, n, err, want)
		}
	}
}

// A report whose chain does not continue from the stored head marks the
// device suspect: two holders of one key, or rolled-back agent state.
func TestBrokenChainMarksSuspect(t *testing.T) {
	tests := []struct {
		name       string
		breakChain func(*reportClient)
	}{
		{"prev_digest does not match", func(c *reportClient) { c.digest = []byte("not the stored head") }},
		{"sequence number reused", func(c *reportClient) { c.seq-- }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startCollector(t)
			dir, id := e.enroll()
			cert, key := deviceCreds(t, dir)
			a := openReports(t, e, cert, key, id)
			if m := a.send(a.next()); m.GetAck() == nil {
				t.Fatalf("honest report: %v", m)
			}
			tt.breakChain(a)
			m := a.send(a.next())
			if m.GetRejected().GetReason() != posturev1.RejectReason_REJECT_REASON_CHAIN_BROKEN {
				t.Fatalf("answer = %v, want CHAIN_BROKEN", m)
			}
			r, err := e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
			if err != nil {
				t.Fatal(err)
			}
			if r.GetAllowed() || r.GetState() != posturev1.DeviceState_DEVICE_STATE_SUSPECT {
				t.Errorf("after a broken chain: allowed=%v state=%v, want denied and suspect", r.GetAllowed(), r.GetState())
			}
		})
	}
}

// The collector stops while the agent keeps measuring; after a restart every
// spooled report arrives exactly once, in order.
func TestSpoolSurvivesCollectorOutage(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	m := &fixedMeasurer{encrypted: true}
	stopAgent := runAgent(t, stateDir, m, 20*time.Millisecond)
	eventually(t, "reports flowing", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= 3
	})

	e.stop()
	during := m.count()
	eventually(t, "agent measuring while the collector is down", func() bool { return m.count() >= during+20 })
	e.start()
	eventually(t, "spool drained", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= uint64(during+20)
	})
	stopAgent()
	measured := m.count()
	e.stop()

	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reports, err := st.Reports(context.Background(), id, 100000)
	if err != nil {
		t.Fatal(err)
	}
	// Newest first: walk from the oldest.
	var kernels []string
	for i := len(reports) - 1; i >= 0; i-- {
		var r posturev1.PostureReport
		if err := proto.Unmarshal(reports[i].Body, &r); err != nil {
			t.Fatal(err)
		}
		if want := uint64(len(reports) - i); r.GetSeq() != want {
			t.Fatalf("report %d has seq %d: the chain has a gap", want, r.GetSeq())
		}
		kernels = append(kernels, r.GetOs().GetKernelVersion())
	}
	// Measurements are numbered m-000001…; each must appear once, in order.
	// The last few may still be spooled when the agent stopped.
	for i, k := range kernels {
		if want := fmt.Sprintf("m-%06d", i+1); k != want {
			t.Fatalf("stored report %d carries measurement %s, want %s (lost, duplicated or reordered)", i+1, k, want)
		}
	}
	if len(kernels) < during+20 || len(kernels) > measured {
		t.Errorf("%d reports stored; %d measured, %d before the outage", len(kernels), measured, during)
	}
}

// A collector restored from an older backup has lost acknowledged reports;
// its agents continue from the chain head it still has, and the device stays
// active.
func TestCollectorRollback(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	stopAgent := runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	lastSeq := func() uint64 {
		d, err := e.device(id)
		if err != nil {
			return 0
		}
		return d.GetDevice().GetLastSeq()
	}
	eventually(t, "two reports", func() bool { return lastSeq() >= 2 })
	stopAgent()
	e.stop()
	db := filepath.Join(e.dataDir, "posture.db")
	backup, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	e.start()
	stopAgent = runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	eventually(t, "more reports", func() bool { return lastSeq() >= 8 })
	stopAgent()
	e.stop()

	if err := os.WriteFile(db, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	e.start()
	restored := lastSeq()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	eventually(t, "reports accepted after the rollback", func() bool { return lastSeq() >= restored+3 })
	d, _ := e.device(id)
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device state after a collector rollback = %v (%s), want active", d.GetDevice().GetState(), d.GetDevice().GetStateReason())
	}
	if rej := e.stats().GetReportsRejected(); len(rej) != 0 {
		t.Errorf("reports rejected after the rollback: %v", rej)
	}
}

// Enrolling again with the same key keeps the device and its report chain:
// the agent continues from the collector's head.
func TestReEnrollKeepsChain(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	stop := runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	eventually(t, "reports", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 3 })
	stop()
	// A reinstalled agent that kept its keys but lost its chain head.
	if err := os.Remove(filepath.Join(stateDir, "chain.json")); err != nil {
		t.Fatal(err)
	}
	res, err := agent.Enroll(context.Background(), stateDir, e.token(time.Hour, 1))
	if err != nil || res.DeviceID != id {
		t.Fatalf("re-enroll: %v (%+v), want device %q", err, res, id)
	}
	d, _ := e.device(id)
	before := d.GetDevice().GetLastSeq()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	eventually(t, "reports after re-enrollment", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= before+2 })
	if d, _ := e.device(id); d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE || len(e.devices()) != 1 {
		t.Errorf("after re-enrollment: state %v, %d devices; want one active device", d.GetDevice().GetState(), len(e.devices()))
	}
}

// Two streams of one identity (a cloned key, or an agent that reconnected
// while its old connection lingers) never both store: opening the second
// ends the first, so of two reports for the same sequence number sent on
// both at once, only the newer stream's is acknowledged, and nothing forks.
func TestConcurrentStreamsOfOneIdentity(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	a := openReports(t, e, cert, key, id)
	b := openReports(t, e, cert, key, id)
	// Both sign seq 1 on the same chain head; send them at once.
	ra, rb := a.next(), b.next()
	type answer struct {
		m   *posturev1.CollectorMessage
		err error
	}
	send := func(c *reportClient, sr *posturev1.SignedReport) answer {
		// A stream the server ended refuses the send with io.EOF; its
		// status comes from Recv.
		if err := c.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: sr}}); err != nil && err != io.EOF {
			return answer{err: err}
		}
		m, err := c.st.Recv()
		return answer{m, err}
	}
	fromA, fromB := make(chan answer, 1), make(chan answer, 1)
	go func() { fromA <- send(a, ra) }()
	go func() { fromB <- send(b, rb) }()
	if got := <-fromA; status.Code(got.err) != codes.Aborted {
		t.Errorf("report on the older stream: %v, %v; want the stream ended (Aborted)", got.m, got.err)
	}
	if got := <-fromB; got.err != nil || got.m.GetAck().GetSeq() != 1 {
		t.Errorf("report on the newer stream: %v, %v; want acknowledged", got.m, got.err)
	}
	e.wantActiveAt(t, id, 1)
}

// A device's newer report stream replaces its older ones: a report held
// back on an old connection (by a network in between) and released after
// the agent reconnected and sent the same sequence number again is not
// stored and does not make the device suspect.
func TestNewerStreamSupersedesOlder(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	a := openReports(t, e, cert, key, id)
	if m := a.send(a.next()); m.GetAck() == nil {
		t.Fatalf("report 1: %v", m)
	}
	held := a.next() // report 2, for the old stream's nonce

	b := openReports(t, e, cert, key, id) // the agent reconnects
	if b.seq != 1 {
		t.Fatalf("welcome on the new stream says head %d, want 1", b.seq)
	}
	if m := b.send(b.next()); m.GetAck().GetSeq() != 2 {
		t.Fatalf("report 2 on the new stream: %v", m)
	}
	// The held report is released on the old connection.
	_ = a.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: held}})
	if _, err := a.st.Recv(); status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "newer report stream") {
		t.Errorf("old stream after a newer one opened: %v; want Aborted, replaced by a newer stream", err)
	}
	e.wantActiveAt(t, id, 2) // the held report was not stored
	// The new stream goes on.
	if m := b.send(b.next()); m.GetAck().GetSeq() != 3 {
		t.Errorf("report 3 on the new stream: %v", m)
	}
}

// Trust decays from when a report's measurement was taken, not from when it
// arrived: an agent that kept a measurement while offline and signs it on
// reconnecting sends old evidence.
func TestFreshnessFromMeasurement(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	c := openReports(t, e, cert, key, id)
	observedAt := func(at time.Time) func(*posturev1.PostureReport) {
		return func(r *posturev1.PostureReport) {
			for _, m := range []*posturev1.SignalMeta{r.Os.Meta, r.Disk.Meta, r.SecureBoot.Meta, r.Updates.Meta, r.Firewall.Meta, r.ScreenLock.Meta} {
				m.ObservedAt = timestamppb.New(at)
			}
		}
	}
	posture := func() *posturev1.DevicePosture {
		t.Helper()
		p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	now := time.Now()
	if m := c.send(c.nextWith(now, observedAt(now.Add(-10*time.Hour)))); m.GetAck() == nil {
		t.Fatalf("report measured 10h ago: %v", m)
	}
	p := posture()
	if age := p.GetReportAge().AsDuration(); age < 10*time.Hour-time.Minute || age > 10*time.Hour+time.Minute {
		t.Errorf("report measured 10h ago, sent now: age %v, want 10h", age)
	}
	if p.GetScore() >= p.GetRawScore() || p.GetRawScore() == 0 {
		t.Errorf("score %d of raw %d; want it decayed", p.GetScore(), p.GetRawScore())
	}
	// A device clock a little ahead does not make a report younger than
	// its arrival.
	if m := c.send(c.nextWith(now, observedAt(time.Now().Add(2*time.Minute)))); m.GetAck() == nil {
		t.Fatalf("report measured now: %v", m)
	}
	if p := posture(); p.GetReportAge().AsDuration() > time.Minute || p.GetScore() != p.GetRawScore() {
		t.Errorf("fresh report: age %v, score %d of raw %d; want fresh and undecayed", p.GetReportAge().AsDuration(), p.GetScore(), p.GetRawScore())
	}
}
