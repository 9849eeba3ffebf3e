package collector

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
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
// and reports, for a collector to start on.
func seedStore(t *testing.T, dir string, ids []string, reports ...store.Report) {
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
