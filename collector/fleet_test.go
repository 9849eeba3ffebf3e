package collector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A policy reload assesses every device's latest report under the new
// policy, including a report stored while the reload ran and not yet in
// the fleet, and leaves devices without reports alone.
func TestReassess(t *testing.T) {
	dir, now := t.TempDir(), time.Now()
	seedStore(t, dir, []string{"a", "b", "c"}, testReport("a", 1, true, now), testReport("b", 1, false, now))
	ctx := context.Background()
	report := func(id string, seq uint64, encrypted bool) store.Report { return testReport(id, seq, encrypted, now) }

	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		c.Serve(cctx)
	}()
	// Stored, not yet recorded in the fleet: what a report stream does
	// between its commit and recordReport.
	if err := c.store.AppendReport(ctx, report("a", 2, false)); err != nil {
		t.Fatal(err)
	}
	strict, err := policy.Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: enc, min_score: 100}]"))
	if err != nil {
		t.Fatal(err)
	}
	swapped := false
	if err := c.reassess(ctx, strict, func() { swapped = true; c.policy.Store(strict) }); err != nil {
		t.Fatalf("reassess: %v", err)
	}
	if !swapped {
		t.Fatal("the new policy was not swapped in")
	}
	for id, want := range map[string]uint32{"a": 0, "b": 0} {
		subj, _ := c.fleet.subject(id)
		checks, _, _ := strict.Explain(&subj, now)
		if len(checks) != 1 || checks[0].GetName() != "disk_encryption" || subj.Assessment.RawScore() != want {
			t.Errorf("device %s after reload: raw score %d, checks %v; want %d under the new policy", id, subj.Assessment.RawScore(), checks, want)
		}
	}
	if subj, _ := c.fleet.subject("c"); subj.Assessment != nil {
		t.Errorf("device c has no report but got an assessment")
	}
	// A reload that cannot read the store changes nothing.
	c.store.Close()
	lax := policy.Default()
	if err := c.reassess(ctx, lax, func() { t.Error("policy swapped although the store could not be read") }); err == nil {
		t.Error("reassess with a closed store succeeded")
	}
}

// seedStore writes a data directory's database with software devices ids
// and reports, for a collector to start on. The devices share one identity
// key, which it returns.
func seedStore(t *testing.T, dir string, ids []string, reports ...store.Report) *ecdsa.PrivateKey {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Now()
	if err := st.CreateToken(ctx, store.Token{Hash: token.Hash("s"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: uint32(len(ids))}); err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	for _, id := range ids {
		if _, err := st.EnrollDevice(ctx, token.Hash("s"), now, store.Device{ID: id, Identity: "software", IdentityKey: pub, Assurance: 1, State: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range reports {
		if err := st.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	return key
}

// testReport is a stored report of a device whose system disk is encrypted
// or not, observed at now.
func testReport(id string, seq uint64, encrypted bool, now time.Time) store.Report {
	ok := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(now)}
	body, _ := proto.Marshal(&posturev1.PostureReport{DeviceId: id, Seq: seq, Disk: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: encrypted}})
	sum := sha256.Sum256(body)
	return store.Report{DeviceID: id, Seq: seq, Digest: sum[:], Nonce: sum[:4], Body: body, Proof: sum[:], ReceivedAt: now}
}

// The fleet follows the store's rules for states that arrive out of order:
// revocation is final, and enrolling again keeps a revoked or suspect
// state, while an approval moves a pending device to active.
func TestFleetStateOrder(t *testing.T) {
	dev := func(state posturev1.DeviceState) store.Device {
		return store.Device{ID: "a", Identity: "software", Assurance: int32(posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE), State: int32(state)}
	}
	state := func(f *fleet) posturev1.DeviceState {
		s, _ := f.subject("a")
		return s.State
	}
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	for _, c := range []struct {
		name   string
		before posturev1.DeviceState
		change func(f *fleet) error
		want   posturev1.DeviceState
	}{
		{"enroll after revoke", posturev1.DeviceState_DEVICE_STATE_REVOKED, func(f *fleet) error { return f.put(dev(active)) }, posturev1.DeviceState_DEVICE_STATE_REVOKED},
		{"enroll after suspect", posturev1.DeviceState_DEVICE_STATE_SUSPECT, func(f *fleet) error { return f.put(dev(active)) }, posturev1.DeviceState_DEVICE_STATE_SUSPECT},
		{"approve pending", posturev1.DeviceState_DEVICE_STATE_PENDING, func(f *fleet) error { return f.put(dev(active)) }, active},
		{"suspect after revoke", posturev1.DeviceState_DEVICE_STATE_REVOKED, func(f *fleet) error {
			f.setState("a", posturev1.DeviceState_DEVICE_STATE_SUSPECT, "late")
			return nil
		}, posturev1.DeviceState_DEVICE_STATE_REVOKED},
		{"revoke suspect", posturev1.DeviceState_DEVICE_STATE_SUSPECT, func(f *fleet) error {
			f.setState("a", posturev1.DeviceState_DEVICE_STATE_REVOKED, "stolen")
			return nil
		}, posturev1.DeviceState_DEVICE_STATE_REVOKED},
	} {
		f := newFleet()
		if err := f.put(dev(active)); err != nil {
			t.Fatal(err)
		}
		f.setState("a", c.before, "before")
		if err := c.change(f); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := state(f); got != c.want {
			t.Errorf("%s: state %v, want %v", c.name, got, c.want)
		}
	}
}

// The fleet follows renewals as the store does: the certificate asked with
// becomes the previous one (which may only renew) when it was the newest,
// stays when it was the previous one, and an enrollment that replaced the
// entry meanwhile wins.
func TestFleetRenewed(t *testing.T) {
	type standing int
	const (
		newest standing = iota
		previous
		replaced
	)
	stand := func(f *fleet, serial string) standing {
		prev, err := f.certStanding("a", serial)
		switch {
		case err != nil:
			return replaced
		case prev:
			return previous
		}
		return newest
	}
	enrolled := func(serial string) store.Device {
		return store.Device{ID: "a", Identity: "software", State: 1, CertSerial: serial}
	}
	tests := []struct {
		name  string
		steps func(f *fleet)
		want  map[string]standing
	}{
		{"renewed", func(f *fleet) { f.setCertificates("a", "02", "01") },
			map[string]standing{"01": previous, "02": newest, "03": replaced}},
		{"renewed twice in a row", func(f *fleet) { f.setCertificates("a", "02", "01"); f.setCertificates("a", "03", "02") },
			map[string]standing{"01": replaced, "02": previous, "03": newest}},
		{"enrolled again after a renewal", func(f *fleet) { f.setCertificates("a", "02", "01"); f.put(enrolled("10")) },
			map[string]standing{"01": replaced, "02": replaced, "10": newest}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet()
			if err := f.put(enrolled("01")); err != nil {
				t.Fatal(err)
			}
			tt.steps(f)
			for serial, want := range tt.want {
				if got := stand(f, serial); got != want {
					t.Errorf("certificate %s stands %d, want %d (0 newest, 1 previous, 2 replaced)", serial, got, want)
				}
			}
			if err := f.currentCert("a", "01"); err == nil && tt.want["01"] != newest {
				t.Error("gateways would accept certificate 01")
			}
		})
	}
}

// startSeeded starts a collector on a store seedStore wrote.
func startSeeded(t *testing.T, dir string) *Collector {
	t.Helper()
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		c.Serve(ctx)
	})
	return c
}

// testStream sends a software device's reports through ingest, continuing
// its chain as its agent does.
type testStream struct {
	s      *reportService
	id     string
	key    *ecdsa.PrivateKey
	sk     streamKey
	seq    uint64
	digest []byte
}

// sendSeq signs and ingests report seq after prev, the disk encrypted or
// not, and on success moves the stream's head to it.
func (ts *testStream) sendSeq(seq uint64, prev []byte, encrypted bool) (*store.Report, *rejection) {
	nonce := newNonce()
	ok := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now()}
	body, err := proto.Marshal(&posturev1.PostureReport{DeviceId: ts.id, Seq: seq, PrevDigest: prev, CreatedAt: timestamppb.Now(),
		Disk: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: encrypted}})
	if err != nil {
		panic(err)
	}
	sr, err := envelope.SignSoftware(ts.key, nonce, body)
	if err != nil {
		panic(err)
	}
	rec, _, rej := ts.s.ingest(context.Background(), ts.id, &ts.sk, sr, nonce)
	if rej == nil {
		ts.seq, ts.digest = rec.Seq, rec.Digest
	}
	return rec, rej
}

// send sends the stream's next report.
func (ts *testStream) send(encrypted bool) (*store.Report, *rejection) {
	return ts.sendSeq(ts.seq+1, ts.digest, encrypted)
}

// checkHead fails unless the fleet's chain head and TPM clock of device id
// are the store's.
func checkHead(t *testing.T, f *fleet, st *store.Store, id string) {
	t.Helper()
	d, err := st.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	seq, digest, _ := f.head(id)
	if seq != d.LastSeq || !bytes.Equal(digest, d.LastDigest) {
		t.Errorf("fleet head of %s is %d %x, the store's %d %x", id, seq, digest, d.LastSeq, d.LastDigest)
	}
	if clock := f.tpmClock(id); clock != d.TPMClock {
		t.Errorf("fleet TPM clock of %s is %+v, the store's %+v", id, clock, d.TPMClock)
	}
}

// An enrollment whose transaction read the device before a report was
// stored, and which reaches the fleet after that report did, leaves the
// fleet's head where the store has it: the device's next report is
// accepted and the device stays active.
func TestStaleEnrollmentKeepsHead(t *testing.T) {
	dir, ctx := t.TempDir(), context.Background()
	key := seedStore(t, dir, []string{"a"})
	c := startSeeded(t, dir)
	ts := &testStream{s: &reportService{c: c}, id: "a", key: key}
	if _, rej := ts.send(true); rej != nil {
		t.Fatal(rej.msg)
	}

	// Enrolled again with the same key: the store reads head 1.
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	now := time.Now()
	if err := c.store.CreateToken(ctx, store.Token{Hash: token.Hash("again"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1}); err != nil {
		t.Fatal(err)
	}
	dev, err := c.store.EnrollDevice(ctx, token.Hash("again"), now, store.Device{ID: "a", Identity: "software", IdentityKey: pub, Assurance: 1, State: 1, CertSerial: "02"})
	if err != nil || dev.LastSeq != 1 {
		t.Fatalf("enroll again: head %d, %v", dev.LastSeq, err)
	}
	// Report 2 commits after that read and is recorded before put.
	if _, rej := ts.send(true); rej != nil {
		t.Fatal(rej.msg)
	}
	if err := c.fleet.put(dev); err != nil {
		t.Fatal(err)
	}
	checkHead(t, c.fleet, c.store, "a")

	if _, rej := ts.send(true); rej != nil {
		t.Errorf("report 3 after the enrollment: %s: %s", reasonName(rej.reason), rej.msg)
	}
	checkHead(t, c.fleet, c.store, "a")
	if subj, _ := c.fleet.subject("a"); subj.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device ended %v: %s", subj.State, subj.StateReason)
	}
}

// The fleet's chain head and TPM clock follow the store's in whatever
// order an enrollment or approval and a report of the device commit and
// reach the fleet: the store applies them in commit order, the fleet in
// the order they arrive, and both end alike. Enrolling again with a new
// AK resets the TPM clock in the store; a report committed after that
// sets it again.
func TestFleetHeadFollowsStore(t *testing.T) {
	ctx := context.Background()
	pol := &atomic.Pointer[policy.Policy]{}
	pol.Store(policy.Default())
	clock1 := store.TPMClock{Clock: 1000, ResetCount: 3, RestartCount: 4}
	clock2 := store.TPMClock{Clock: 2000, ResetCount: 3, RestartCount: 4}
	tpmDevice := func(ak string, state posturev1.DeviceState) store.Device {
		return store.Device{ID: "t", Identity: "tpm", IdentityKey: []byte(ak), EKSHA256: "ek", Assurance: 1, State: int32(state), CertSerial: ak}
	}
	changes := []struct {
		name  string
		state posturev1.DeviceState // of the device before the change
		apply func(t *testing.T, st *store.Store) store.Device
	}{
		{"enrolled again with the same AK", posturev1.DeviceState_DEVICE_STATE_ACTIVE, func(t *testing.T, st *store.Store) store.Device {
			return enrollAgain(t, st, tpmDevice("ak-1", posturev1.DeviceState_DEVICE_STATE_ACTIVE))
		}},
		{"enrolled again with a new AK", posturev1.DeviceState_DEVICE_STATE_ACTIVE, func(t *testing.T, st *store.Store) store.Device {
			return enrollAgain(t, st, tpmDevice("ak-2", posturev1.DeviceState_DEVICE_STATE_ACTIVE))
		}},
		{"approved", posturev1.DeviceState_DEVICE_STATE_PENDING, func(t *testing.T, st *store.Store) store.Device {
			d, err := st.ApproveDevice(ctx, "t", 2, "test", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return d
		}},
	}
	// Steps: c commits the change, p puts it in the fleet, a appends
	// report 2, r records it in the fleet.
	orders := []string{"carp", "capr", "acrp", "acpr", "cpar", "arcp"}
	for _, ch := range changes {
		for _, order := range orders {
			t.Run(ch.name+"/"+order, func(t *testing.T) {
				st, err := store.Open(filepath.Join(t.TempDir(), "posture.db"))
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				now := time.Now()
				if err := st.CreateToken(ctx, store.Token{Hash: token.Hash("s"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1}); err != nil {
					t.Fatal(err)
				}
				if _, err := st.EnrollDevice(ctx, token.Hash("s"), now, tpmDevice("ak-1", ch.state)); err != nil {
					t.Fatal(err)
				}
				r1, r2 := testReport("t", 1, true, now), testReport("t", 2, false, now)
				r1.TPM, r2.TPM = &clock1, &clock2
				if err := st.AppendReport(ctx, r1); err != nil {
					t.Fatal(err)
				}
				f := newFleet()
				d, err := st.Device(ctx, "t")
				if err != nil {
					t.Fatal(err)
				}
				if err := f.put(d); err != nil {
					t.Fatal(err)
				}
				var changed store.Device
				for _, step := range order {
					switch step {
					case 'c':
						changed = ch.apply(t, st)
					case 'p':
						if err := f.put(changed); err != nil {
							t.Fatal(err)
						}
					case 'a':
						if err := st.AppendReport(ctx, r2); err != nil {
							t.Fatal(err)
						}
					case 'r':
						f.recordReport("t", &r2, decodeReport(r2.Body), bootState{boot: bootNoEventLog}, pol)
					}
				}
				checkHead(t, f, st, "t")
				// The posture is report 2's, in which the disk is not encrypted.
				subj, _ := f.subject("t")
				if checks, _, _ := pol.Load().Explain(&subj, now); !failed(checks, "disk_encryption") {
					t.Errorf("the fleet does not hold report 2's posture: %v", checks)
				}
			})
		}
	}
}

// enrollAgain enrolls d again in st with a fresh token.
func enrollAgain(t *testing.T, st *store.Store, d store.Device) store.Device {
	t.Helper()
	ctx, now := context.Background(), time.Now()
	hash := token.Hash("again " + t.Name())
	if err := st.CreateToken(ctx, store.Token{Hash: hash, CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1}); err != nil {
		t.Fatal(err)
	}
	got, err := st.EnrollDevice(ctx, hash, now, d)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// failed says whether the check named name is among checks and failed.
func failed(checks []*posturev1.CheckResult, name string) bool {
	for _, c := range checks {
		if c.GetName() == name {
			return c.GetOutcome() == posturev1.Outcome_OUTCOME_FAIL
		}
	}
	return false
}
