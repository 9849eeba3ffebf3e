package collector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"sync"
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
	defer stopCollectorForTest(c)
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
	t.Cleanup(func() { stopCollectorForTest(c) })
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

// strictPolicy judges disk encryption alone; devices assessed under it
// have that one check.
func strictPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: enc, min_score: 100}]"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A reload that cannot read a device's latest report changes nothing:
// every device keeps its assessment, the old policy stays in force, and
// reports recorded afterwards are assessed under it alone.
func TestReassessFailureChangesNothing(t *testing.T) {
	dir, now, ctx := t.TempDir(), time.Now(), context.Background()
	ids := []string{"a", "b", "c", "d"}
	var reports []store.Report
	for i, id := range ids {
		reports = append(reports, testReport(id, 1, i%2 == 0, now))
	}
	seedStore(t, dir, ids, reports...)
	c := startSeeded(t, dir)
	before := map[string]*policy.Assessment{}
	for _, id := range ids {
		subj, _ := c.fleet.subject(id)
		if subj.Assessment == nil {
			t.Fatalf("device %s has no assessment", id)
		}
		before[id] = subj.Assessment
	}
	inForce := c.policy.Load()

	// Device c's latest report no longer decodes: stored, as a report
	// stream stores one, but not yet recorded in the fleet.
	bad := testReport("c", 2, true, now)
	bad.Body = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if err := proto.Unmarshal(bad.Body, &posturev1.PostureReport{}); err == nil {
		t.Fatal("the broken body decodes")
	}
	if err := c.store.AppendReport(ctx, bad); err != nil {
		t.Fatal(err)
	}
	strict := strictPolicy(t)
	err := c.reassess(ctx, strict, func() { t.Error("policy swapped although a report could not be read") })
	if err == nil {
		t.Fatal("reassess succeeded with an unreadable report")
	}
	t.Logf("reassess: %v", err)
	for _, id := range ids {
		if subj, _ := c.fleet.subject(id); subj.Assessment != before[id] {
			t.Errorf("device %s has another assessment after the failed reload", id)
		}
	}
	if c.policy.Load() != inForce {
		t.Error("the policy in force changed")
	}
	c.fleet.mu.RLock()
	pending := c.fleet.reload
	c.fleet.mu.RUnlock()
	if pending != nil {
		t.Error("the failed reload is still under way: reports would be assessed under its policy too")
	}

	// Once the report is superseded, the reload succeeds.
	if err := c.store.AppendReport(ctx, testReport("c", 3, false, now)); err != nil {
		t.Fatal(err)
	}
	if err := c.reassess(ctx, strict, func() { c.policy.Store(strict) }); err != nil {
		t.Fatalf("reassess: %v", err)
	}
	for _, id := range ids {
		subj, _ := c.fleet.subject(id)
		if checks, _, _ := strict.Explain(&subj, now); len(checks) != 1 || checks[0].GetName() != "disk_encryption" {
			t.Errorf("device %s after the reload: checks %v; want disk_encryption alone", id, checks)
		}
	}
}

// A reload while devices report ends with every device assessed under the
// new policy from its latest report, including reports recorded while the
// reload read the store.
func TestReassessUnderIngestion(t *testing.T) {
	dir, ctx := t.TempDir(), context.Background()
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("dev-%02d", i))
	}
	key := seedStore(t, dir, ids)
	c := startSeeded(t, dir)
	s := &reportService{c: c}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts := &testStream{s: s, id: id, key: key}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, rej := ts.send((n+i)%2 == 0); rej != nil {
					errs <- fmt.Sprintf("device %s report %d: %s: %s", id, ts.seq+1, reasonName(rej.reason), rej.msg)
					return
				}
			}
		}()
	}
	// Device i's report seq says whether its disk is encrypted.
	encryptedAt := func(i int, seq uint64) bool { return (int(seq)-1+i)%2 == 0 }
	// checkSwap runs as the policy is swapped in, under the fleet lock:
	// every device must then be assessed under p from its latest report
	// (or from one stored a moment later, not yet recorded).
	checkSwap := func(p *policy.Policy, reload int) {
		now := time.Now()
		for i, id := range ids {
			e := c.fleet.devices[id]
			if e.subject.Assessment == nil {
				continue
			}
			checks, _, _ := p.Explain(&e.subject, now)
			if len(checks) != len(p.Checks) {
				t.Errorf("reload %d, device %s: checks %v, not those of the policy swapped in", reload, id, checks)
				continue
			}
			d, err := c.store.Device(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if d.LastSeq != e.lastSeq {
				continue // a report stored, its assessment may be either
			}
			if got, want := !failed(checks, "disk_encryption"), encryptedAt(i, e.lastSeq); got != want {
				t.Errorf("reload %d, device %s: disk_encryption passes %v, but its latest report %d says encrypted %v", reload, id, got, e.lastSeq, want)
			}
		}
	}
	strict, lax := strictPolicy(t), policy.Default()
	for i := range 8 {
		time.Sleep(20 * time.Millisecond)
		p := strict
		if i%2 == 0 {
			p = lax
		}
		if err := c.reassess(ctx, p, func() { checkSwap(p, i); c.policy.Store(p) }); err != nil {
			t.Errorf("reload %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	now := time.Now()
	for _, id := range ids {
		latest, err := c.store.LatestReport(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		encrypted := decodeReport(latest.Body).GetDisk().GetSystemEncrypted()
		subj, pol, _ := c.fleet.judged(id, &c.policy)
		if pol != strict {
			t.Fatal("the last reload's policy is not in force")
		}
		checks, _, _ := strict.Explain(&subj, now)
		if len(checks) != 1 || checks[0].GetName() != "disk_encryption" {
			t.Errorf("device %s: checks %v; want disk_encryption alone, as the policy in force has", id, checks)
			continue
		}
		if passed := checks[0].GetOutcome() == posturev1.Outcome_OUTCOME_PASS; passed != encrypted {
			t.Errorf("device %s: disk_encryption %v, but its latest report (%d) says encrypted %v", id, checks[0].GetOutcome(), latest.Seq, encrypted)
		}
	}
}
