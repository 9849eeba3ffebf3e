package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var ctx = context.Background()

// db is a real store with helpers that make changes and return their
// events.
type db struct {
	t       *testing.T
	st      *sqlite.Store
	streams map[string]uint64
	heads   map[string][]byte
	seqs    map[string]uint64
}

func newDB(t *testing.T) *db {
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &db{t: t, st: st, streams: map[string]uint64{}, heads: map[string][]byte{}, seqs: map[string]uint64{}}
}

// certKey stands for the SHA-256 of the public key of the certificate
// issued with serial.
func certKey(serial string) []byte {
	sum := sha256.Sum256([]byte("tls key " + serial))
	return sum[:]
}

// cert is the certificate issued with serial, with its key.
func cert(serial string) store.Cert { return store.Cert{Serial: serial, KeySHA256: certKey(serial)} }

func (d *db) enroll(id, serial string, key []byte) store.Event {
	return d.enrollCert(id, cert(serial), key)
}

// enrollCert enrolls with certificate c; one without a key hash stands
// for a certificate issued before keys were recorded.
func (d *db) enrollCert(id string, c store.Cert, key []byte) store.Event {
	d.t.Helper()
	tok := store.Token{Hash: []byte(fmt.Sprintf("token-%s-%s", id, c.Serial)), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}
	if err := d.st.CreateToken(ctx, tok); err != nil {
		d.t.Fatal(err)
	}
	_, ev, err := d.st.EnrollDevice(ctx, tok.Hash, time.Now(), store.Device{ID: id, Identity: "software", IdentityKey: key,
		Assurance: int32(posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE), CertSerial: c.Serial, CertKeySHA256: c.KeySHA256})
	if err != nil {
		d.t.Fatal(err)
	}
	return ev
}

// bind records the key of a certificate enrolled without one.
func (d *db) bind(id, serial string) store.Event {
	d.t.Helper()
	_, ev, err := d.st.BindCertKey(ctx, id, cert(serial), time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	return ev
}

// report stores the device's next report, its disk encrypted or not.
func (d *db) report(id string, encrypted bool) store.Event {
	d.t.Helper()
	if _, ok := d.streams[id]; !ok {
		h, err := d.st.OpenReportStream(ctx, id)
		if err != nil {
			d.t.Fatal(err)
		}
		d.streams[id], d.seqs[id], d.heads[id] = h.Stream, h.LastSeq, h.LastDigest
	}
	seq := d.seqs[id] + 1
	ok := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now()}
	body, _ := proto.Marshal(&posturev1.PostureReport{DeviceId: id, Seq: seq, PrevDigest: d.heads[id], Disk: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: encrypted}})
	sum := sha256.Sum256(body)
	ev, err := d.st.AppendReport(ctx, store.Report{DeviceID: id, Seq: seq, Digest: sum[:], Nonce: sum[:4], Body: body, Proof: sum[:],
		ReceivedAt: time.Now(), PrevDigest: d.heads[id], Stream: d.streams[id]})
	if err != nil {
		d.t.Fatal(err)
	}
	d.seqs[id], d.heads[id] = seq, sum[:]
	return ev
}

func (d *db) state(id string, state posturev1.DeviceState) store.Event {
	d.t.Helper()
	ev, err := d.st.SetDeviceState(ctx, id, int32(state), "test", time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	return ev
}

func (d *db) renew(id, asked, serial string) store.Event {
	d.t.Helper()
	_, ev, err := d.st.RenewCertificate(ctx, id, cert(asked), cert(serial), time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	return ev
}

// read reads events back as a collector sharing the database does.
func (d *db) read(evs []store.Event) []store.Event {
	d.t.Helper()
	ids := make([]uint64, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	out, err := d.st.Events(ctx, ids)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}

// view is what the fleet holds of a device, to compare fleets.
type view struct {
	State    posturev1.DeviceState
	Seq      uint64
	Digest   string
	Cert     uint64
	PrevCert uint64
	Raw      uint32
	HasHead  bool
}

func viewOf(t *testing.T, f *Fleet, id string) view {
	t.Helper()
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		t.Fatalf("fleet does not know %s", id)
	}
	v := view{State: e.subject.State, Seq: e.lastSeq, Cert: e.certTag, PrevCert: e.prevCertTag, HasHead: e.hasHead}
	if e.hasHead {
		v.Digest = fmt.Sprintf("%x", e.lastDigest)
	}
	if e.subject.Assessment != nil {
		v.Raw = e.subject.Assessment.RawScore() + 1 // 0 stays "no assessment"
	}
	return v
}

func strictPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: enc, min_score: 100}]"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestFleet(t *testing.T) *Fleet {
	return New(strictPolicy(t), Budget{Burst: 10, Interval: 1}, time.Now())
}

// Events applied in any order, and any number of times, leave the fleet
// as the database has the device: the newest event of each kind counts.
// A fleet loaded from the database afterwards agrees.
func TestApplyInAnyOrder(t *testing.T) {
	d := newDB(t)
	// Enrolled before certificate keys were recorded, and bound later.
	evs := []store.Event{d.enrollCert("a", store.Cert{Serial: "01"}, []byte("key-1"))}
	for i := range 4 {
		evs = append(evs, d.report("a", i%2 == 0))
	}
	evs = append(evs, d.bind("a", "01"), d.renew("a", "01", "02"), d.report("a", true), d.renew("a", "02", "03"), d.state("a", posturev1.DeviceState_DEVICE_STATE_SUSPECT),
		d.report("a", false), d.state("a", posturev1.DeviceState_DEVICE_STATE_REVOKED))
	read := d.read(evs)

	loaded := newTestFleet(t)
	if err := loaded.Load(ctx, d.st, nil); err != nil {
		t.Fatal(err)
	}
	want := viewOf(t, loaded, "a")
	if want.State != posturev1.DeviceState_DEVICE_STATE_REVOKED || want.Seq != 6 || want.Cert != CertTag("03", certKey("03")) || want.PrevCert != CertTag("02", certKey("02")) {
		t.Fatalf("loaded fleet: %+v", want)
	}

	inOrder := newTestFleet(t)
	for _, ev := range read {
		inOrder.Apply(ev, nil)
	}
	if got := viewOf(t, inOrder, "a"); got != want {
		t.Errorf("applied in order: %+v, loaded %+v", got, want)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		f := newTestFleet(t)
		f.Apply(read[0], nil) // the enrollment first: before it the fleet knows no device
		shuffled := append([]store.Event{}, read[1:]...)
		shuffled = append(shuffled, read[1+rng.IntN(len(read)-1)], read[1+rng.IntN(len(read)-1)])
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		var revoked int
		for _, ev := range shuffled {
			if a := f.Apply(ev, nil); a.Revoked {
				revoked++
			}
		}
		got := viewOf(t, f, "a")
		// The head and the certificates end as stored. The assessment is
		// the newest report's only when that one came last among reports,
		// which a shuffle need not keep; the state is the newest device
		// event's.
		if got.State != want.State || got.Seq != want.Seq || got.Digest != want.Digest || got.Cert != want.Cert || got.PrevCert != want.PrevCert {
			t.Fatalf("round %d: %+v, want %+v", round, got, want)
		}
		if revoked > 1 {
			t.Errorf("round %d: revoked %d times", round, revoked)
		}
	}
}

// A collector applies its own report at once, possibly before it read an
// older device event another collector committed (an enrollment with a
// new certificate elsewhere): that event still counts, and the head stays
// at the report.
func TestApplyOwnReportBeforeOlderDeviceEvent(t *testing.T) {
	d := newDB(t)
	f := newTestFleet(t)
	f.Apply(d.read([]store.Event{d.enroll("a", "01", []byte("key-1"))})[0], nil)
	f.Apply(d.report("a", true), nil)
	again := d.enroll("a", "10", []byte("key-1")) // on another collector
	own := d.report("a", true)
	f.Apply(own, nil)
	if a := f.Apply(d.read([]store.Event{again})[0], nil); !a.Fresh || a.Cause != "enrolled" {
		t.Fatalf("the older enrollment applied after the report: %+v, want it fresh", a)
	}
	v := viewOf(t, f, "a")
	if v.Cert != CertTag("10", certKey("10")) || v.Seq != 2 {
		t.Errorf("after both: certificate %x head %d; want the enrollment's certificate and the report's head 2", v.Cert, v.Seq)
	}
	if err := f.CurrentCert("a", "10", certKey("10")); err != nil {
		t.Errorf("the new certificate is refused: %v", err)
	}
	if a := f.Apply(own, nil); a.Fresh {
		t.Error("the report applied twice")
	}
}

// A reload assesses every device's latest report under the new policy,
// and leaves devices without reports alone; one that cannot read a
// report changes nothing.
func TestReload(t *testing.T) {
	d := newDB(t)
	for _, id := range []string{"a", "b", "c"} {
		d.enroll(id, "01", []byte("key-"+id))
	}
	d.report("a", true)
	d.report("b", false)
	f := New(policy.Default(), Budget{Burst: 10, Interval: 1}, time.Now())
	if err := f.Load(ctx, d.st, nil); err != nil {
		t.Fatal(err)
	}
	// Stored, not yet applied: what a report stream does between its
	// commit and its Apply.
	d.report("a", false)
	strict := strictPolicy(t)
	if err := f.Reload(ctx, d.st, strict); err != nil {
		t.Fatal(err)
	}
	if f.Policy() != strict {
		t.Fatal("the new policy is not in force")
	}
	now := time.Now()
	for id, wantPass := range map[string]bool{"a": false, "b": false} {
		subj, _ := f.Subject(id)
		checks, _, _ := strict.Explain(&subj, now)
		if len(checks) != 1 || checks[0].GetName() != "disk_encryption" || (checks[0].GetOutcome() == posturev1.Outcome_OUTCOME_PASS) != wantPass {
			t.Errorf("device %s after the reload: %v", id, checks)
		}
	}
	if subj, _ := f.Subject("c"); subj.Assessment != nil {
		t.Error("device c has no report but got an assessment")
	}

	// A report that does not decode stops the reload, which then changes
	// nothing.
	before, _ := f.Subject("b")
	bad := store.Report{DeviceID: "b", Seq: 2, Digest: bytes.Repeat([]byte{1}, 32), Nonce: []byte("n"), Body: []byte{0xff, 0xff, 0xff, 0xff, 0xff},
		Proof: []byte("p"), ReceivedAt: time.Now(), PrevDigest: d.heads["b"], Stream: d.streams["b"]}
	if _, err := d.st.AppendReport(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(ctx, d.st, policy.Default()); err == nil {
		t.Fatal("a reload with an unreadable report succeeded")
	}
	if after, _ := f.Subject("b"); after.Assessment != before.Assessment || f.Policy() != strict {
		t.Error("the failed reload changed something")
	}
	if f.reload != nil {
		t.Error("the failed reload is still under way")
	}
}

// A reload while devices report ends with every device assessed under the
// new policy from its latest report, including reports applied while the
// reload read the store.
func TestReloadUnderIngestion(t *testing.T) {
	d := newDB(t)
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("dev-%02d", i)
		ids = append(ids, id)
		d.enroll(id, "01", []byte("key-"+id))
	}
	f := New(policy.Default(), Budget{Burst: 10, Interval: 1}, time.Now())
	if err := f.Load(ctx, d.st, nil); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex // the db helper is not safe for concurrent use
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				ev := d.report(id, (n+i)%2 == 0)
				mu.Unlock()
				f.Apply(ev, nil)
			}
		})
	}
	strict := strictPolicy(t)
	for i := range 6 {
		time.Sleep(20 * time.Millisecond)
		p := strict
		if i%2 == 0 {
			p = policy.Default()
		}
		if err := f.Reload(ctx, d.st, p); err != nil {
			t.Errorf("reload %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	now := time.Now()
	for _, id := range ids {
		latest, err := d.st.LatestReport(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		encrypted := DecodeReport(latest.Body).GetDisk().GetSystemEncrypted()
		subj, pol, _ := f.Judged(id)
		if pol != strict {
			t.Fatal("the last reload's policy is not in force")
		}
		checks, _, _ := strict.Explain(&subj, now)
		if len(checks) != 1 || (checks[0].GetOutcome() == posturev1.Outcome_OUTCOME_PASS) != encrypted {
			t.Errorf("device %s: %v, but its latest report (%d) says encrypted %v", id, checks, latest.Seq, encrypted)
		}
	}
}

// The report budget: a burst at once, then one per interval.
func TestSpendReport(t *testing.T) {
	d := newDB(t)
	start := time.Now()
	f := New(policy.Default(), Budget{Burst: 3, Interval: 10}, start)
	f.Apply(d.read([]store.Event{d.enroll("a", "01", []byte("k"))})[0], nil)
	for i := range 3 {
		if ok, _ := f.SpendReport("a", start, 1); !ok {
			t.Fatalf("report %d of the burst refused", i+1)
		}
	}
	if ok, wait := f.SpendReport("a", start, 1); ok || wait != 10 {
		t.Errorf("beyond the burst: %v, wait %d; want refused for 10 s", ok, wait)
	}
	if ok, _ := f.SpendReport("a", start.Add(10*time.Second), 1); !ok {
		t.Error("one interval later: refused")
	}
	if ok, _ := f.SpendReport("unknown", start, 1); !ok {
		t.Error("an unknown device is held back by a budget (it is refused as unknown instead)")
	}
}

// A certificate stands by its serial and its key: one minted with the
// serial of the device's certificate (or of the one its renewal replaced)
// but another key stands for nothing. A certificate enrolled before keys
// were recorded stands by its serial alone, and says so, until its key is
// bound; from then on another key is refused.
func TestCertStanding(t *testing.T) {
	d := newDB(t)
	f := newTestFleet(t)
	apply := func(ev store.Event) { f.Apply(d.read([]store.Event{ev})[0], nil) }
	apply(d.enroll("a", "01", []byte("key-a")))
	apply(d.renew("a", "01", "02"))
	apply(d.enrollCert("b", store.Cert{Serial: "01"}, []byte("key-b")))
	other := sha256.Sum256([]byte("another key"))
	type standing struct {
		previous, unbound bool
		err               error
	}
	check := func(t *testing.T, id, serial string, key []byte, want standing) {
		t.Helper()
		var got standing
		got.previous, got.unbound, got.err = f.CertStanding(id, serial, key)
		if got.previous != want.previous || got.unbound != want.unbound || !errors.Is(got.err, want.err) {
			t.Errorf("CertStanding(%s, %s, %x) = %+v, want %+v", id, serial, key[:4], got, want)
		}
		if cur := f.CurrentCert(id, serial, key); (cur == nil) != (want.err == nil && !want.previous) {
			t.Errorf("CurrentCert(%s, %s, %x) = %v", id, serial, key[:4], cur)
		}
	}
	for _, tt := range []struct {
		name, id, serial string
		key              []byte
		want             standing
	}{
		{"current", "a", "02", certKey("02"), standing{}},
		{"previous", "a", "01", certKey("01"), standing{previous: true}},
		{"current serial, another key", "a", "02", other[:], standing{err: ErrOldCertificate}},
		{"previous serial, another key", "a", "01", other[:], standing{err: ErrOldCertificate}},
		{"another serial", "a", "03", certKey("03"), standing{err: ErrOldCertificate}},
		{"unknown device", "z", "01", certKey("01"), standing{err: ErrUnknownDevice}},
		{"enrolled before keys were recorded", "b", "01", certKey("01"), standing{unbound: true}},
		{"enrolled before keys were recorded, another key", "b", "01", other[:], standing{unbound: true}},
	} {
		t.Run(tt.name, func(t *testing.T) { check(t, tt.id, tt.serial, tt.key, tt.want) })
	}
	// A gateway that names a certificate by its serial alone is refused
	// once the key is recorded.
	if err := f.CurrentCert("a", "02", nil); !errors.Is(err, ErrOldCertificate) {
		t.Errorf("CurrentCert by serial alone of a certificate with a recorded key: %v, want ErrOldCertificate", err)
	}
	if err := f.CurrentCert("b", "01", nil); err != nil {
		t.Errorf("CurrentCert by serial alone of a certificate without a recorded key: %v", err)
	}
	apply(d.bind("b", "01"))
	t.Run("bound", func(t *testing.T) { check(t, "b", "01", certKey("01"), standing{}) })
	t.Run("bound, another key", func(t *testing.T) { check(t, "b", "01", other[:], standing{err: ErrOldCertificate}) })
}
