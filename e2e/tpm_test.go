package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// keepOpen hands a simulator to the agent without letting it close the
// simulator, which the test owns. It passes one command at a time, as the
// kernel's resource manager (/dev/tpmrm0) does: a test extends PCRs while
// the agent quotes.
type keepOpen struct {
	mu  *sync.Mutex
	tpm transport.TPM
}

func (k keepOpen) Send(cmd []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.tpm.Send(cmd)
}

func (keepOpen) Close() error { return nil }

func openSimulator(t *testing.T, seed int64) (*simulator.Simulator, transport.TPMCloser) {
	t.Helper()
	sim, err := simulator.GetWithFixedSeedInsecure(seed)
	if err != nil {
		t.Fatalf("TPM simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim, keepOpen{mu: &sync.Mutex{}, tpm: transport.FromReadWriter(sim)}
}

// A TPM without an EK certificate enrolls pending: every level is denied
// until an admin approves it, which pins its EK (tpm_ek_pinned).
func TestTPMEnrollPendingUntilApproved(t *testing.T) {
	_, dev := openSimulator(t, 1)
	e := startCollector(t)
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if res.State != posturev1.DeviceState_DEVICE_STATE_PENDING {
		t.Fatalf("state = %v, want pending", res.State)
	}
	stopAgent := runTPMAgent(t, stateDir, dev)
	id := res.DeviceID
	eventually(t, "a quote-signed report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	r, err := e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
	if err != nil || r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "pending approval") {
		t.Fatalf("pending device: allowed=%v reasons=%v err=%v, want a denial naming the approval", r.GetAllowed(), r.GetReasons(), err)
	}

	if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	r, err = e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"})
	if err != nil || !r.GetAllowed() || r.GetAssurance() != posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED {
		t.Errorf("approved device: allowed=%v assurance=%v reasons=%v err=%v, want allowed and tpm_ek_pinned", r.GetAllowed(), r.GetAssurance(), r.GetReasons(), err)
	}
	// The pin outlives the device record: re-enrolling the same TPM is
	// pinned at once. (The simulator takes one user at a time.)
	stopAgent()
	res2, err := agent.EnrollWith(context.Background(), t.TempDir(), e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil || res2.DeviceID != id || res2.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE || res2.Assurance != posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED {
		t.Errorf("re-enrolling the same TPM: %+v, %v; want device %s, active, tpm_ek_pinned", res2, err, id)
	}
}

func runTPMAgent(t *testing.T, stateDir string, dev transport.TPMCloser) func() {
	t.Helper()
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: 50 * time.Millisecond, Measurer: &fixedMeasurer{encrypted: true},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, TPMDevice: dev})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// An AK from another TPM than the EK presented cannot activate the
// collector's credential, and enrollment fails with that reason.
func TestTPMEnrollAKFromAnotherTPM(t *testing.T) {
	e := startCollector(t)
	// The EK of TPM A...
	simA, devA := openSimulator(t, 10)
	tpmA, err := identity.NewTPM(devA, t.TempDir(), identity.TPMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ekA := tpmA.EKPublic()
	simA.Close()
	// ...with the AK of TPM B.
	_, devB := openSimulator(t, 11)
	tpmB, err := identity.NewTPM(devB, t.TempDir(), identity.TPMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok := e.token(time.Hour, 1)
	st, tlsPub := openEnrollment(t, e, tok, &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Tpm{Tpm: &posturev1.TPMIdentity{EkPublic: ekA, AkPublic: tpmB.AKPublic()}}})
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cred := m.GetChallenge().GetTpm()
	if _, err := tpmB.ActivateCredential(cred.GetCredentialBlob(), cred.GetEncryptedSecret()); err == nil {
		t.Fatal("TPM B activated a credential made for TPM A's EK")
	}
	// A device that tries anyway is refused by the collector.
	q, err := tpmB.Quote(envelope.EnrollDigest(m.GetChallenge().GetNonce(), tlsPub, tpmB.AKPublic()))
	if err != nil {
		t.Fatal(err)
	}
	guess := make([]byte, 32)
	rand.Read(guess)
	st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Answer{Answer: &posturev1.EnrollAnswer{ActivatedSecret: guess, Quote: quoteProto(q)}}})
	_, err = st.Recv()
	if err == nil || !strings.Contains(err.Error(), "not resident in the TPM whose endorsement key was presented") {
		t.Errorf("collector answer: %v, want a credential activation refusal", err)
	}
	if n := len(e.devices()); n != 0 {
		t.Errorf("%d devices enrolled, want none", n)
	}
}

func openEnrollment(t *testing.T, e *env, tok string, claim *posturev1.IdentityClaim) (posturev1.EnrollmentService_EnrollClient, []byte) {
	t.Helper()
	key, _ := pki.NewKey()
	tlsKey, _ := x509.MarshalPKIXPublicKey(key.Public())
	parsed, err := token.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	st, err := posturev1.NewEnrollmentServiceClient(e.dial(nil)).Enroll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
		Token: parsed.Secret, Hostname: "h", Platform: "linux", TlsPublicKey: tlsKey, Identity: claim,
	}}}); err != nil {
		t.Fatal(err)
	}
	return st, tlsKey
}

func quoteProto(q *identity.Quote) *posturev1.TPMQuote {
	out := &posturev1.TPMQuote{Attest: q.Attest, Signature: q.Signature}
	for i := uint32(0); i < 24; i++ {
		if v, ok := q.PCRs[i]; ok {
			out.Pcrs = append(out.Pcrs, &posturev1.PCRValue{Index: i, Value: v})
		}
	}
	return out
}

// Quote-signed reports are accepted; quotes that do not cover exactly this
// report, nonce and PCR values, or are made by another AK, are rejected
// each with its reason, and nothing is stored.
func TestTPMQuoteRejections(t *testing.T) {
	_, dev := openSimulator(t, 2)
	e := startCollector(t)
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := identity.NewTPM(dev, stateDir, identity.TPMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otherAK, err := identity.NewTPM(dev, t.TempDir(), identity.TPMOptions{}) // a second AK in the same TPM
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "device.crt"), filepath.Join(stateDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	c := openReports(t, e, cert, nil, res.DeviceID)
	body := func() []byte {
		r := healthyReport(true, "tpm")
		r.DeviceId, r.Seq, r.PrevDigest, r.CreatedAt = res.DeviceID, c.seq+1, c.digest, timestamppb.Now()
		b, _ := proto.Marshal(r)
		return b
	}
	seal := func(t2 *identity.TPM, nonce, quotedNonce, report []byte) *posturev1.SignedReport {
		q, err := t2.Quote(envelope.Digest(quotedNonce, report))
		if err != nil {
			t.Fatal(err)
		}
		return &posturev1.SignedReport{Report: report, Nonce: nonce, Proof: &posturev1.SignedReport_Tpm{Tpm: quoteProto(q)}}
	}
	if m := c.send(seal(tpm, c.nonce, c.nonce, body())); m.GetAck() == nil {
		t.Fatalf("honest quote-signed report: %v", m)
	}

	tests := []struct {
		name   string
		report func() *posturev1.SignedReport
		want   posturev1.RejectReason
	}{
		{"quote for another nonce", func() *posturev1.SignedReport {
			other := make([]byte, 32)
			rand.Read(other)
			return seal(tpm, c.nonce, other, body())
		}, posturev1.RejectReason_REJECT_REASON_QUOTE_NOT_FOR_REPORT},
		{"report changed after quoting", func() *posturev1.SignedReport {
			sr := seal(tpm, c.nonce, c.nonce, body())
			sr.Report = append(sr.Report, 0x50, 0x01)
			return sr
		}, posturev1.RejectReason_REJECT_REASON_QUOTE_NOT_FOR_REPORT},
		{"PCR values other than quoted", func() *posturev1.SignedReport {
			sr := seal(tpm, c.nonce, c.nonce, body())
			sr.GetTpm().Pcrs[0].Value = make([]byte, 32)
			sr.GetTpm().Pcrs[0].Value[0] = 0xee
			return sr
		}, posturev1.RejectReason_REJECT_REASON_PCR_MISMATCH},
		{"signed by another AK", func() *posturev1.SignedReport { return seal(otherAK, c.nonce, c.nonce, body()) }, posturev1.RejectReason_REJECT_REASON_BAD_SIGNATURE},
		{"software signature from a TPM device", func() *posturev1.SignedReport {
			key, _ := pki.NewKey()
			sr, _ := envelope.SignSoftware(key, c.nonce, body())
			return sr
		}, posturev1.RejectReason_REJECT_REASON_BAD_SIGNATURE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.stats().GetReportsAccepted()
			m := c.send(tt.report())
			if m.GetRejected().GetReason() != tt.want {
				t.Fatalf("answer = %v, want %v", m, tt.want)
			}
			if e.stats().GetReportsAccepted() != before {
				t.Error("a rejected report was counted as accepted")
			}
		})
	}
	if d, _ := e.device(res.DeviceID); d.GetDevice().GetLastSeq() != 1 {
		t.Errorf("last seq = %d, want 1: only the honest report is stored", d.GetDevice().GetLastSeq())
	}
}

// A TPM reset (reboot) is recorded; a TPM whose counters went back (a
// clone, or a replay of an older state) marks the device suspect.
func TestTPMResetAndRollback(t *testing.T) {
	swtpm := testtools.StartSWTPM(t)
	roots := x509.NewCertPool()
	for _, c := range swtpm.EKCACerts {
		roots.AddCert(c)
	}
	e := startCollectorWith(t, func(c *collector.Config) { c.EKRoots = roots })
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPM: swtpm.Addr})
	if err != nil {
		t.Fatalf("enroll with swtpm: %v", err)
	}
	if res.Assurance != posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED || res.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Fatalf("swtpm with an EK certificate from a configured root: %+v, want tpm_ek_verified and active", res)
	}
	id := res.DeviceID
	stop := runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 50*time.Millisecond)
	eventually(t, "quote-signed reports", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 2 })
	gw := e.gateway("edge")
	r, err := gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"})
	if err != nil || !r.GetAllowed() || r.GetAssurance() != posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED {
		t.Fatalf("CheckAccess: allowed=%v assurance=%v reasons=%v err=%v", r.GetAllowed(), r.GetAssurance(), r.GetReasons(), err)
	}
	stop()

	swtpm.Restart() // a reboot: resetCount grows
	stop = runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 50*time.Millisecond)
	before, _ := e.device(id)
	eventually(t, "reports after the TPM reset", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= before.GetDevice().GetLastSeq()+2
	})
	if d, _ := e.device(id); d.GetDevice().GetReboots() != 1 || d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("after a TPM reset: reboots=%d state=%v, want 1 and active", d.GetDevice().GetReboots(), d.GetDevice().GetState())
	}
	stop()
}

// A TPM whose clock runs backwards within one boot is not the TPM state the
// collector last saw (a clone, or a replay): the device becomes suspect.
// The simulator, restarted with the same seed, is exactly such a clone.
func TestTPMClockRollbackMarksSuspect(t *testing.T) {
	sim, dev := openSimulator(t, 3)
	e := startCollector(t)
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	id := res.DeviceID
	stop := runTPMAgent(t, stateDir, dev)
	eventually(t, "reports", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 5 })
	stop()
	sim.Close()

	_, clone := openSimulator(t, 3)
	runTPMAgent(t, stateDir, clone)
	eventually(t, "device marked suspect", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetState() == posturev1.DeviceState_DEVICE_STATE_SUSPECT
	})
	d, _ := e.device(id)
	if !strings.Contains(d.GetDevice().GetStateReason(), "TPM") || e.stats().GetReportsRejected()["tpm_clock"] == 0 {
		t.Errorf("suspect reason %q, rejections %v; want a TPM clock reason counted under tpm_clock", d.GetDevice().GetStateReason(), e.stats().GetReportsRejected())
	}
}

// A stored report's quote verifies with an independent verifier,
// tpm2_checkquote, from what the collector kept: the TPMS_ATTEST, the
// signature, the PCR values, the enrolled AK and the report digest. A
// tampered copy fails there too.
func TestStoredQuoteVerifiesWithTpm2Checkquote(t *testing.T) {
	checkquote := testtools.Require(t, "tpm2_checkquote")
	_, dev := openSimulator(t, 4)
	e := startCollector(t)
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	stop := runTPMAgent(t, stateDir, dev)
	eventually(t, "a stored report", func() bool { d, err := e.device(res.DeviceID); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	stop()
	e.stop()

	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dev0, err := st.Device(context.Background(), res.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	reports, err := st.Reports(context.Background(), res.DeviceID, 1)
	if err != nil || len(reports) != 1 {
		t.Fatalf("stored reports: %v %v", reports, err)
	}
	var q posturev1.TPMQuote
	if err := proto.Unmarshal(reports[0].Proof, &q); err != nil {
		t.Fatal(err)
	}
	ak, err := attest.ParseAK(dev0.IdentityKey)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := envelope.PCRMap(q.GetPcrs())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := attest.WriteCheckquoteFiles(dir, ak, q.GetAttest(), q.GetSignature(), pcrs); err != nil {
		t.Fatal(err)
	}
	run := func(msg string) error {
		cmd := exec.Command(checkquote, "-u", filepath.Join(dir, "ak.pem"), "-m", msg, "-s", filepath.Join(dir, "quote.sig"),
			"-g", "sha256", "-q", hex.EncodeToString(reports[0].Digest), "-f", filepath.Join(dir, "pcrs.bin"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := run(filepath.Join(dir, "quote.msg")); err != nil {
		t.Fatalf("tpm2_checkquote rejected a stored quote: %v", err)
	}
	tampered := append([]byte(nil), q.GetAttest()...)
	tampered[len(tampered)-1] ^= 1
	if err := os.WriteFile(filepath.Join(dir, "tampered.msg"), tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(filepath.Join(dir, "tampered.msg")); err == nil {
		t.Error("tpm2_checkquote accepted a tampered quote")
	}
}

// The collector replays the TCG event log against the quoted PCRs and
// reads secure boot from what the firmware measured into PCR 7 before its
// separator; policy prefers that over what the agent reports. Events the
// OS extends into PCR 7 later do not change it, and a log that does not
// match the quote is not believed.
func TestMeasuredBootFromEventLog(t *testing.T) {
	_, dev := openSimulator(t, 5)
	// What firmware would have measured: secure boot disabled, then the
	// separator that ends its measurements into PCR 7.
	log := testtools.NewEventLog()
	for _, e := range []struct {
		pcr, typ uint32
		data     []byte
	}{
		{0, 0x80000008, []byte("platform firmware")},         // EV_EFI_PLATFORM_FIRMWARE_BLOB
		{7, 0x80000001, testtools.SecureBootVariable(false)}, // EV_EFI_VARIABLE_DRIVER_CONFIG
		{7, 0x00000004, []byte{0, 0, 0, 0}},                  // EV_SEPARATOR
	} {
		sum := log.Add(e.pcr, e.typ, e.data)
		if _, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: sum}}},
		}).Execute(dev); err != nil {
			t.Fatalf("extend PCR %d: %v", e.pcr, err)
		}
	}
	logFile := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(logFile, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	e := startCollector(t)
	stateDir, id := enrollTPM(t, e, dev, logFile)
	if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatal(err)
	}
	stop := runTPMAgent(t, stateDir, dev) // the agent reports secure boot enabled
	eventually(t, "a quote with its event log", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	stop()
	p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	mb := p.GetMeasuredBoot()
	if mb.GetStatus() != posturev1.Status_STATUS_OK || !mb.GetSecureBootKnown() || mb.GetSecureBoot() || mb.GetEvents() != 3 {
		t.Fatalf("measured boot = %v, want OK, secure boot known and disabled, 3 events", mb)
	}
	for _, c := range p.GetChecks() {
		if c.GetName() == "secure_boot" && (c.GetOutcome() != posturev1.Outcome_OUTCOME_FAIL || !strings.Contains(c.GetReason(), "measured by the TPM")) {
			t.Errorf("secure_boot check = %v %q, want the measured failure over the reported success", c.GetOutcome(), c.GetReason())
		}
	}

	// Root on the booted OS extends PCR 7 with a SecureBoot=1 event of its
	// own, as tpm2_pcrevent does, and appends it to the log. The log still
	// replays, but the event follows the separator: secure boot stays
	// disabled.
	forged := testtools.SecureBootVariable(true)
	if _, err := (tpm2.PCREvent{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(7), Auth: tpm2.PasswordAuth(nil)},
		EventData: tpm2.TPM2BEvent{Buffer: forged},
	}).Execute(dev); err != nil {
		t.Fatalf("extend PCR 7: %v", err)
	}
	log.Add(7, 0x80000001, forged)
	if err := os.WriteFile(logFile, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	seq := p.GetDevice().GetLastSeq()
	stop = runTPMAgent(t, stateDir, dev)
	eventually(t, "a quote after PCR 7 was extended", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() > seq })
	stop()
	p, err = e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	if mb := p.GetMeasuredBoot(); mb.GetStatus() != posturev1.Status_STATUS_OK || !mb.GetSecureBootKnown() || mb.GetSecureBoot() || mb.GetEvents() != 4 {
		t.Fatalf("after a SecureBoot event extended from the OS: measured boot = %v, want OK, secure boot known and disabled, 4 events", mb)
	}

	// A log of another boot does not replay to the quoted PCRs.
	other := testtools.NewEventLog()
	other.Add(7, 0x80000001, testtools.SecureBootVariable(true))
	if err := os.WriteFile(logFile, other.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	runTPMAgent(t, stateDir, dev)
	// Read as the report with the log is the latest: later quotes without
	// a log, of the same PCR values, take the reading of the log that did
	// replay to them.
	eventually(t, "a report with a forged log", func() bool {
		p, err = e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
		return err == nil && p.GetMeasuredBoot().GetStatus() == posturev1.Status_STATUS_ERROR
	})
	if !strings.Contains(p.GetMeasuredBoot().GetReason(), "does not replay to the quoted PCR values") {
		t.Errorf("forged log: measured boot %v, want a replay mismatch", p.GetMeasuredBoot())
	}
}

// enrollTPM enrolls a TPM device whose agent reads its event log from
// logFile, and returns its state directory and ID.
func enrollTPM(t *testing.T, e *env, dev transport.TPMCloser, logFile string) (stateDir, id string) {
	t.Helper()
	stateDir = t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1),
		agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev, EventLog: logFile})
	if err != nil {
		t.Fatal(err)
	}
	return stateDir, res.DeviceID
}

// firmwareLog extends the TPM's PCRs 0 and 7 as firmware would, secure
// boot enabled, and returns the matching event log, also written to a
// file.
func firmwareLog(t *testing.T, dev transport.TPM) (*testtools.EventLog, string) {
	t.Helper()
	log := testtools.NewEventLog()
	extendLogged(t, dev, log, 0, 0x80000008, []byte("platform firmware")) // EV_EFI_PLATFORM_FIRMWARE_BLOB
	extendLogged(t, dev, log, 7, 0x80000001, testtools.SecureBootVariable(true))
	extendLogged(t, dev, log, 7, 0x00000004, []byte{0, 0, 0, 0}) // EV_SEPARATOR
	logFile := filepath.Join(t.TempDir(), "binary_bios_measurements")
	writeLog(t, logFile, log)
	return log, logFile
}

// extendLogged adds an event to the log and extends the PCR with it.
func extendLogged(t *testing.T, dev transport.TPM, log *testtools.EventLog, pcr, typ uint32, data []byte) {
	t.Helper()
	extendPCR(t, dev, pcr, log.Add(pcr, typ, data))
}

func extendPCR(t *testing.T, dev transport.TPM, pcr uint32, sum []byte) {
	t.Helper()
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: sum}}},
	}).Execute(dev); err != nil {
		t.Fatalf("extend PCR %d: %v", pcr, err)
	}
}

func writeLog(t *testing.T, path string, log *testtools.EventLog) {
	t.Helper()
	if err := os.WriteFile(path, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantReplayed checks that the collector shows measured boot replayed from
// a log of events events, secure boot enabled.
func wantReplayed(t *testing.T, e *env, id string, events uint32) {
	t.Helper()
	p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	if mb := p.GetMeasuredBoot(); mb.GetStatus() != posturev1.Status_STATUS_OK || !mb.GetSecureBoot() || mb.GetEvents() != events {
		t.Fatalf("measured boot = %v, want replayed: OK, secure boot enabled, %d events", mb, events)
	}
}

// storedLogs reads, with the collector stopped, which of a device's stored
// reports carry an event log in their proof, by sequence number.
func storedLogs(t *testing.T, e *env, id string) map[uint64]bool {
	t.Helper()
	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reports, err := st.Reports(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, r := range reports {
		var q posturev1.TPMQuote
		if err := proto.Unmarshal(r.Proof, &q); err != nil {
			t.Fatal(err)
		}
		out[r.Seq] = len(q.GetEventLog()) > 0
	}
	return out
}

// withLogs lists the sequence numbers from..to whose reports carry a log.
func withLogs(logs map[uint64]bool, from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		if logs[s] {
			out = append(out, s)
		}
	}
	return out
}

// The event log travels once per boot state and stream, not with every
// quote, and measured boot stays replayed in between: the first report of
// a stream carries it, later ones do not, a PCR change brings the new log
// once, and a restarted collector still knows the reading of a latest
// report that came without one.
func TestMeasuredBootEventLogOncePerBoot(t *testing.T) {
	_, dev := openSimulator(t, 6)
	log, logFile := firmwareLog(t, dev)
	e := startCollector(t)
	stateDir, id := enrollTPM(t, e, dev, logFile)
	lastSeq := func() uint64 { d, _ := e.device(id); return d.GetDevice().GetLastSeq() }

	stop := runTPMAgent(t, stateDir, dev)
	eventually(t, "four reports", func() bool { return lastSeq() >= 4 })
	stop()
	wantReplayed(t, e, id, 3)
	first := lastSeq()
	e.stop()
	logs := storedLogs(t, e, id)
	if got := withLogs(logs, 1, first); len(logs) != int(first) || !slices.Equal(got, []uint64{1}) {
		t.Fatalf("reports 1-%d carrying the event log: %v of %d stored, want only the first", first, got, len(logs))
	}

	e.start() // the latest report carries no log; the device's reading is stored
	wantReplayed(t, e, id, 3)

	// A new stream sends the log again; while it runs, a PCR change (the
	// OS extends PCR 7, and the log records it) brings the new log once.
	stop = runTPMAgent(t, stateDir, dev)
	eventually(t, "two reports on a new stream", func() bool { return lastSeq() >= first+2 })
	changed := lastSeq()
	grown := testtools.ContinueEventLog(log.Bytes(), log.PCRs())
	sum := grown.Add(7, 0x0000000d, []byte("boot loader")) // EV_IPL, after the separator
	writeLog(t, logFile, grown)                            // first: no quote sees the new PCR value with the old log
	extendPCR(t, dev, 7, sum)
	eventually(t, "the new log replayed", func() bool {
		p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
		return err == nil && p.GetMeasuredBoot().GetEvents() == 4
	})
	eventually(t, "reports after it", func() bool { return lastSeq() >= changed+4 })
	stop()
	wantReplayed(t, e, id, 4)
	last := lastSeq()
	e.stop()
	logs = storedLogs(t, e, id)
	got := withLogs(logs, first+1, last)
	if len(got) != 2 || got[0] != first+1 || got[1] <= changed {
		t.Errorf("reports %d-%d carrying the event log: %v (PCR changed after %d); want the stream's first and the first after the change", first+1, last, got, changed)
	}
	e.start()
	wantReplayed(t, e, id, 4)
}

// A quote without a log whose PCR values the collector has no log for is
// stored, shows measured boot unavailable, and its acknowledgement asks
// for the log; once the log comes, quotes without it have its reading
// again and are not asked.
func TestMeasuredBootAsksForEventLog(t *testing.T) {
	_, dev := openSimulator(t, 8)
	log, logFile := firmwareLog(t, dev)
	e := startCollector(t)
	stateDir, id := enrollTPM(t, e, dev, logFile)
	tpm, err := identity.NewTPM(dev, stateDir, identity.TPMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "device.crt"), filepath.Join(stateDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	c := openReports(t, e, cert, nil, id)
	seal := func(withLog bool) *posturev1.SignedReport {
		r := healthyReport(true, "tpm")
		r.DeviceId, r.Seq, r.PrevDigest, r.CreatedAt = id, c.seq+1, c.digest, timestamppb.Now()
		body, _ := proto.Marshal(r)
		q, err := tpm.Quote(envelope.Digest(c.nonce, body))
		if err != nil {
			t.Fatal(err)
		}
		qp := quoteProto(q)
		if withLog {
			qp.EventLog = log.Bytes()
		}
		return &posturev1.SignedReport{Report: body, Nonce: c.nonce, Proof: &posturev1.SignedReport_Tpm{Tpm: qp}}
	}
	unavailable := func(t *testing.T, reason string) {
		t.Helper()
		p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
		if err != nil {
			t.Fatal(err)
		}
		if mb := p.GetMeasuredBoot(); mb.GetStatus() != posturev1.Status_STATUS_UNAVAILABLE || !strings.Contains(mb.GetReason(), reason) {
			t.Fatalf("measured boot = %v, want unavailable: %s", mb, reason)
		}
	}
	notReplayed := func(t *testing.T) {
		t.Helper()
		p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
		if err != nil {
			t.Fatal(err)
		}
		if mb := p.GetMeasuredBoot(); mb.GetStatus() != posturev1.Status_STATUS_ERROR || !strings.Contains(mb.GetReason(), "does not replay") {
			t.Fatalf("measured boot = %v, want an error: the log does not replay", mb)
		}
	}
	steps := []struct {
		name    string
		withLog bool
		extend  bool // the OS extends PCR 7 first, and the log records it
		forge   bool // the OS extends PCR 7 first, and the log does not record it
		wantLog bool // the acknowledgement asks for the log
		check   func(t *testing.T)
	}{
		{"no log ever sent", false, false, false, true, func(t *testing.T) { unavailable(t, "no TPM event log") }},
		{"the log", true, false, false, false, func(t *testing.T) { wantReplayed(t, e, id, 3) }},
		{"same PCR values without it", false, false, false, false, func(t *testing.T) { wantReplayed(t, e, id, 3) }},
		{"PCR 7 changed, no log", false, true, false, true, func(t *testing.T) { unavailable(t, "no event log for these PCR values") }},
		{"the new log", true, false, false, false, func(t *testing.T) { wantReplayed(t, e, id, 4) }},
		{"same PCR values without it again", false, false, false, false, func(t *testing.T) { wantReplayed(t, e, id, 4) }},
		// A log that does not replay would fail the same way against the
		// same PCR values: the agent is not asked for it again until they
		// change.
		{"PCR 7 extended unlogged, the log", true, false, true, false, notReplayed},
		{"same PCR values without it", false, false, false, false, notReplayed},
		{"same PCR values without it once more", false, false, false, false, notReplayed},
		{"PCR 7 changed again, no log", false, true, false, true, func(t *testing.T) { unavailable(t, "no event log for these PCR values") }},
	}
	for _, s := range steps {
		if s.extend {
			extendLogged(t, dev, log, 7, 0x0000000d, []byte("boot loader"))
		}
		if s.forge {
			sum := sha256.Sum256([]byte("not in the log"))
			extendPCR(t, dev, 7, sum[:])
		}
		m := c.send(seal(s.withLog))
		if m.GetAck() == nil {
			t.Fatalf("%s: answer %v, want an acknowledgement", s.name, m)
		}
		if m.GetAck().GetWantEventLog() != s.wantLog {
			t.Errorf("%s: want_event_log = %v, want %v", s.name, m.GetAck().GetWantEventLog(), s.wantLog)
		}
		s.check(t)
	}
}
