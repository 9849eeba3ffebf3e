// Package storetest is the contract suite of store.Store: every backend
// runs it (store/sqlite and store/postgres each from a test of their own),
// so that no behaviour exists in one backend only.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/posture-project/posture/collector/store"
)

// Opener opens a store on a new, empty database for one test, and returns
// with it a function that opens the same database again (after the first
// store was closed). The suite closes what it opens.
type Opener func(t *testing.T) (s store.Store, reopen func(t *testing.T) store.Store)

// Run runs the contract suite against the stores open makes.
func Run(t *testing.T, open Opener) {
	c := &suite{open: open}
	tests := []struct {
		name string
		run  func(*testing.T)
	}{
		{"TokenRoundTrip", c.tokenRoundTrip},
		{"RevokeToken", c.revokeToken},
		{"EnrollDeviceToken", c.enrollDeviceToken},
		{"EnrollDeviceRace", c.enrollDeviceRace},
		{"ReEnroll", c.reEnroll},
		{"ReEnrollIdentity", c.reEnrollIdentity},
		{"ApproveDevice", c.approveDevice},
		{"PinnedEKs", c.pinnedEKs},
		{"SetDeviceState", c.setDeviceState},
		{"RenewCertificate", c.renewCertificate},
		{"BindCertKey", c.bindCertKey},
		{"OpenReportStream", c.openReportStream},
		{"AppendReport", c.appendReport},
		{"AppendReportStreams", c.appendReportStreams},
		{"AppendReportConcurrentDevices", c.appendReportConcurrentDevices},
		{"TPMClockAndReboots", c.tpmClockAndReboots},
		{"Reports", c.reports},
		{"ScanFleet", c.scanFleet},
		{"PruneReports", c.pruneReports},
		{"Events", c.events},
		{"EventsOfOneDeviceInOrder", c.eventsOfOneDeviceInOrder},
		{"PruneEvents", c.pruneEvents},
		{"Gateways", c.gateways},
		{"Decisions", c.decisions},
		{"ClaimIdentity", c.claimIdentity},
		{"Replicas", c.replicas},
		{"Reopen", c.reopenKeepsEverything},
		{"Closed", c.closed},
		{"CloseRacingWrites", c.closeRacingWrites},
		{"CanceledContext", c.canceledContext},
		{"HostileText", c.hostileText},
		{"Standings", c.standings},
		{"Outbox", c.outbox},
		{"OutboxInOrder", c.outboxInOrder},
		{"Receivers", c.receivers},
		{"ReceiversClaimedOnce", c.receiversClaimedOnce},
		{"Leases", c.leases},
		{"Bindings", c.bindings},
		{"DecisionsAnnounced", c.decisionsAnnounced},
		{"Audit", c.audit},
		{"Sessions", c.sessions},
		{"SignInLinks", c.signInLinks},
		{"SignInLinkRace", c.signInLinkRace},
		{"PruneConsole", c.pruneConsole},
		{"SampleReports", c.sampleReports},
		{"Browser", c.browser},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}

type suite struct{ open Opener }

var ctx = context.Background()

// fresh opens an empty store and closes it when the test ends.
func (c *suite) fresh(t *testing.T) (store.Store, func(t *testing.T, s store.Store) store.Store) {
	t.Helper()
	s, reopen := c.open(t)
	closed := false
	t.Cleanup(func() {
		if !closed {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	})
	again := func(t *testing.T, old store.Store) store.Store {
		t.Helper()
		closed = true
		if err := old.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		s2 := reopen(t)
		t.Cleanup(func() { s2.Close() })
		return s2
	}
	return s, again
}

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// createToken stores a token for secret and returns its hash.
func createToken(t *testing.T, s store.Store, secret string, uses uint32, expires time.Time) []byte {
	t.Helper()
	tok := store.Token{Hash: hash(secret), Description: "token " + secret, CreatedAt: time.Now(), ExpiresAt: expires, Uses: uses}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return tok.Hash
}

func newDevice(id string) store.Device {
	return store.Device{ID: id, Hostname: id + ".example.org", Platform: "linux", Identity: "software",
		IdentityKey: []byte("pkix-" + id), Assurance: 1, CertSerial: "01", CertKeySHA256: keyHash("01")}
}

// keyHash stands for the key hash of the certificate issued with serial.
func keyHash(serial string) []byte { return hash("tls key of certificate " + serial) }

// cert is the certificate issued with serial; forged is one minted with
// the same serial and another key.
func cert(serial string) store.Cert { return store.Cert{Serial: serial, KeySHA256: keyHash(serial)} }
func forged(serial string) store.Cert {
	return store.Cert{Serial: serial, KeySHA256: hash("another key")}
}

// enroll creates a one-use token and enrolls a device with it.
func enroll(t *testing.T, s store.Store, id string) store.Device {
	t.Helper()
	tok := createToken(t, s, "enroll-"+id, 1, time.Now().Add(time.Hour))
	d, ev, err := s.EnrollDevice(ctx, tok, time.Now(), newDevice(id))
	if err != nil {
		t.Fatalf("EnrollDevice(%s): %v", id, err)
	}
	if ev.ID == 0 || ev.Kind != store.EventEnrolled || ev.DeviceID != id {
		t.Errorf("EnrollDevice(%s) event = %+v, want an enrolled event with an ID", id, ev)
	}
	return d
}

// report is the report of a device at seq in a chain of variant: its
// digest is over its body, and it continues the report before it in the
// chain of "" (the honest one).
func report(id string, seq uint64, variant string) store.Report {
	body := fmt.Sprintf("report %s/%d %s", id, seq, variant)
	digest := sha256.Sum256([]byte(body))
	r := store.Report{DeviceID: id, Seq: seq, Digest: digest[:], Nonce: []byte(fmt.Sprintf("nonce-%d", seq)),
		Body: []byte(body), Proof: []byte("sig-" + variant), ReceivedAt: time.Unix(1_700_000_000+int64(seq), 0).UTC()}
	if seq > 1 {
		r.PrevDigest = report(id, seq-1, "").Digest
	}
	return r
}

// stream opens a report stream of a device.
func stream(t *testing.T, s store.Store, id string) store.StreamHead {
	t.Helper()
	h, err := s.OpenReportStream(ctx, id)
	if err != nil {
		t.Fatalf("OpenReportStream(%s): %v", id, err)
	}
	return h
}

// appendChain opens a stream and appends reports from..to of device id.
func appendChain(t *testing.T, s store.Store, id string, from, to uint64) {
	t.Helper()
	h := stream(t, s, id)
	for seq := from; seq <= to; seq++ {
		r := report(id, seq, "")
		r.Stream = h.Stream
		if _, err := s.AppendReport(ctx, r); err != nil {
			t.Fatalf("AppendReport %s/%d: %v", id, seq, err)
		}
	}
}

func count(t *testing.T, s store.Store, id string) int {
	t.Helper()
	n, err := s.CountReports(ctx, id)
	if err != nil {
		t.Fatalf("CountReports: %v", err)
	}
	return n
}

func device(t *testing.T, s store.Store, id string) store.Device {
	t.Helper()
	d, err := s.Device(ctx, id)
	if err != nil {
		t.Fatalf("Device(%s): %v", id, err)
	}
	return d
}

func allDevices(t *testing.T, s store.Store) []store.Device {
	t.Helper()
	ds, err := s.DevicesAfter(ctx, "", -1)
	if err != nil {
		t.Fatalf("DevicesAfter: %v", err)
	}
	return ds
}

func (c *suite) tokenRoundTrip(t *testing.T) {
	s, _ := c.fresh(t)
	want := store.Token{Hash: hash("secret"), Description: "laptops, batch 1",
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), ExpiresAt: time.Date(2026, 1, 3, 3, 4, 5, 6, time.UTC), Uses: 5}
	if err := s.CreateToken(ctx, want); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	got, err := s.Token(ctx, want.Hash)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Token mismatch (-want +got):\n%s", diff)
	}
	if err := s.CreateToken(ctx, want); err == nil {
		t.Errorf("CreateToken with a duplicate hash succeeded")
	}
	if _, err := s.Token(ctx, hash("other")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Token(unknown) error = %v, want ErrNotFound", err)
	}
	if err := s.CreateToken(ctx, store.Token{}); err == nil {
		t.Errorf("CreateToken without a hash succeeded")
	}
}

func (c *suite) enrollDeviceToken(t *testing.T) {
	tests := []struct {
		name      string
		uses      uint32
		used      uint32 // uses already consumed when the token is created
		expiresIn time.Duration
		unknown   bool // enroll with a hash no token has
		want      []error
		wantUsed  uint32
	}{
		{name: "consumes one use", uses: 2, expiresIn: time.Hour, want: []error{nil}, wantUsed: 1},
		{name: "one-use token used twice", uses: 1, expiresIn: time.Hour, want: []error{nil, store.ErrTokenUsedUp}, wantUsed: 1},
		{name: "three-use token refuses the fourth", uses: 3, expiresIn: time.Hour, want: []error{nil, nil, nil, store.ErrTokenUsedUp}, wantUsed: 3},
		{name: "expired", uses: 1, expiresIn: -time.Second, want: []error{store.ErrTokenExpired}},
		{name: "expires exactly now", uses: 1, expiresIn: 0, want: []error{store.ErrTokenExpired}},
		{name: "expired is reported before used up", uses: 1, used: 1, expiresIn: -time.Second, want: []error{store.ErrTokenExpired}, wantUsed: 1},
		{name: "unknown", unknown: true, want: []error{store.ErrTokenUnknown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := c.fresh(t)
			now := time.Now().UTC().Truncate(time.Microsecond)
			tok := store.Token{Hash: hash("t"), CreatedAt: now, ExpiresAt: now.Add(tt.expiresIn), Uses: tt.uses, Used: tt.used}
			if err := s.CreateToken(ctx, tok); err != nil {
				t.Fatalf("CreateToken: %v", err)
			}
			enrollHash := tok.Hash
			if tt.unknown {
				enrollHash = hash("not issued")
			}
			var wantDevices []string
			for i, wantErr := range tt.want {
				d := newDevice(fmt.Sprintf("dev-%d", i))
				got, ev, err := s.EnrollDevice(ctx, enrollHash, now, d)
				if !errors.Is(err, wantErr) {
					t.Fatalf("enrollment %d: error = %v, want %v", i, err, wantErr)
				}
				if err != nil {
					if ev.ID != 0 {
						t.Errorf("failed enrollment %d returned event %d", i, ev.ID)
					}
					if _, err := s.Device(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("device of failed enrollment %d: error = %v, want ErrNotFound", i, err)
					}
					continue
				}
				wantDevices = append(wantDevices, d.ID)
				d.State, d.EnrolledAt = store.StateActive, now
				if diff := cmp.Diff(d, got); diff != "" {
					t.Errorf("enrollment %d returned (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(got, device(t, s, d.ID)); diff != "" {
					t.Errorf("stored device differs from returned (-returned +stored):\n%s", diff)
				}
				if ev.Device == nil || !cmp.Equal(*ev.Device, got) {
					t.Errorf("enrollment %d event device = %+v, want the device as stored", i, ev.Device)
				}
			}
			var gotDevices []string
			for _, d := range allDevices(t, s) {
				gotDevices = append(gotDevices, d.ID)
			}
			if diff := cmp.Diff(wantDevices, gotDevices); diff != "" {
				t.Errorf("devices (-want +got):\n%s", diff)
			}
			if !tt.unknown {
				stored, err := s.Token(ctx, tok.Hash)
				if err != nil {
					t.Fatalf("Token: %v", err)
				}
				if stored.Used != tt.wantUsed {
					t.Errorf("token Used = %d, want %d", stored.Used, tt.wantUsed)
				}
			}
		})
	}
}

func (c *suite) enrollDeviceRace(t *testing.T) {
	s, _ := c.fresh(t)
	tok := createToken(t, s, "contested", 1, time.Now().Add(time.Hour))
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, _, errs[i] = s.EnrollDevice(ctx, tok, time.Now(), newDevice(fmt.Sprintf("dev-%02d", i)))
		})
	}
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrTokenUsedUp):
			t.Errorf("enrollment %d: error = %v, want nil or ErrTokenUsedUp", i, err)
		}
	}
	if wins != 1 {
		t.Errorf("%d enrollments succeeded, want exactly 1", wins)
	}
	if n := len(allDevices(t, s)); n != 1 {
		t.Errorf("%d devices stored, want 1", n)
	}
	if got, err := s.Token(ctx, tok); err != nil || got.Used != 1 {
		t.Errorf("Token: Used = %d, err = %v; want 1, nil", got.Used, err)
	}

	// One device enrolling from many places at once: every enrollment
	// that succeeds leaves the device as one of them stored it.
	many := createToken(t, s, "many", n, time.Now().Add(time.Hour))
	for i := range n {
		wg.Go(func() {
			d := newDevice("dev-same")
			d.CertSerial = fmt.Sprintf("%02x", i+1)
			_, _, errs[i] = s.EnrollDevice(ctx, many, time.Now(), d)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("enrollment %d of one device: %v", i, err)
		}
	}
	if got, err := s.Token(ctx, many); err != nil || got.Used != n {
		t.Errorf("Token: Used = %d, err = %v; want %d", got.Used, err, n)
	}
}

func (c *suite) reEnroll(t *testing.T) {
	tests := []struct {
		name     string
		state    int32 // set before re-enrolling; 0 leaves the device active
		wantErr  error
		wantUsed uint32
	}{
		{name: "active device keeps its chain", wantUsed: 1},
		{name: "suspect device keeps its state", state: store.StateSuspect, wantUsed: 1},
		{name: "revoked device is refused", state: store.StateRevoked, wantErr: store.ErrDeviceRevoked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := c.fresh(t)
			first := enroll(t, s, "dev-a")
			appendChain(t, s, "dev-a", 1, 3)
			if tt.state != 0 {
				if _, err := s.SetDeviceState(ctx, "dev-a", tt.state, "test", time.Now()); err != nil {
					t.Fatalf("SetDeviceState: %v", err)
				}
			}
			before := device(t, s, "dev-a")
			tok := createToken(t, s, "again", 1, time.Now().Add(time.Hour))
			later := first.EnrolledAt.Add(time.Hour)
			again := newDevice("dev-a")
			again.Hostname, again.Platform, again.CertSerial = "renamed", "darwin", "02"
			again.IdentityKey = []byte("other key")
			got, _, err := s.EnrollDevice(ctx, tok, later, again)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("EnrollDevice error = %v, want %v", err, tt.wantErr)
			}
			want := before
			if tt.wantErr == nil {
				want.Hostname, want.Platform, want.CertSerial, want.EnrolledAt = "renamed", "darwin", "02", later
				want.IdentityKey = []byte("other key") // re-proven at enrollment, so replaced
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("EnrollDevice returned (-want +got):\n%s", diff)
				}
			}
			stored := device(t, s, "dev-a")
			if diff := cmp.Diff(want, stored); diff != "" {
				t.Errorf("stored device (-want +got):\n%s", diff)
			}
			if stored.LastSeq != 3 {
				t.Errorf("LastSeq = %d, want 3", stored.LastSeq)
			}
			if tokNow, err := s.Token(ctx, tok); err != nil || tokNow.Used != tt.wantUsed {
				t.Errorf("token Used = %d (err %v), want %d", tokNow.Used, err, tt.wantUsed)
			}
		})
	}
}

// reEnrollIdentity: enrolling again keeps the kind of identity, takes a
// weaker state the new enrollment earned, and starts the TPM clock afresh
// with a new key.
func (c *suite) reEnrollIdentity(t *testing.T) {
	clock := store.TPMClock{Clock: 5000, ResetCount: 7, RestartCount: 9}
	tpmDevice := func() store.Device {
		d := newDevice("dev-t")
		d.Identity, d.IdentityKey, d.EKSHA256 = "tpm", []byte("ak-1"), "ek"
		return d
	}
	setup := func(t *testing.T) store.Store {
		s, _ := c.fresh(t)
		if _, _, err := s.EnrollDevice(ctx, createToken(t, s, "first", 1, time.Now().Add(time.Hour)), time.Now(), tpmDevice()); err != nil {
			t.Fatal(err)
		}
		r := report("dev-t", 1, "")
		r.TPM, r.Stream = &clock, stream(t, s, "dev-t").Stream
		if _, err := s.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
		return s
	}
	again := func(t *testing.T, s store.Store, d store.Device) (store.Device, uint32, error) {
		tok := createToken(t, s, "again", 1, time.Now().Add(time.Hour))
		got, _, err := s.EnrollDevice(ctx, tok, time.Now(), d)
		stored, terr := s.Token(ctx, tok)
		if terr != nil {
			t.Fatal(terr)
		}
		return got, stored.Used, err
	}
	t.Run("another kind of identity is refused", func(t *testing.T) {
		s := setup(t)
		d := tpmDevice()
		d.Identity, d.IdentityKey = "software", []byte("pkix-key")
		if _, used, err := again(t, s, d); !errors.Is(err, store.ErrIdentityKind) || used != 0 {
			t.Errorf("re-enroll as software: %v, token used %d; want ErrIdentityKind and the token unused", err, used)
		}
		if got := device(t, s, "dev-t"); got.Identity != "tpm" || string(got.IdentityKey) != "ak-1" {
			t.Errorf("device after the refusal: %s %q; want it unchanged", got.Identity, got.IdentityKey)
		}
	})
	t.Run("a pending claim makes an active device pending", func(t *testing.T) {
		s := setup(t)
		d := tpmDevice()
		d.State, d.StateReason, d.Assurance = store.StatePending, "EK not verified", 0
		got, _, err := again(t, s, d)
		if err != nil || got.State != store.StatePending || got.StateReason != "EK not verified" || got.LastSeq != 1 {
			t.Errorf("re-enroll earning pending: state %d %q head %d, %v; want pending, head 1 kept", got.State, got.StateReason, got.LastSeq, err)
		}
	})
	t.Run("a pending device takes the new state", func(t *testing.T) {
		s, _ := c.fresh(t)
		d := tpmDevice()
		d.State, d.StateReason = store.StatePending, "EK not verified"
		if _, _, err := s.EnrollDevice(ctx, createToken(t, s, "t1", 1, time.Now().Add(time.Hour)), time.Now(), d); err != nil {
			t.Fatal(err)
		}
		d.State, d.StateReason = store.StateActive, ""
		got, _, err := again(t, s, d)
		if err != nil || got.State != store.StateActive || got.EKSHA256 != "ek" {
			t.Errorf("re-enrolled pending device: state %d, ek %q, %v; want active", got.State, got.EKSHA256, err)
		}
	})
	t.Run("a new key starts the TPM clock afresh", func(t *testing.T) {
		s := setup(t)
		d := tpmDevice()
		d.IdentityKey = []byte("ak-2")
		got, _, err := again(t, s, d)
		if err != nil || got.TPMClock != (store.TPMClock{}) || got.State != store.StateActive {
			t.Errorf("re-enroll with a new AK: clock %+v, state %d, %v; want no clock, active", got.TPMClock, got.State, err)
		}
		if stored := device(t, s, "dev-t"); stored.TPMClock != (store.TPMClock{}) {
			t.Errorf("stored clock %+v, want none", stored.TPMClock)
		}
	})
	t.Run("the same key keeps the TPM clock", func(t *testing.T) {
		s := setup(t)
		if got, _, err := again(t, s, tpmDevice()); err != nil || got.TPMClock != clock {
			t.Errorf("re-enroll with the same AK: clock %+v, %v; want %+v", got.TPMClock, err, clock)
		}
	})
}

func (c *suite) approveDevice(t *testing.T) {
	s, _ := c.fresh(t)
	d := newDevice("dev-tpm")
	d.Identity, d.State, d.StateReason, d.EKSHA256 = "tpm", store.StatePending, "EK not verified", "ekhash"
	if _, _, err := s.EnrollDevice(ctx, createToken(t, s, "t1", 1, time.Now().Add(time.Hour)), time.Now(), d); err != nil {
		t.Fatal(err)
	}
	enroll(t, s, "dev-sw")
	got, ev, err := s.ApproveDevice(ctx, "dev-tpm", 2, "approved", time.Now())
	if err != nil || got.State != store.StateActive || got.Assurance != 2 || got.StateReason != "" {
		t.Fatalf("ApproveDevice = %+v, %v", got, err)
	}
	if ev.Kind != store.EventApproved || ev.Device == nil || !cmp.Equal(*ev.Device, got) {
		t.Errorf("ApproveDevice event = %+v, want approved with the device as stored", ev)
	}
	if pinned, err := s.EKPinned(ctx, "ekhash"); err != nil || !pinned {
		t.Errorf("EK not pinned after approval: %v %v", pinned, err)
	}
	for id, want := range map[string]error{"dev-tpm": store.ErrNotPending, "dev-sw": store.ErrNotPending, "nope": store.ErrNotFound} {
		if _, _, err := s.ApproveDevice(ctx, id, 2, "", time.Now()); !errors.Is(err, want) {
			t.Errorf("ApproveDevice(%s) = %v, want %v", id, err, want)
		}
	}
}

func (c *suite) pinnedEKs(t *testing.T) {
	s, _ := c.fresh(t)
	added, err := s.PinEKs(ctx, []string{"aa", "bb", "aa"}, "batch 1", time.Now())
	if err != nil || added != 2 {
		t.Fatalf("PinEKs = %d, %v; want 2 new", added, err)
	}
	if added, err := s.PinEKs(ctx, []string{"bb", "cc"}, "batch 2", time.Now()); err != nil || added != 1 {
		t.Errorf("second PinEKs = %d, %v; want 1 new", added, err)
	}
	for h, want := range map[string]bool{"aa": true, "cc": true, "dd": false} {
		if got, err := s.EKPinned(ctx, h); err != nil || got != want {
			t.Errorf("EKPinned(%s) = %v, %v; want %v", h, got, err, want)
		}
	}
}

func (c *suite) setDeviceState(t *testing.T) {
	type step struct {
		state   int32
		reason  string
		wantErr error
	}
	tests := []struct {
		name       string
		device     string
		steps      []step
		wantState  int32
		wantReason string
	}{
		{name: "suspect then revoked", device: "dev-a",
			steps:     []step{{state: store.StateSuspect, reason: "report chain broken"}, {state: store.StateRevoked, reason: "stolen"}},
			wantState: store.StateRevoked, wantReason: "stolen"},
		{name: "suspect back to active", device: "dev-a",
			steps:     []step{{state: store.StateSuspect, reason: "report chain broken"}, {state: store.StateActive, reason: "checked by admin"}},
			wantState: store.StateActive, wantReason: "checked by admin"},
		{name: "revoked is final", device: "dev-a",
			steps: []step{{state: store.StateRevoked, reason: "stolen"},
				{state: store.StateActive, reason: "found again", wantErr: store.ErrDeviceRevoked},
				{state: store.StateRevoked, reason: "twice", wantErr: store.ErrDeviceRevoked}},
			wantState: store.StateRevoked, wantReason: "stolen"},
		{name: "unknown device", device: "dev-x", steps: []step{{state: store.StateSuspect, wantErr: store.ErrNotFound}}, wantState: store.StateActive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := c.fresh(t)
			enroll(t, s, "dev-a")
			for i, st := range tt.steps {
				ev, err := s.SetDeviceState(ctx, tt.device, st.state, st.reason, time.Now())
				if !errors.Is(err, st.wantErr) {
					t.Fatalf("step %d: error = %v, want %v", i, err, st.wantErr)
				}
				if err == nil && (ev.Kind != store.EventState || ev.Device == nil || ev.Device.State != st.state || ev.Device.StateReason != st.reason) {
					t.Errorf("step %d: event %+v, want a state event with the new state", i, ev)
				}
				if err != nil && ev.ID != 0 {
					t.Errorf("step %d: refused, yet event %d", i, ev.ID)
				}
			}
			d := device(t, s, "dev-a")
			if d.State != tt.wantState || d.StateReason != tt.wantReason {
				t.Errorf("state = %d %q, want %d %q", d.State, d.StateReason, tt.wantState, tt.wantReason)
			}
		})
	}
}

// renewCertificate: a renewal replaces the certificate only when asked
// with the current certificate or the one the last renewal replaced, each
// with the key it was issued for, and only for an active device; a refused
// renewal changes nothing.
func (c *suite) renewCertificate(t *testing.T) {
	certs := func(d store.Device) [2]store.Cert {
		return [2]store.Cert{{Serial: d.CertSerial, KeySHA256: d.CertKeySHA256}, {Serial: d.PrevCertSerial, KeySHA256: d.PrevCertKeySHA256}}
	}
	t.Run("current, then previous, then current again", func(t *testing.T) {
		s, reopen := c.fresh(t)
		enroll(t, s, "dev-a") // certificate "01"
		for _, st := range []struct{ askedWith, issued, wantCur, wantPrev string }{
			{"01", "02", "02", "01"}, // 01 renews; 02 never reaches the device
			{"01", "03", "03", "01"}, // so 01 asks again, and stays the previous
			{"03", "04", "04", "03"}, // 03 arrived and renews in turn
		} {
			want := [2]store.Cert{cert(st.wantCur), cert(st.wantPrev)}
			d, ev, err := s.RenewCertificate(ctx, "dev-a", cert(st.askedWith), cert(st.issued), time.Now())
			if err != nil {
				t.Fatalf("renew with %s: %v", st.askedWith, err)
			}
			if diff := cmp.Diff(want, certs(d)); diff != "" {
				t.Errorf("renew with %s returned (-want +got):\n%s", st.askedWith, diff)
			}
			if ev.Kind != store.EventRenewed || ev.Device == nil || !cmp.Equal(want, certs(*ev.Device)) {
				t.Errorf("renew with %s: event %+v", st.askedWith, ev)
			}
			if diff := cmp.Diff(want, certs(device(t, s, "dev-a"))); diff != "" {
				t.Errorf("after renewing with %s: stored (-want +got):\n%s", st.askedWith, diff)
			}
		}
		if _, _, err := s.RenewCertificate(ctx, "dev-a", cert("01"), cert("05"), time.Now()); !errors.Is(err, store.ErrCertReplaced) {
			t.Errorf("renew with a certificate two renewals old: %v, want ErrCertReplaced", err)
		}
		s = reopen(t, s)
		var row store.FleetRow
		if err := s.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error {
			row = *r
			row.CertKeySHA256, row.PrevCertKeySHA256 = bytes.Clone(r.CertKeySHA256), bytes.Clone(r.PrevCertKeySHA256)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		got := [2]store.Cert{{Serial: row.CertSerial, KeySHA256: row.CertKeySHA256}, {Serial: row.PrevCertSerial, KeySHA256: row.PrevCertKeySHA256}}
		if diff := cmp.Diff([2]store.Cert{cert("04"), cert("03")}, got); diff != "" {
			t.Errorf("fleet row after reopening (-want +got):\n%s", diff)
		}
	})
	t.Run("enrolling again forgets the previous certificate", func(t *testing.T) {
		s, _ := c.fresh(t)
		enroll(t, s, "dev-a")
		if _, _, err := s.RenewCertificate(ctx, "dev-a", cert("01"), cert("02"), time.Now()); err != nil {
			t.Fatal(err)
		}
		d := newDevice("dev-a")
		d.CertSerial, d.CertKeySHA256 = "10", keyHash("10")
		got, _, err := s.EnrollDevice(ctx, createToken(t, s, "again", 1, time.Now().Add(time.Hour)), time.Now(), d)
		if err != nil || got.PrevCertSerial != "" || got.PrevCertKeySHA256 != nil || !bytes.Equal(got.CertKeySHA256, keyHash("10")) {
			t.Errorf("EnrollDevice returned certificates %+v, %v; want 10 with its key and no previous one", certs(got), err)
		}
		for _, old := range []string{"01", "02"} {
			if _, _, err := s.RenewCertificate(ctx, "dev-a", cert(old), cert("11"), time.Now()); !errors.Is(err, store.ErrCertReplaced) {
				t.Errorf("renew with %s from before enrolling again: %v, want ErrCertReplaced", old, err)
			}
		}
	})
	t.Run("a certificate issued before keys were recorded renews by its serial", func(t *testing.T) {
		s, _ := c.fresh(t)
		d := newDevice("dev-a")
		d.CertKeySHA256 = nil
		if _, _, err := s.EnrollDevice(ctx, createToken(t, s, "legacy", 1, time.Now().Add(time.Hour)), time.Now(), d); err != nil {
			t.Fatal(err)
		}
		got, _, err := s.RenewCertificate(ctx, "dev-a", cert("01"), cert("02"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		// The previous certificate's key stays unknown; the new one's is
		// recorded.
		if diff := cmp.Diff([2]store.Cert{cert("02"), {Serial: "01"}}, certs(got)); diff != "" {
			t.Errorf("renewed (-want +got):\n%s", diff)
		}
	})
	setState := func(t *testing.T, s store.Store, state int32) {
		if _, err := s.SetDeviceState(ctx, "dev-a", state, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	renewed := func(t *testing.T, s store.Store) {
		enroll(t, s, "dev-a")
		if _, _, err := s.RenewCertificate(ctx, "dev-a", cert("01"), cert("02"), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, s store.Store)
		asked store.Cert
		want  error
	}{
		{"unknown device", func(*testing.T, store.Store) {}, cert("01"), store.ErrNotFound},
		{"suspect", func(t *testing.T, s store.Store) { enroll(t, s, "dev-a"); setState(t, s, store.StateSuspect) }, cert("01"), store.ErrDeviceNotActive},
		{"pending", func(t *testing.T, s store.Store) { enroll(t, s, "dev-a"); setState(t, s, store.StatePending) }, cert("01"), store.ErrDeviceNotActive},
		{"revoked", func(t *testing.T, s store.Store) { enroll(t, s, "dev-a"); setState(t, s, store.StateRevoked) }, cert("01"), store.ErrDeviceRevoked},
		{"another certificate", func(t *testing.T, s store.Store) { enroll(t, s, "dev-a") }, cert("99"), store.ErrCertReplaced},
		{"the serial with another key", func(t *testing.T, s store.Store) { enroll(t, s, "dev-a") }, forged("01"), store.ErrCertKey},
		{"the previous serial with another key", renewed, forged("01"), store.ErrCertKey},
		{"the current serial with another key after a renewal", renewed, forged("02"), store.ErrCertKey},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := c.fresh(t)
			tt.setup(t, s)
			before, _ := s.Device(ctx, "dev-a")
			if _, ev, err := s.RenewCertificate(ctx, "dev-a", tt.asked, cert("03"), time.Now()); !errors.Is(err, tt.want) || ev.ID != 0 {
				t.Fatalf("RenewCertificate = event %d, %v; want no event, %v", ev.ID, err, tt.want)
			}
			if after, _ := s.Device(ctx, "dev-a"); !cmp.Equal(certs(before), certs(after)) {
				t.Errorf("refused renewal changed the certificates: %+v to %+v", certs(before), certs(after))
			}
		})
	}
}

// bindCertKey: the key hash of a certificate issued before keys were
// recorded is recorded once, by the first key that claims the serial;
// every other key is refused from then on, and nothing else changes.
func (c *suite) bindCertKey(t *testing.T) {
	// legacy enrolls dev-a with certificate 01, renewed to 02 unless
	// enrolledOnly, with no key recorded for either.
	legacy := func(t *testing.T, s store.Store, enrolledOnly bool) {
		d := newDevice("dev-a")
		d.CertKeySHA256 = nil
		if _, _, err := s.EnrollDevice(ctx, createToken(t, s, "legacy", 1, time.Now().Add(time.Hour)), time.Now(), d); err != nil {
			t.Fatal(err)
		}
		if !enrolledOnly {
			// The renewal records the new certificate's key; the one it
			// replaced keeps none.
			if _, _, err := s.RenewCertificate(ctx, "dev-a", cert("01"), cert("02"), time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("current certificate", func(t *testing.T) {
		s, reopen := c.fresh(t)
		legacy(t, s, true)
		d, ev, err := s.BindCertKey(ctx, "dev-a", cert("01"), time.Now())
		if err != nil || !bytes.Equal(d.CertKeySHA256, keyHash("01")) {
			t.Fatalf("BindCertKey = key %x, %v; want the key recorded", d.CertKeySHA256, err)
		}
		if ev.ID == 0 || ev.Kind != store.EventCertBound || ev.Device == nil || !bytes.Equal(ev.Device.CertKeySHA256, keyHash("01")) {
			t.Errorf("event %+v, want a cert_bound event with the key", ev)
		}
		// Other collectors learn the key from the event as they read it.
		if read, err := s.Events(ctx, []uint64{ev.ID}); err != nil || len(read) != 1 || read[0].Kind != store.EventCertBound ||
			read[0].Device == nil || !bytes.Equal(read[0].Device.CertKeySHA256, keyHash("01")) {
			t.Errorf("event read back: %+v, %v; want the cert_bound event with the key", read, err)
		}
		// The same key again changes nothing and records no event.
		if _, ev, err := s.BindCertKey(ctx, "dev-a", cert("01"), time.Now()); err != nil || ev.ID != 0 {
			t.Errorf("binding the same key again: event %d, %v; want none, nil", ev.ID, err)
		}
		// Another key with the same serial is refused, before and after
		// a restart.
		for i := range 2 {
			if i == 1 {
				s = reopen(t, s)
			}
			if _, ev, err := s.BindCertKey(ctx, "dev-a", forged("01"), time.Now()); !errors.Is(err, store.ErrCertKey) || ev.ID != 0 {
				t.Errorf("binding another key: event %d, %v; want ErrCertKey", ev.ID, err)
			}
			if _, _, err := s.RenewCertificate(ctx, "dev-a", forged("01"), cert("02"), time.Now()); !errors.Is(err, store.ErrCertKey) {
				t.Errorf("renewing with another key once bound: %v; want ErrCertKey", err)
			}
			if d := device(t, s, "dev-a"); !bytes.Equal(d.CertKeySHA256, keyHash("01")) || d.CertSerial != "01" {
				t.Errorf("stored certificate %s %x, want 01 with its key", d.CertSerial, d.CertKeySHA256)
			}
		}
	})
	t.Run("previous certificate", func(t *testing.T) {
		s, _ := c.fresh(t)
		legacy(t, s, false)
		d, ev, err := s.BindCertKey(ctx, "dev-a", cert("01"), time.Now())
		if err != nil || ev.ID == 0 || d.PrevCertSerial != "01" || !bytes.Equal(d.PrevCertKeySHA256, keyHash("01")) || !bytes.Equal(d.CertKeySHA256, keyHash("02")) {
			t.Fatalf("BindCertKey of the previous certificate = %+v, event %d, %v", d, ev.ID, err)
		}
	})
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, s store.Store)
		cert  store.Cert
		want  error
	}{
		{"unknown device", func(*testing.T, store.Store) {}, cert("01"), store.ErrNotFound},
		{"another serial", func(t *testing.T, s store.Store) { legacy(t, s, true) }, cert("07"), store.ErrCertReplaced},
		{"a key already recorded", func(t *testing.T, s store.Store) { enroll(t, s, "dev-a") }, forged("01"), store.ErrCertKey},
		{"revoked", func(t *testing.T, s store.Store) {
			legacy(t, s, true)
			if _, err := s.SetDeviceState(ctx, "dev-a", store.StateRevoked, "lost", time.Now()); err != nil {
				t.Fatal(err)
			}
		}, cert("01"), store.ErrDeviceRevoked},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := c.fresh(t)
			tt.setup(t, s)
			before, _ := s.Device(ctx, "dev-a")
			if _, ev, err := s.BindCertKey(ctx, "dev-a", tt.cert, time.Now()); !errors.Is(err, tt.want) || ev.ID != 0 {
				t.Fatalf("BindCertKey = event %d, %v; want no event, %v", ev.ID, err, tt.want)
			}
			if after, _ := s.Device(ctx, "dev-a"); !cmp.Equal(before, after) {
				t.Errorf("refused binding changed the device: %+v to %+v", before, after)
			}
		})
	}
}

func (c *suite) openReportStream(t *testing.T) {
	s, _ := c.fresh(t)
	enroll(t, s, "dev-a")
	first := stream(t, s, "dev-a")
	if first.LastSeq != 0 || first.LastDigest != nil {
		t.Errorf("first stream of a new device: head %d %x, want none", first.LastSeq, first.LastDigest)
	}
	appendChain(t, s, "dev-a", 1, 2)
	h := stream(t, s, "dev-a")
	if h.Stream <= first.Stream {
		t.Errorf("stream numbers %d then %d: want them to grow", first.Stream, h.Stream)
	}
	if h.LastSeq != 2 || !bytes.Equal(h.LastDigest, report("dev-a", 2, "").Digest) {
		t.Errorf("stream head %d %x, want 2 and its digest", h.LastSeq, h.LastDigest)
	}
	if _, err := s.OpenReportStream(ctx, "dev-x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stream of an unknown device: %v, want ErrNotFound", err)
	}
	if _, err := s.SetDeviceState(ctx, "dev-a", store.StateRevoked, "stolen", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenReportStream(ctx, "dev-a"); !errors.Is(err, store.ErrDeviceRevoked) {
		t.Errorf("stream of a revoked device: %v, want ErrDeviceRevoked", err)
	}
}

func (c *suite) appendReport(t *testing.T) {
	type appendCall struct {
		r         store.Report
		newStream bool // open another stream before this append
		oldStream bool // send it on the stream before the newest
		wantErr   error
		wantNoop  bool // nil error, no event
	}
	with := func(r store.Report, f func(*store.Report)) store.Report { f(&r); return r }
	tests := []struct {
		name       string
		appends    []appendCall
		revoke     int // revoke the device before this append (1-based); 0 never
		wantHead   uint64
		wantStored []uint64 // seqs, newest first
	}{
		{name: "stored and head moved", appends: []appendCall{{r: report("dev-a", 1, "")}}, wantHead: 1, wantStored: []uint64{1}},
		{name: "a chain", appends: []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 2, "")}, {r: report("dev-a", 3, "")}},
			wantHead: 3, wantStored: []uint64{3, 2, 1}},
		{name: "the same report again is a no-op",
			appends: []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 2, "")},
				{r: with(report("dev-a", 1, ""), func(r *store.Report) { r.ReceivedAt = r.ReceivedAt.Add(time.Hour) }), wantNoop: true}},
			wantHead: 2, wantStored: []uint64{2, 1}},
		{name: "the same report on a newer stream is a no-op",
			appends:  []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 1, ""), newStream: true, wantNoop: true}},
			wantHead: 1, wantStored: []uint64{1}},
		{name: "another report for a stored seq conflicts",
			appends:  []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 1, "forged"), wantErr: store.ErrConflict}},
			wantHead: 1, wantStored: []uint64{1}},
		{name: "a report older than the head conflicts",
			appends: []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 2, "")}, {r: report("dev-a", 3, "")},
				{r: report("dev-a", 2, "fork"), wantErr: store.ErrConflict}},
			wantHead: 3, wantStored: []uint64{3, 2, 1}},
		{name: "a report that does not continue the head breaks the chain",
			appends: []appendCall{{r: report("dev-a", 1, "")},
				{r: with(report("dev-a", 2, ""), func(r *store.Report) { r.PrevDigest = report("dev-a", 1, "other").Digest }), wantErr: store.ErrChainBroken}},
			wantHead: 1, wantStored: []uint64{1}},
		{name: "a first report naming a previous one breaks the chain",
			appends:  []appendCall{{r: with(report("dev-a", 1, ""), func(r *store.Report) { r.PrevDigest = []byte("x") }), wantErr: store.ErrChainBroken}},
			wantHead: 0},
		{name: "a gap", appends: []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 3, ""), wantErr: store.ErrSequenceGap}},
			wantHead: 1, wantStored: []uint64{1}},
		{name: "a first report past 1 is a gap", appends: []appendCall{{r: report("dev-a", 2, ""), wantErr: store.ErrSequenceGap}}, wantHead: 0},
		{name: "a superseded stream stores nothing",
			appends:  []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 2, ""), newStream: true}, {r: report("dev-a", 3, ""), oldStream: true, wantErr: store.ErrSuperseded}},
			wantHead: 2, wantStored: []uint64{2, 1}},
		{name: "a report held back on a superseded stream is not a fork",
			appends: []appendCall{{r: report("dev-a", 1, "")},
				{r: report("dev-a", 2, ""), newStream: true},
				{r: report("dev-a", 2, "sent before the reconnect"), oldStream: true, wantErr: store.ErrSuperseded}},
			wantHead: 2, wantStored: []uint64{2, 1}},
		{name: "a revoked device stores nothing", revoke: 2,
			appends:  []appendCall{{r: report("dev-a", 1, "")}, {r: report("dev-a", 2, ""), wantErr: store.ErrDeviceRevoked}},
			wantHead: 1, wantStored: []uint64{1}},
		{name: "unknown device", appends: []appendCall{{r: report("dev-unknown", 1, ""), wantErr: store.ErrNotFound}}, wantHead: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := c.fresh(t)
			enroll(t, s, "dev-a")
			streams := []uint64{stream(t, s, "dev-a").Stream}
			var lastEvent uint64
			for i, a := range tt.appends {
				if tt.revoke == i+1 {
					if _, err := s.SetDeviceState(ctx, "dev-a", store.StateRevoked, "stolen", time.Now()); err != nil {
						t.Fatal(err)
					}
				}
				if a.newStream {
					streams = append(streams, stream(t, s, "dev-a").Stream)
				}
				a.r.Stream = streams[len(streams)-1]
				if a.oldStream {
					a.r.Stream = streams[len(streams)-2]
				}
				ev, err := s.AppendReport(ctx, a.r)
				if !errors.Is(err, a.wantErr) {
					t.Fatalf("append %d: error = %v, want %v", i, err, a.wantErr)
				}
				switch {
				case err != nil || a.wantNoop:
					if ev.ID != 0 {
						t.Errorf("append %d changed nothing, yet returned event %d", i, ev.ID)
					}
				case ev.ID <= lastEvent || ev.Kind != store.EventReport || ev.DeviceID != "dev-a" || ev.Report == nil ||
					ev.Report.Seq != a.r.Seq || !bytes.Equal(ev.Report.Digest, a.r.Digest):
					t.Errorf("append %d: event %+v, want a report event after %d", i, ev, lastEvent)
				default:
					lastEvent = ev.ID
				}
			}
			d := device(t, s, "dev-a")
			if d.LastSeq != tt.wantHead {
				t.Errorf("head %d, want %d", d.LastSeq, tt.wantHead)
			}
			if tt.wantHead > 0 {
				head := report("dev-a", tt.wantHead, "")
				if !bytes.Equal(d.LastDigest, head.Digest) || !d.LastSeen.Equal(head.ReceivedAt) {
					t.Errorf("head digest %x seen %v, want %x %v", d.LastDigest, d.LastSeen, head.Digest, head.ReceivedAt)
				}
			} else if d.LastDigest != nil || !d.LastSeen.IsZero() {
				t.Errorf("no head expected, got digest %x seen %v", d.LastDigest, d.LastSeen)
			}
			stored, err := s.Reports(ctx, "dev-a", 0)
			if err != nil {
				t.Fatal(err)
			}
			var seqs []uint64
			for _, r := range stored {
				seqs = append(seqs, r.Seq)
				want := report("dev-a", r.Seq, "")
				if !bytes.Equal(r.Digest, want.Digest) || !bytes.Equal(r.Body, want.Body) || !bytes.Equal(r.Proof, want.Proof) ||
					!bytes.Equal(r.Nonce, want.Nonce) || !r.ReceivedAt.Equal(want.ReceivedAt) {
					t.Errorf("stored report %d = %+v, want %+v", r.Seq, r, want)
				}
			}
			if diff := cmp.Diff(tt.wantStored, seqs); diff != "" {
				t.Errorf("stored seqs (-want +got):\n%s", diff)
			}
			if got := count(t, s, "dev-a"); got != len(tt.wantStored) {
				t.Errorf("CountReports = %d, want %d", got, len(tt.wantStored))
			}
		})
	}
}

// appendReportStreams: two streams of one device racing with reports for
// the same place in the chain (two collectors, or a reconnect while a
// report was held back): exactly one is stored, the other stream is told
// it was superseded, and no report is taken for a fork.
func (c *suite) appendReportStreams(t *testing.T) {
	s, _ := c.fresh(t)
	enroll(t, s, "dev-a")
	appendChain(t, s, "dev-a", 1, 1)
	const rounds = 20
	for round := range rounds {
		seq := uint64(round + 2)
		a, b := stream(t, s, "dev-a"), stream(t, s, "dev-a")
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, h := range []store.StreamHead{a, b} {
			wg.Go(func() {
				r := report("dev-a", seq, "")
				if i == 0 {
					r = report("dev-a", seq, "from the older stream")
				}
				r.Stream = h.Stream
				_, errs[i] = s.AppendReport(ctx, r)
			})
		}
		wg.Wait()
		if errs[1] != nil || !errors.Is(errs[0], store.ErrSuperseded) {
			t.Fatalf("round %d: older stream %v, newer stream %v; want ErrSuperseded and nil", round, errs[0], errs[1])
		}
	}
	if d := device(t, s, "dev-a"); d.LastSeq != rounds+1 || !bytes.Equal(d.LastDigest, report("dev-a", rounds+1, "").Digest) {
		t.Errorf("head %d %x, want the newer streams' chain", d.LastSeq, d.LastDigest)
	}
}

func (c *suite) appendReportConcurrentDevices(t *testing.T) {
	s, _ := c.fresh(t)
	const devices, perDevice = 20, 10
	for i := range devices {
		enroll(t, s, fmt.Sprintf("dev-%02d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, devices*perDevice)
	events := make(chan uint64, devices*perDevice)
	for i := range devices {
		wg.Go(func() {
			id := fmt.Sprintf("dev-%02d", i)
			h, err := s.OpenReportStream(ctx, id)
			if err != nil {
				errs <- err
				return
			}
			for seq := uint64(1); seq <= perDevice; seq++ {
				r := report(id, seq, "")
				r.Stream = h.Stream
				ev, err := s.AppendReport(ctx, r)
				errs <- err
				events <- ev.ID
			}
		})
	}
	wg.Wait()
	close(errs)
	close(events)
	for err := range errs {
		if err != nil {
			t.Errorf("AppendReport: %v", err)
		}
	}
	seen := map[uint64]bool{}
	for id := range events {
		if id == 0 || seen[id] {
			t.Errorf("event ID %d given twice or zero", id)
		}
		seen[id] = true
	}
	for i := range devices {
		id := fmt.Sprintf("dev-%02d", i)
		if got := count(t, s, id); got != perDevice {
			t.Errorf("%s: %d reports, want %d", id, got, perDevice)
		}
		if d := device(t, s, id); d.LastSeq != perDevice {
			t.Errorf("%s: head %d, want %d", id, d.LastSeq, perDevice)
		}
	}
}

func (c *suite) tpmClockAndReboots(t *testing.T) {
	s, _ := c.fresh(t)
	enroll(t, s, "dev-a")
	h := stream(t, s, "dev-a")
	steps := []struct {
		clock  store.TPMClock
		reboot bool
		boot   []byte
	}{
		{store.TPMClock{Clock: 100, ResetCount: 1}, false, []byte("reading 1")},
		{store.TPMClock{Clock: 200, ResetCount: 2}, true, nil},
		{store.TPMClock{Clock: 300, ResetCount: 2, RestartCount: 1}, false, nil},
	}
	for i, st := range steps {
		r := report("dev-a", uint64(i+1), "")
		r.TPM, r.Reboot, r.MeasuredBoot, r.Stream = &st.clock, st.reboot, st.boot, h.Stream
		ev, err := s.AppendReport(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Report.TPM == nil || *ev.Report.TPM != st.clock || ev.Report.Reboot != st.reboot || !bytes.Equal(ev.Report.MeasuredBoot, st.boot) {
			t.Errorf("report %d event %+v, want its clock, reboot and reading", i+1, ev.Report)
		}
	}
	if d := device(t, s, "dev-a"); d.TPMClock != steps[2].clock || d.Reboots != 1 {
		t.Errorf("TPMClock = %+v, reboots %d; want %+v and 1", d.TPMClock, d.Reboots, steps[2].clock)
	}
	var row store.FleetRow
	if err := s.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error {
		row = *r
		row.MeasuredBoot = bytes.Clone(r.MeasuredBoot)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if string(row.MeasuredBoot) != "reading 1" || row.TPMClock != steps[2].clock {
		t.Errorf("fleet row reading %q clock %+v: want the last reading kept and the last clock", row.MeasuredBoot, row.TPMClock)
	}
}

func (c *suite) reports(t *testing.T) {
	s, _ := c.fresh(t)
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		enroll(t, s, id)
	}
	appendChain(t, s, "dev-a", 1, 5)
	appendChain(t, s, "dev-b", 1, 2)
	for _, tt := range []struct {
		device   string
		limit    int
		wantSeqs []uint64
	}{
		{"dev-a", 2, []uint64{5, 4}},
		{"dev-a", 0, []uint64{5, 4, 3, 2, 1}},
		{"dev-a", 10, []uint64{5, 4, 3, 2, 1}},
		{"dev-c", 10, nil},
		{"dev-x", 10, nil},
	} {
		got, err := s.Reports(ctx, tt.device, tt.limit)
		if err != nil {
			t.Fatalf("Reports: %v", err)
		}
		var seqs []uint64
		for _, r := range got {
			seqs = append(seqs, r.Seq)
		}
		if diff := cmp.Diff(tt.wantSeqs, seqs); diff != "" {
			t.Errorf("Reports(%s, %d) seqs (-want +got):\n%s", tt.device, tt.limit, diff)
		}
	}
	if r, err := s.LatestReport(ctx, "dev-a"); err != nil || r.Seq != 5 || !bytes.Equal(r.Body, report("dev-a", 5, "").Body) {
		t.Errorf("LatestReport(dev-a) = %d, %v; want 5", r.Seq, err)
	}
	for _, id := range []string{"dev-c", "dev-x"} {
		if _, err := s.LatestReport(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("LatestReport(%s) = %v, want ErrNotFound", id, err)
		}
	}
}

func (c *suite) scanFleet(t *testing.T) {
	s, _ := c.fresh(t)
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		enroll(t, s, id)
	}
	appendChain(t, s, "dev-a", 1, 5)
	appendChain(t, s, "dev-b", 1, 7)
	latest := func(id string, seq uint64) *store.Report {
		r := report(id, seq, "")
		return &store.Report{DeviceID: id, Seq: seq, Digest: r.Digest, Body: r.Body, Proof: r.Proof, ReceivedAt: r.ReceivedAt}
	}
	want := map[string]*store.Report{"dev-a": latest("dev-a", 5), "dev-b": latest("dev-b", 7), "dev-c": nil}
	for _, parts := range []int{1, 2, 3, 8} {
		var mu sync.Mutex
		got := map[string]*store.Report{}
		heads := map[string]uint64{}
		err := s.ScanFleet(ctx, parts, func(part int, row *store.FleetRow) error {
			if part < 0 || part >= parts {
				t.Errorf("part %d of %d", part, parts)
			}
			mu.Lock()
			defer mu.Unlock()
			if _, dup := got[row.ID]; dup {
				t.Errorf("parts=%d: device %s scanned twice", parts, row.ID)
			}
			var r *store.Report
			if row.Report != nil {
				c := *row.Report // the row is reused after the call
				c.Digest, c.Body, c.Proof, c.Nonce = bytes.Clone(c.Digest), bytes.Clone(c.Body), bytes.Clone(c.Proof), nil
				r = &c
			}
			got[row.ID], heads[row.ID] = r, row.LastSeq
			if row.Hostname != row.ID+".example.org" || row.TPM || string(row.IdentityKey) != "pkix-"+row.ID || row.State != store.StateActive {
				t.Errorf("row %+v", row)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("ScanFleet(%d): %v", parts, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ScanFleet(%d) (-want +got):\n%s", parts, diff)
		}
		if heads["dev-a"] != 5 || heads["dev-b"] != 7 || heads["dev-c"] != 0 {
			t.Errorf("ScanFleet(%d) heads = %v", parts, heads)
		}
	}
	stop := errors.New("stop")
	if err := s.ScanFleet(ctx, 2, func(int, *store.FleetRow) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("ScanFleet with a failing callback = %v, want %v", err, stop)
	}
}

// pruneReports deletes the reports received before the cutoff except each
// device's head, in calls of a few reports, and leaves every read
// consistent; the chain continues from the kept heads.
func (c *suite) pruneReports(t *testing.T) {
	s, reopen := c.fresh(t)
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		enroll(t, s, id)
	}
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cutoff := old.Add(24 * time.Hour)
	appendAt := func(s store.Store, h store.StreamHead, id string, seq uint64, at time.Time) {
		t.Helper()
		r := report(id, seq, "")
		r.ReceivedAt, r.Stream = at, h.Stream
		if _, err := s.AppendReport(ctx, r); err != nil {
			t.Fatalf("AppendReport %s/%d: %v", id, seq, err)
		}
	}
	ha, hb, hc := stream(t, s, "dev-a"), stream(t, s, "dev-b"), stream(t, s, "dev-c")
	for seq := uint64(1); seq <= 5; seq++ {
		appendAt(s, ha, "dev-a", seq, old.Add(time.Duration(seq)*time.Minute))
	}
	for seq := uint64(1); seq <= 3; seq++ {
		appendAt(s, hb, "dev-b", seq, old.Add(time.Hour+time.Duration(seq)*time.Minute))
	}
	appendAt(s, hc, "dev-c", 1, old.Add(2*time.Hour)) // its head: kept however old
	appendAt(s, ha, "dev-a", 6, cutoff.Add(time.Hour))
	s = reopen(t, s) // a backend may index what it stores in the background

	pass := func(limit int) (pruned, calls int) {
		var from int64
		for {
			p, err := s.PruneReports(ctx, cutoff, from, limit)
			if err != nil {
				t.Fatalf("PruneReports: %v", err)
			}
			calls++
			pruned += p.Pruned
			if p.Done {
				return pruned, calls
			}
			if p.Next <= from {
				t.Fatalf("PruneReports did not advance: from %d, next %d", from, p.Next)
			}
			from = p.Next
			if calls > 1000 {
				t.Fatal("PruneReports never finished")
			}
		}
	}
	pruned, calls := pass(2)
	if pruned != 7 {
		t.Errorf("pruned %d reports, want 7 (dev-a 1-5, dev-b 1-2)", pruned)
	}
	if calls < 4 {
		t.Errorf("a pass over 10 reports in calls of 2 took %d calls", calls)
	}
	for id, seqs := range map[string][]uint64{"dev-a": {6}, "dev-b": {3}, "dev-c": {1}} {
		got, err := s.Reports(ctx, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		var gotSeqs []uint64
		for _, r := range got {
			gotSeqs = append(gotSeqs, r.Seq)
		}
		if !slices.Equal(gotSeqs, seqs) {
			t.Errorf("%s keeps reports %v, want %v", id, gotSeqs, seqs)
		}
		if n := count(t, s, id); n != len(seqs) {
			t.Errorf("CountReports(%s) = %d, want %d", id, n, len(seqs))
		}
		if r, err := s.LatestReport(ctx, id); err != nil || r.Seq != seqs[0] {
			t.Errorf("LatestReport(%s) = seq %d, %v; want %d", id, r.Seq, err, seqs[0])
		}
	}
	if again, _ := pass(100); again != 0 {
		t.Errorf("a second pass pruned %d, want 0", again)
	}
	appendAt(s, stream(t, s, "dev-a"), "dev-a", 7, cutoff.Add(2*time.Hour))
	if n := count(t, s, "dev-a"); n != 2 {
		t.Errorf("dev-a after another report: %d reports, want 2", n)
	}
	if _, err := s.PruneReports(ctx, cutoff, 0, 0); err == nil {
		t.Error("PruneReports with limit 0 succeeded")
	}
}

// events: every change comes with an event, IDs grow and are read back
// as they were committed, a report's with its bytes.
func (c *suite) events(t *testing.T) {
	s, _ := c.fresh(t)
	before, err := s.LastEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var committed []store.Event
	tok := createToken(t, s, "t", 2, time.Now().Add(time.Hour))
	d, ev, err := s.EnrollDevice(ctx, tok, time.Now(), newDevice("dev-a"))
	if err != nil {
		t.Fatal(err)
	}
	committed = append(committed, ev)
	h := stream(t, s, "dev-a")
	for seq := uint64(1); seq <= 3; seq++ {
		r := report("dev-a", seq, "")
		r.Stream = h.Stream
		ev, err := s.AppendReport(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		committed = append(committed, ev)
	}
	ev, err = s.SetDeviceState(ctx, "dev-a", store.StateSuspect, "chain broken", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	committed = append(committed, ev)
	if err := s.AddGateway(ctx, store.Gateway{Serial: "0a", Name: "edge-1", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	serials, ev, err := s.RevokeGateways(ctx, "edge-1", "", "lost", time.Now())
	if err != nil || len(serials) != 1 {
		t.Fatalf("RevokeGateways = %v, %v", serials, err)
	}
	committed = append(committed, ev)
	_ = d

	var ids []uint64
	for i, ev := range committed {
		if ev.ID <= before || (i > 0 && ev.ID <= committed[i-1].ID) {
			t.Fatalf("event IDs %v do not grow from %d", ids, before)
		}
		ids = append(ids, ev.ID)
	}
	if last, err := s.LastEventID(ctx); err != nil || last != ids[len(ids)-1] {
		t.Errorf("LastEventID = %d, %v; want %d", last, err, ids[len(ids)-1])
	}
	gotIDs, err := s.EventIDs(ctx, before, 100)
	if err != nil || !slices.Equal(gotIDs, ids) {
		t.Errorf("EventIDs(%d) = %v, %v; want %v", before, gotIDs, err, ids)
	}
	if page, err := s.EventIDs(ctx, ids[1], 2); err != nil || !slices.Equal(page, ids[2:4]) {
		t.Errorf("EventIDs(%d, 2) = %v, %v; want %v", ids[1], page, err, ids[2:4])
	}
	got, err := s.Events(ctx, append(slices.Clone(ids), ids[len(ids)-1]+1000))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(committed) {
		t.Fatalf("Events returned %d events, want %d", len(got), len(committed))
	}
	for i, want := range committed {
		g := got[i]
		if g.ID != want.ID || g.Kind != want.Kind || g.DeviceID != want.DeviceID || g.At.IsZero() {
			t.Errorf("event %d = %d %s %s, want %d %s %s", i, g.ID, g.Kind, g.DeviceID, want.ID, want.Kind, want.DeviceID)
		}
		if diff := cmp.Diff(want.Device, g.Device, cmpopts.EquateApproxTime(time.Microsecond)); diff != "" {
			t.Errorf("event %d device (-committed +read):\n%s", i, diff)
		}
		if !slices.Equal(g.Serials, want.Serials) || g.Reason != want.Reason {
			t.Errorf("event %d gateways %v %q, want %v %q", i, g.Serials, g.Reason, want.Serials, want.Reason)
		}
		if want.Report != nil {
			r := report("dev-a", want.Report.Seq, "")
			if g.Report == nil || g.Report.Seq != r.Seq || !bytes.Equal(g.Report.Digest, r.Digest) || !bytes.Equal(g.Report.Body, r.Body) ||
				!bytes.Equal(g.Report.Proof, r.Proof) || !bytes.Equal(g.Report.Nonce, r.Nonce) || !g.Report.ReceivedAt.Equal(r.ReceivedAt) {
				t.Errorf("event %d report %+v, want %+v", i, g.Report, r)
			}
		}
	}
	if none, err := s.Events(ctx, nil); err != nil || len(none) != 0 {
		t.Errorf("Events(nil) = %v, %v", none, err)
	}
	if _, ev, err := s.RevokeGateways(ctx, "edge-1", "", "again", time.Now()); err != nil || ev.ID != 0 {
		t.Errorf("revoking nothing new: event %d, %v; want none", ev.ID, err)
	}
}

// eventsOfOneDeviceInOrder: changes of one device made at once from many
// places commit in the order of their event IDs, so that the newest event
// says how the device stands.
func (c *suite) eventsOfOneDeviceInOrder(t *testing.T) {
	s, _ := c.fresh(t)
	enroll(t, s, "dev-a")
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			state := store.StateSuspect
			if i%2 == 0 {
				state = store.StateActive
			}
			if _, err := s.SetDeviceState(ctx, "dev-a", state, fmt.Sprintf("change %d", i), time.Now()); err != nil {
				t.Errorf("SetDeviceState: %v", err)
			}
		})
	}
	wg.Wait()
	ids, err := s.EventIDs(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	d := device(t, s, "dev-a")
	if last.Device == nil || last.Device.StateReason != d.StateReason || last.Device.State != d.State {
		t.Errorf("newest event says %+v, the device is %d %q", last.Device, d.State, d.StateReason)
	}
}

func (c *suite) pruneEvents(t *testing.T) {
	s, reopen := c.fresh(t)
	enroll(t, s, "dev-a")
	h := stream(t, s, "dev-a")
	for seq := uint64(1); seq <= 3; seq++ {
		r := report("dev-a", seq, "")
		r.Stream, r.ReceivedAt = h.Stream, time.Now() // a report's event is as old as its arrival
		if _, err := s.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	last, err := s.LastEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneEvents(ctx, time.Now().Add(time.Hour), last-1); err != nil || n != 2 {
		t.Fatalf("PruneEvents below %d = %d, %v; want the 2 events below", last-1, n, err)
	}
	if n, err := s.PruneEvents(ctx, time.Now().Add(-time.Hour), last+1); err != nil || n != 0 {
		t.Fatalf("PruneEvents of events from before an hour ago = %d, %v; want none", n, err)
	}
	n, err := s.PruneEvents(ctx, time.Now().Add(time.Hour), last+1)
	if err != nil || n != 2 {
		t.Fatalf("PruneEvents = %d, %v; want the other 2", n, err)
	}
	if ids, err := s.EventIDs(ctx, 0, 10); err != nil || len(ids) != 0 {
		t.Errorf("events after pruning: %v, %v", ids, err)
	}
	// An ID is never given out again, not even after a restart.
	s = reopen(t, s)
	if got, err := s.LastEventID(ctx); err != nil || got != last {
		t.Errorf("LastEventID after pruning all = %d, %v; want %d", got, err, last)
	}
	ev, err := s.SetDeviceState(ctx, "dev-a", store.StateSuspect, "x", time.Now())
	if err != nil || ev.ID <= last {
		t.Errorf("event after pruning: ID %d, %v; want above %d", ev.ID, err, last)
	}
}

func (c *suite) gateways(t *testing.T) {
	s, _ := c.fresh(t)
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, g := range []store.Gateway{{Serial: "0a", Name: "edge-1"}, {Serial: "0b", Name: "edge-1"}, {Serial: "0c", Name: "edge-2"}} {
		g.IssuedAt, g.ExpiresAt = t0.Add(time.Duration(i)*time.Hour), t0.Add(365*24*time.Hour)
		if err := s.AddGateway(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddGateway(ctx, store.Gateway{Serial: "0a", Name: "again"}); err == nil {
		t.Error("a serial recorded twice")
	}
	revoked, _, err := s.RevokeGateways(ctx, "edge-1", "", "decommissioned", t0.Add(48*time.Hour))
	if err != nil || !slices.Equal(sorted(revoked), []string{"0a", "0b"}) {
		t.Errorf("revoke edge-1: %v, %v", revoked, err)
	}
	if revoked, _, err := s.RevokeGateways(ctx, "", "ff", "never recorded", t0); err != nil || !slices.Equal(revoked, []string{"ff"}) {
		t.Errorf("revoke an unrecorded serial: %v, %v", revoked, err)
	}
	if revoked, _, err := s.RevokeGateways(ctx, "", "ff", "twice", t0); err != nil || len(revoked) != 0 {
		t.Errorf("revoke a serial twice: %v, %v; want nothing new", revoked, err)
	}
	if _, _, err := s.RevokeGateways(ctx, "nope", "", "x", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke an unknown name: %v, want ErrNotFound", err)
	}
	gws, err := s.Gateways(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string][]string{}
	for _, g := range gws {
		state := "live"
		if !g.RevokedAt.IsZero() {
			state = g.RevokeReason
		}
		byName[g.Name] = append(byName[g.Name], g.Serial+":"+state)
	}
	want := map[string][]string{"": {"ff:never recorded"}, "edge-1": {"0a:decommissioned", "0b:decommissioned"}, "edge-2": {"0c:live"}}
	if diff := cmp.Diff(want, byName); diff != "" {
		t.Errorf("gateways (-want +got):\n%s", diff)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// decisions: each collector's saved log comes back, newest last; saving a
// record again replaces it; only the newest keep stay; a batch with a bad
// record saves nothing; collectors do not see each other's records.
func (c *suite) decisions(t *testing.T) {
	s, reopen := c.fresh(t)
	t0 := time.Date(2026, 11, 27, 10, 42, 0, 0, time.UTC)
	rec := func(seq, n uint64) store.Decision {
		return store.Decision{Seq: seq, FirstAt: t0.Add(time.Duration(seq) * time.Minute), At: t0.Add(time.Duration(seq)*time.Minute + time.Duration(n)*time.Second),
			Count: n, Device: fmt.Sprintf("dev-%d", seq%3), Level: "trusted", Caller: "gateway edge-1",
			Allowed: seq%2 == 0, Score: uint32(seq), State: int32(seq % 4), Detail: []byte(fmt.Sprintf("detail %d/%d", seq, n))}
	}
	if err := s.SaveDecisions(ctx, "a", []store.Decision{rec(1, 1), rec(2, 1), rec(3, 1)}, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDecisions(ctx, "a", []store.Decision{rec(2, 40), rec(4, 1), rec(5, 1), rec(6, 1), rec(7, 1)}, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDecisions(ctx, "b", []store.Decision{rec(1, 9)}, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDecisions(ctx, "a", []store.Decision{rec(8, 1), {Seq: math.MaxUint64, Count: 1}}, 5); err == nil {
		t.Error("a record numbered beyond the storable range was saved")
	}
	if err := s.SaveDecisions(ctx, "a", []store.Decision{rec(8, 1), {Seq: 0, Count: 1}}, 5); err == nil {
		t.Error("a record numbered 0 was saved")
	}
	s = reopen(t, s)
	got, err := s.Decisions(ctx, "a", 100)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, d := range got {
		seqs = append(seqs, d.Seq)
		want := rec(d.Seq, 1)
		if !d.FirstAt.Equal(want.FirstAt) || !d.At.Equal(want.At) || d.Count != 1 || d.Device != want.Device || d.Level != want.Level ||
			d.Caller != want.Caller || d.Allowed != want.Allowed || d.Score != want.Score || d.State != want.State || string(d.Detail) != string(want.Detail) {
			t.Errorf("record %+v, want %+v", d, want)
		}
	}
	if fmt.Sprint(seqs) != "[3 4 5 6 7]" {
		t.Fatalf("saved records %v, want [3 4 5 6 7] (the newest five, oldest first; none of the refused batches)", seqs)
	}
	if newest, err := s.Decisions(ctx, "a", 2); err != nil || len(newest) != 2 || newest[0].Seq != 6 || newest[1].Seq != 7 {
		t.Errorf("newest two: %+v, %v; want 6 and 7", newest, err)
	}
	if err := s.SaveDecisions(ctx, "a", []store.Decision{rec(7, 90)}, 5); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Decisions(ctx, "a", 100); len(got) != 5 || got[4].Count != 90 || string(got[4].Detail) != "detail 7/90" {
		t.Errorf("after record 7 grew: %+v; want five records, the last of count 90", got)
	}
	if other, err := s.Decisions(ctx, "b", 100); err != nil || len(other) != 1 || other[0].Count != 9 {
		t.Errorf("collector b's log: %+v, %v; want its one record", other, err)
	}
}

func (c *suite) claimIdentity(t *testing.T) {
	s, reopen := c.fresh(t)
	if err := s.ClaimIdentity(ctx, "", "posture.local"); err != nil {
		t.Fatalf("checking an unclaimed database: %v", err)
	}
	if err := s.ClaimIdentity(ctx, "aa11", "posture.local"); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	if err := s.ClaimIdentity(ctx, "aa11", "posture.local"); err != nil {
		t.Errorf("same claim again: %v", err)
	}
	s = reopen(t, s)
	if err := s.ClaimIdentity(ctx, "bb22", "posture.local"); !errors.Is(err, store.ErrIdentityMismatch) {
		t.Errorf("claim with another CA: %v, want ErrIdentityMismatch", err)
	}
	if err := s.ClaimIdentity(ctx, "aa11", "other.example"); !errors.Is(err, store.ErrIdentityMismatch) {
		t.Errorf("claim with another trust domain: %v, want ErrIdentityMismatch", err)
	}
	if err := s.ClaimIdentity(ctx, "", "posture.local"); !errors.Is(err, store.ErrIdentityMismatch) {
		t.Errorf("checking a claimed database without a CA: %v, want ErrIdentityMismatch", err)
	}
}

func (c *suite) replicas(t *testing.T) {
	s, _ := c.fresh(t)
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	a := store.Replica{ID: "r-a", Name: "collector-a", Advertise: "a.example:8443", Version: "1.0", StartedAt: t0, SeenAt: t0, Applied: 10}
	b := store.Replica{ID: "r-b", Name: "collector-b", Advertise: "b.example:8443", Version: "1.0", StartedAt: t0, SeenAt: t0, Applied: 7}
	for _, r := range []store.Replica{b, a} {
		if err := s.Heartbeat(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	a.SeenAt, a.Applied = t0.Add(time.Minute), 42
	if err := s.Heartbeat(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := s.Replicas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.Replica{a, b}, got); diff != "" {
		t.Errorf("replicas (-want +got):\n%s", diff)
	}
	if err := s.ForgetReplica(ctx, "r-b"); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetReplica(ctx, "r-b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("forget twice: %v, want ErrNotFound", err)
	}
	if got, _ := s.Replicas(ctx); len(got) != 1 || got[0].ID != "r-a" {
		t.Errorf("after forgetting r-b: %+v", got)
	}
}

func (c *suite) reopenKeepsEverything(t *testing.T) {
	s, reopen := c.fresh(t)
	tok := createToken(t, s, "t", 2, time.Now().Add(time.Hour))
	enrolled, _, err := s.EnrollDevice(ctx, tok, time.Now(), newDevice("dev-a"))
	if err != nil {
		t.Fatalf("EnrollDevice: %v", err)
	}
	appendChain(t, s, "dev-a", 1, 3)
	before := device(t, s, "dev-a")
	s = reopen(t, s)
	after := device(t, s, "dev-a")
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("device after reopen (-before +after):\n%s", diff)
	}
	if after.LastSeq != 3 || !after.EnrolledAt.Equal(enrolled.EnrolledAt) {
		t.Errorf("device after reopen: LastSeq %d EnrolledAt %v", after.LastSeq, after.EnrolledAt)
	}
	if got := count(t, s, "dev-a"); got != 3 {
		t.Errorf("CountReports after reopen = %d, want 3", got)
	}
	if got, err := s.Token(ctx, tok); err != nil || got.Used != 1 {
		t.Errorf("token after reopen: Used %d, err %v; want 1, nil", got.Used, err)
	}
	// The chain continues on a new stream after the restart.
	appendChain(t, s, "dev-a", 4, 4)
}

func (c *suite) closed(t *testing.T) {
	s, _ := c.open(t)
	enroll(t, s, "dev-a")
	h := stream(t, s, "dev-a")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	r := report("dev-a", 1, "")
	r.Stream = h.Stream
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"AppendReport", func() error { _, err := s.AppendReport(ctx, r); return err }},
		{"OpenReportStream", func() error { _, err := s.OpenReportStream(ctx, "dev-a"); return err }},
		{"CreateToken", func() error { return s.CreateToken(ctx, store.Token{Hash: hash("x")}) }},
		{"EnrollDevice", func() error { _, _, err := s.EnrollDevice(ctx, hash("x"), time.Now(), newDevice("b")); return err }},
		{"SetDeviceState", func() error { _, err := s.SetDeviceState(ctx, "dev-a", store.StateSuspect, "", time.Now()); return err }},
		{"Token", func() error { _, err := s.Token(ctx, hash("x")); return err }},
		{"Device", func() error { _, err := s.Device(ctx, "dev-a"); return err }},
		{"DevicesAfter", func() error { _, err := s.DevicesAfter(ctx, "", -1); return err }},
		{"ScanFleet", func() error { return s.ScanFleet(ctx, 2, func(int, *store.FleetRow) error { return nil }) }},
		{"Reports", func() error { _, err := s.Reports(ctx, "dev-a", 1); return err }},
		{"CountReports", func() error { _, err := s.CountReports(ctx, "dev-a"); return err }},
		{"EventIDs", func() error { _, err := s.EventIDs(ctx, 0, 1); return err }},
		{"SaveDecisions", func() error { return s.SaveDecisions(ctx, "a", []store.Decision{{Seq: 1, Count: 1}}, 5) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, store.ErrClosed) {
				t.Errorf("error = %v, want ErrClosed", err)
			}
		})
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close returned %v, want nil", err)
	}
}

// closeRacingWrites: each write racing Close is either committed (nil) or
// refused (ErrClosed), and the nil ones are durable.
func (c *suite) closeRacingWrites(t *testing.T) {
	s, reopen := c.open(t)
	const n = 100
	for i := range n {
		enroll(t, s, fmt.Sprintf("dev-%03d", i))
	}
	heads := make([]store.StreamHead, n)
	for i := range n {
		heads[i] = stream(t, s, fmt.Sprintf("dev-%03d", i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := report(fmt.Sprintf("dev-%03d", i), 1, "")
			r.Stream = heads[i].Stream
			_, errs[i] = s.AppendReport(ctx, r)
		})
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	s = reopen(t)
	defer s.Close()
	committed := 0
	for i, err := range errs {
		id := fmt.Sprintf("dev-%03d", i)
		stored := count(t, s, id)
		switch {
		case err == nil:
			committed++
			if stored != 1 {
				t.Errorf("%s: acknowledged, but %d reports stored", id, stored)
			}
		case errors.Is(err, store.ErrClosed):
			if stored != 0 {
				t.Errorf("%s: refused, but %d reports stored", id, stored)
			}
		default:
			t.Errorf("%s: error = %v, want nil or ErrClosed", id, err)
		}
	}
	t.Logf("%d of %d writes committed before Close", committed, n)
}

func (c *suite) canceledContext(t *testing.T) {
	s, _ := c.fresh(t)
	enroll(t, s, "dev-a")
	h := stream(t, s, "dev-a")
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	r := report("dev-a", 1, "")
	r.Stream = h.Stream
	if _, err := s.AppendReport(cctx, r); !errors.Is(err, context.Canceled) {
		t.Errorf("AppendReport error = %v, want context.Canceled", err)
	}
	if got := count(t, s, "dev-a"); got != 0 {
		t.Errorf("CountReports = %d, want 0", got)
	}
}

// hostileText: what a device sends is stored as the bytes it sent, NULs
// and bytes that are not UTF-8 included, and so is a state reason that
// quotes it. (Events carry text as JSON, which keeps a NUL but replaces
// bytes that are not UTF-8.)
func (c *suite) hostileText(t *testing.T) {
	s, _ := c.fresh(t)
	d := newDevice("dev-a")
	d.Hostname, d.Platform = "host\x00name\xff\n", "\x00"
	tok := createToken(t, s, "t", 1, time.Now().Add(time.Hour))
	if _, _, err := s.EnrollDevice(ctx, tok, time.Now(), d); err != nil {
		t.Fatalf("EnrollDevice with a NUL in the hostname: %v", err)
	}
	reason := "hostname \x00 changed"
	ev, err := s.SetDeviceState(ctx, "dev-a", store.StateSuspect, reason, time.Now())
	if err != nil {
		t.Fatalf("SetDeviceState with a NUL in the reason: %v", err)
	}
	got := device(t, s, "dev-a")
	if got.Hostname != d.Hostname || got.Platform != d.Platform || got.StateReason != reason {
		t.Errorf("stored %q %q %q, want %q %q %q", got.Hostname, got.Platform, got.StateReason, d.Hostname, d.Platform, reason)
	}
	if ds := allDevices(t, s); len(ds) != 1 || ds[0].Hostname != d.Hostname {
		t.Errorf("DevicesAfter: %+v", ds)
	}
	var row store.FleetRow
	if err := s.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error { row = *r; return nil }); err != nil {
		t.Fatal(err)
	}
	if row.Hostname != d.Hostname || row.StateReason != reason {
		t.Errorf("fleet row %q %q, want %q %q", row.Hostname, row.StateReason, d.Hostname, reason)
	}
	evs, err := s.Events(ctx, []uint64{ev.ID})
	if err != nil || len(evs) != 1 || evs[0].Device == nil || evs[0].Device.StateReason != reason {
		t.Errorf("Events = %+v, %v; want the state event with its reason", evs, err)
	}
}

// revokeToken lists tokens newest first, revokes one, and holds a revoked
// token to enrolling nothing, reported before its expiry or its uses.
func (c *suite) revokeToken(t *testing.T) {
	s, _ := c.fresh(t)
	if toks, err := s.Tokens(ctx); err != nil || len(toks) != 0 {
		t.Fatalf("Tokens of an empty store = %v, %v; want none", toks, err)
	}
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	var made []store.Token
	for i, secret := range []string{"old", "mid", "new"} {
		tok := store.Token{Hash: hash(secret), Description: "laptops " + secret + " \x1b[2J",
			CreatedAt: t0.Add(time.Duration(i) * time.Minute), ExpiresAt: t0.Add(time.Duration(i+1) * time.Hour), Uses: uint32(i + 1)}
		if err := s.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		made = append(made, tok)
	}
	toks, err := s.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.Token{made[2], made[1], made[0]}, toks); diff != "" {
		t.Errorf("Tokens, newest first (-want +got):\n%s", diff)
	}

	at := t0.Add(10 * time.Minute)
	got, err := s.RevokeToken(ctx, made[1].Hash, at)
	want := made[1]
	want.RevokedAt = at
	if err != nil || !cmp.Equal(want, got) {
		t.Errorf("RevokeToken = %+v, %v; want %+v", got, err, want)
	}
	if stored, err := s.Token(ctx, made[1].Hash); err != nil || !stored.RevokedAt.Equal(at) {
		t.Errorf("Token after revoking: %+v, %v; want revoked at %v", stored, err, at)
	}
	if again, err := s.RevokeToken(ctx, made[1].Hash, at.Add(time.Hour)); !errors.Is(err, store.ErrTokenRevoked) || !again.RevokedAt.Equal(at) {
		t.Errorf("RevokeToken again = %+v, %v; want ErrTokenRevoked and the first revocation's time kept", again, err)
	}
	if _, err := s.RevokeToken(ctx, hash("never made"), at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeToken of an unknown token: %v; want ErrNotFound", err)
	}
	if toks, err := s.Tokens(ctx); err != nil || len(toks) != 3 || !toks[1].RevokedAt.Equal(at) || !toks[0].RevokedAt.IsZero() || !toks[2].RevokedAt.IsZero() {
		t.Errorf("Tokens after revoking the middle one: %+v, %v", toks, err)
	}

	// A revoked token enrolls nothing, and says it was revoked even past
	// its expiry; an unrevoked one still enrolls.
	for _, when := range []time.Time{at, t0.Add(5 * time.Hour)} {
		d := newDevice("dev-revoked")
		if _, ev, err := s.EnrollDevice(ctx, made[1].Hash, when, d); !errors.Is(err, store.ErrTokenRevoked) || ev.ID != 0 {
			t.Errorf("EnrollDevice with a revoked token at %v: event %d, %v; want ErrTokenRevoked", when, ev.ID, err)
		}
		if _, err := s.Device(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("device of a refused enrollment: %v; want ErrNotFound", err)
		}
	}
	if stored, err := s.Token(ctx, made[1].Hash); err != nil || stored.Used != 0 {
		t.Errorf("revoked token after refused enrollments: used %d, %v; want 0", stored.Used, err)
	}
	if _, _, err := s.EnrollDevice(ctx, made[2].Hash, at, newDevice("dev-ok")); err != nil {
		t.Errorf("EnrollDevice with an unrevoked token: %v", err)
	}
}
