package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/posture-project/posture/collector/store"
)

const (
	stateActive  int32 = 1
	stateSuspect int32 = 2
	statePending int32 = 4
	stateRevoked int32 = 3
)

// openStore opens a store in a fresh directory and closes it when the test
// ends.
func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "posture.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// createToken stores a token for secret and returns its hash.
func createToken(t *testing.T, s *store.Store, secret string, uses uint32, expires time.Time) []byte {
	t.Helper()
	tok := store.Token{
		Hash:        hash(secret),
		Description: "token " + secret,
		CreatedAt:   time.Now(),
		ExpiresAt:   expires,
		Uses:        uses,
	}
	if err := s.CreateToken(context.Background(), tok); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return tok.Hash
}

func newDevice(id string) store.Device {
	return store.Device{
		ID:          id,
		Hostname:    id + ".example.org",
		Platform:    "linux",
		Identity:    "software",
		IdentityKey: []byte("pkix-" + id),
		Assurance:   1,
		CertSerial:  "01",
	}
}

// enroll creates a one-use token and enrolls a device with it.
func enroll(t *testing.T, s *store.Store, id string) store.Device {
	t.Helper()
	tok := createToken(t, s, "enroll-"+id, 1, time.Now().Add(time.Hour))
	d, err := s.EnrollDevice(context.Background(), tok, time.Now(), newDevice(id))
	if err != nil {
		t.Fatalf("EnrollDevice(%s): %v", id, err)
	}
	return d
}

func newReport(deviceID string, seq uint64, variant string) store.Report {
	body := fmt.Sprintf("report %s/%d %s", deviceID, seq, variant)
	digest := sha256.Sum256([]byte(body))
	return store.Report{
		DeviceID:   deviceID,
		Seq:        seq,
		Digest:     digest[:],
		Nonce:      []byte(fmt.Sprintf("nonce-%d", seq)),
		Body:       []byte(body),
		Proof:      []byte("sig-" + variant),
		ReceivedAt: time.Unix(1_700_000_000+int64(seq), 0),
	}
}

func count(t *testing.T, s *store.Store, deviceID string) int {
	t.Helper()
	n, err := s.CountReports(context.Background(), deviceID)
	if err != nil {
		t.Fatalf("CountReports: %v", err)
	}
	return n
}

func TestTokenRoundTrip(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	want := store.Token{
		Hash:        hash("secret"),
		Description: "laptops, batch 1",
		CreatedAt:   time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		ExpiresAt:   time.Date(2026, 1, 3, 3, 4, 5, 6, time.UTC),
		Uses:        5,
	}
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
}

func TestEnrollDeviceToken(t *testing.T) {
	tests := []struct {
		name      string
		uses      uint32
		used      uint32 // uses already consumed when the token is created
		expiresIn time.Duration
		unknown   bool // enroll with a hash no token has
		want      []error
		wantUsed  uint32
	}{
		{
			name: "consumes one use", uses: 2, expiresIn: time.Hour,
			want: []error{nil}, wantUsed: 1,
		},
		{
			name: "one-use token used twice", uses: 1, expiresIn: time.Hour,
			want: []error{nil, store.ErrTokenUsedUp}, wantUsed: 1,
		},
		{
			name: "three-use token refuses the fourth", uses: 3, expiresIn: time.Hour,
			want: []error{nil, nil, nil, store.ErrTokenUsedUp}, wantUsed: 3,
		},
		{
			name: "expired", uses: 1, expiresIn: -time.Second,
			want: []error{store.ErrTokenExpired}, wantUsed: 0,
		},
		{
			name: "expires exactly now", uses: 1, expiresIn: 0,
			want: []error{store.ErrTokenExpired}, wantUsed: 0,
		},
		{
			name: "expired is reported before used up", uses: 1, used: 1, expiresIn: -time.Second,
			want: []error{store.ErrTokenExpired}, wantUsed: 1,
		},
		{
			name: "unknown", unknown: true,
			want: []error{store.ErrTokenUnknown},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openStore(t)
			ctx := context.Background()
			now := time.Now()
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
				got, err := s.EnrollDevice(ctx, enrollHash, now, d)
				if !errors.Is(err, wantErr) {
					t.Fatalf("enrollment %d: error = %v, want %v", i, err, wantErr)
				}
				if err != nil {
					if _, err := s.Device(ctx, d.ID); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("device of failed enrollment %d: error = %v, want ErrNotFound", i, err)
					}
					continue
				}
				wantDevices = append(wantDevices, d.ID)
				d.State, d.EnrolledAt = stateActive, now
				if diff := cmp.Diff(d, got); diff != "" {
					t.Errorf("enrollment %d returned (-want +got):\n%s", i, diff)
				}
				stored, err := s.Device(ctx, d.ID)
				if err != nil {
					t.Fatalf("Device: %v", err)
				}
				if diff := cmp.Diff(got, stored); diff != "" {
					t.Errorf("stored device differs from returned (-returned +stored):\n%s", diff)
				}
			}

			devices, err := s.Devices(ctx)
			if err != nil {
				t.Fatalf("Devices: %v", err)
			}
			var gotDevices []string
			for _, d := range devices {
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

func TestEnrollDeviceRace(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	tok := createToken(t, s, "contested", 1, time.Now().Add(time.Hour))

	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.EnrollDevice(ctx, tok, time.Now(), newDevice(fmt.Sprintf("dev-%02d", i)))
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
	devices, err := s.Devices(ctx)
	if err != nil {
		t.Fatalf("Devices: %v", err)
	}
	if len(devices) != 1 {
		t.Errorf("%d devices stored, want 1", len(devices))
	}
	if got, err := s.Token(ctx, tok); err != nil || got.Used != 1 {
		t.Errorf("Token: Used = %d, err = %v; want 1, nil", got.Used, err)
	}
}

func TestReEnroll(t *testing.T) {
	tests := []struct {
		name     string
		state    int32 // set before re-enrolling; 0 leaves the device active
		wantErr  error
		wantUsed uint32
	}{
		{name: "active device keeps its chain", wantUsed: 1},
		{name: "suspect device keeps its state", state: stateSuspect, wantUsed: 1},
		{name: "revoked device is refused", state: stateRevoked, wantErr: store.ErrDeviceRevoked, wantUsed: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openStore(t)
			ctx := context.Background()
			first := enroll(t, s, "dev-a")
			for seq := uint64(1); seq <= 3; seq++ {
				if err := s.AppendReport(ctx, newReport("dev-a", seq, "")); err != nil {
					t.Fatalf("AppendReport: %v", err)
				}
			}
			if tt.state != 0 {
				if err := s.SetDeviceState(ctx, "dev-a", tt.state, "test"); err != nil {
					t.Fatalf("SetDeviceState: %v", err)
				}
			}
			before, err := s.Device(ctx, "dev-a")
			if err != nil {
				t.Fatalf("Device: %v", err)
			}

			tok := createToken(t, s, "again", 1, time.Now().Add(time.Hour))
			later := first.EnrolledAt.Add(time.Hour)
			again := newDevice("dev-a")
			again.Hostname, again.Platform, again.CertSerial = "renamed", "darwin", "02"
			again.IdentityKey = []byte("other key")
			got, err := s.EnrollDevice(ctx, tok, later, again)
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
			stored, err := s.Device(ctx, "dev-a")
			if err != nil {
				t.Fatalf("Device: %v", err)
			}
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

func TestAppendReport(t *testing.T) {
	type appendCall struct {
		r       store.Report
		wantErr error
	}
	tests := []struct {
		name       string
		appends    []appendCall
		wantCount  int
		wantHead   store.Report // the report whose seq and digest the device head holds
		wantSeen   time.Time
		wantStored []store.Report // newest first
	}{
		{
			name:       "stored and head updated",
			appends:    []appendCall{{r: newReport("dev-a", 1, "")}},
			wantCount:  1,
			wantHead:   newReport("dev-a", 1, ""),
			wantSeen:   newReport("dev-a", 1, "").ReceivedAt,
			wantStored: []store.Report{newReport("dev-a", 1, "")},
		},
		{
			name: "duplicate with the same digest is a no-op",
			appends: []appendCall{
				{r: newReport("dev-a", 1, "")},
				{r: newReport("dev-a", 2, "")},
				{r: func() store.Report {
					r := newReport("dev-a", 1, "")
					r.ReceivedAt = r.ReceivedAt.Add(time.Hour)
					return r
				}()},
			},
			wantCount:  2,
			wantHead:   newReport("dev-a", 2, ""),
			wantSeen:   newReport("dev-a", 2, "").ReceivedAt,
			wantStored: []store.Report{newReport("dev-a", 2, ""), newReport("dev-a", 1, "")},
		},
		{
			name: "same seq with a different digest conflicts",
			appends: []appendCall{
				{r: newReport("dev-a", 1, "")},
				{r: newReport("dev-a", 1, "forged"), wantErr: store.ErrConflict},
			},
			wantCount:  1,
			wantHead:   newReport("dev-a", 1, ""),
			wantSeen:   newReport("dev-a", 1, "").ReceivedAt,
			wantStored: []store.Report{newReport("dev-a", 1, "")},
		},
		{
			name:      "unknown device",
			appends:   []appendCall{{r: newReport("dev-unknown", 1, ""), wantErr: store.ErrNotFound}},
			wantCount: 0,
		},
		{
			name: "an older seq does not move the head back",
			appends: []appendCall{
				{r: newReport("dev-a", 5, "")},
				{r: newReport("dev-a", 3, "")},
			},
			wantCount:  2,
			wantHead:   newReport("dev-a", 5, ""),
			wantSeen:   newReport("dev-a", 5, "").ReceivedAt,
			wantStored: []store.Report{newReport("dev-a", 5, ""), newReport("dev-a", 3, "")},
		},
		{
			name:       "seq zero becomes the head",
			appends:    []appendCall{{r: newReport("dev-a", 0, "")}},
			wantCount:  1,
			wantHead:   newReport("dev-a", 0, ""),
			wantSeen:   newReport("dev-a", 0, "").ReceivedAt,
			wantStored: []store.Report{newReport("dev-a", 0, "")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openStore(t)
			ctx := context.Background()
			enroll(t, s, "dev-a")
			for i, a := range tt.appends {
				if err := s.AppendReport(ctx, a.r); !errors.Is(err, a.wantErr) {
					t.Fatalf("append %d: error = %v, want %v", i, err, a.wantErr)
				}
			}
			if got := count(t, s, "dev-a"); got != tt.wantCount {
				t.Errorf("CountReports = %d, want %d", got, tt.wantCount)
			}
			d, err := s.Device(ctx, "dev-a")
			if err != nil {
				t.Fatalf("Device: %v", err)
			}
			gotHead := store.Report{Seq: d.LastSeq, Digest: d.LastDigest}
			wantHead := store.Report{Seq: tt.wantHead.Seq, Digest: tt.wantHead.Digest}
			if diff := cmp.Diff(wantHead, gotHead); diff != "" {
				t.Errorf("device head (-want +got):\n%s", diff)
			}
			if !d.LastSeen.Equal(tt.wantSeen) {
				t.Errorf("LastSeen = %v, want %v", d.LastSeen, tt.wantSeen)
			}
			stored, err := s.Reports(ctx, "dev-a", 0)
			if err != nil {
				t.Fatalf("Reports: %v", err)
			}
			if diff := cmp.Diff(tt.wantStored, stored, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("stored reports (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAppendReportConcurrent(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	enroll(t, s, "dev-a")

	const goroutines, perGoroutine = 20, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perGoroutine)
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				errs <- s.AppendReport(ctx, newReport("dev-a", uint64(g*perGoroutine+i+1), ""))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("AppendReport: %v", err)
		}
	}
	if got := count(t, s, "dev-a"); got != goroutines*perGoroutine {
		t.Errorf("CountReports = %d, want %d", got, goroutines*perGoroutine)
	}
	d, err := s.Device(ctx, "dev-a")
	if err != nil {
		t.Fatalf("Device: %v", err)
	}
	if d.LastSeq != goroutines*perGoroutine {
		t.Errorf("LastSeq = %d, want %d", d.LastSeq, goroutines*perGoroutine)
	}
}

func TestReports(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		enroll(t, s, id)
	}
	for seq := uint64(1); seq <= 5; seq++ {
		if err := s.AppendReport(ctx, newReport("dev-a", seq, "")); err != nil {
			t.Fatalf("AppendReport: %v", err)
		}
	}
	if err := s.AppendReport(ctx, newReport("dev-b", 7, "")); err != nil {
		t.Fatalf("AppendReport: %v", err)
	}

	t.Run("latest per device", func(t *testing.T) {
		latest := func(id string, seq uint64) *store.Report {
			r := newReport(id, seq, "")
			r.Nonce = nil // not read by ScanFleet
			return &r
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
					c.Digest, c.Body, c.Proof = bytes.Clone(c.Digest), bytes.Clone(c.Body), bytes.Clone(c.Proof)
					r = &c
				}
				got[row.ID], heads[row.ID] = r, row.LastSeq
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
	})

	tests := []struct {
		name     string
		device   string
		limit    int
		wantSeqs []uint64
	}{
		{name: "limit", device: "dev-a", limit: 2, wantSeqs: []uint64{5, 4}},
		{name: "no limit", device: "dev-a", limit: 0, wantSeqs: []uint64{5, 4, 3, 2, 1}},
		{name: "limit above count", device: "dev-a", limit: 10, wantSeqs: []uint64{5, 4, 3, 2, 1}},
		{name: "device without reports", device: "dev-c", limit: 10},
		{name: "unknown device", device: "dev-x", limit: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Reports(ctx, tt.device, tt.limit)
			if err != nil {
				t.Fatalf("Reports: %v", err)
			}
			var seqs []uint64
			for _, r := range got {
				seqs = append(seqs, r.Seq)
			}
			if diff := cmp.Diff(tt.wantSeqs, seqs); diff != "" {
				t.Errorf("Reports seqs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetDeviceState(t *testing.T) {
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
		{
			name:   "suspect then revoked",
			device: "dev-a",
			steps: []step{
				{state: stateSuspect, reason: "report chain broken"},
				{state: stateRevoked, reason: "stolen"},
			},
			wantState: stateRevoked, wantReason: "stolen",
		},
		{
			name:   "suspect back to active",
			device: "dev-a",
			steps: []step{
				{state: stateSuspect, reason: "report chain broken"},
				{state: stateActive, reason: "checked by admin"},
			},
			wantState: stateActive, wantReason: "checked by admin",
		},
		{
			name:   "revoked is final",
			device: "dev-a",
			steps: []step{
				{state: stateRevoked, reason: "stolen"},
				{state: stateActive, reason: "found again", wantErr: store.ErrDeviceRevoked},
				{state: stateRevoked, reason: "twice", wantErr: store.ErrDeviceRevoked},
			},
			wantState: stateRevoked, wantReason: "stolen",
		},
		{
			name:      "unknown device",
			device:    "dev-x",
			steps:     []step{{state: stateSuspect, wantErr: store.ErrNotFound}},
			wantState: stateActive,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openStore(t)
			ctx := context.Background()
			enroll(t, s, "dev-a")
			for i, st := range tt.steps {
				if err := s.SetDeviceState(ctx, tt.device, st.state, st.reason); !errors.Is(err, st.wantErr) {
					t.Fatalf("step %d: error = %v, want %v", i, err, st.wantErr)
				}
			}
			d, err := s.Device(ctx, "dev-a")
			if err != nil {
				t.Fatalf("Device: %v", err)
			}
			if d.State != tt.wantState || d.StateReason != tt.wantReason {
				t.Errorf("state = %d %q, want %d %q", d.State, d.StateReason, tt.wantState, tt.wantReason)
			}
		})
	}
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "posture.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	tok := createToken(t, s, "t", 2, time.Now().Add(time.Hour))
	enrolled, err := s.EnrollDevice(ctx, tok, time.Now(), newDevice("dev-a"))
	if err != nil {
		t.Fatalf("EnrollDevice: %v", err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if err := s.AppendReport(ctx, newReport("dev-a", seq, "")); err != nil {
			t.Fatalf("AppendReport: %v", err)
		}
	}
	before, err := s.Device(ctx, "dev-a")
	if err != nil {
		t.Fatalf("Device: %v", err)
	}

	// While open, the WAL and shared-memory files exist and must be private too.
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, name)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkMode(t, path)

	s, err = store.Open(path)
	if err != nil {
		t.Fatalf("re-Open: %v", err)
	}
	defer s.Close()
	after, err := s.Device(ctx, "dev-a")
	if err != nil {
		t.Fatalf("Device after reopen: %v", err)
	}
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
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, name)
	}
}

func TestOpenNarrowsExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	checkMode(t, path)
}

func TestOpenPathNeedingEscapes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "odd ?#% dir")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "posture.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	enroll(t, s, "dev-a")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the given path: %v", err)
	}
}

func checkMode(t *testing.T, name string) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Errorf("stat: %v", err)
		return
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("%s: mode %04o, want 0600", filepath.Base(name), mode)
	}
}

func TestClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx := context.Background()
	enroll(t, s, "dev-a")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	tests := []struct {
		name string
		call func() error
	}{
		{"AppendReport", func() error { return s.AppendReport(ctx, newReport("dev-a", 1, "")) }},
		{"CreateToken", func() error { return s.CreateToken(ctx, store.Token{Hash: hash("x")}) }},
		{"EnrollDevice", func() error { _, err := s.EnrollDevice(ctx, hash("x"), time.Now(), newDevice("b")); return err }},
		{"SetDeviceState", func() error { return s.SetDeviceState(ctx, "dev-a", stateSuspect, "") }},
		{"Token", func() error { _, err := s.Token(ctx, hash("x")); return err }},
		{"Device", func() error { _, err := s.Device(ctx, "dev-a"); return err }},
		{"Devices", func() error { _, err := s.Devices(ctx); return err }},
		{"ScanFleet", func() error { return s.ScanFleet(ctx, 2, func(int, *store.FleetRow) error { return nil }) }},
		{"Reports", func() error { _, err := s.Reports(ctx, "dev-a", 1); return err }},
		{"CountReports", func() error { _, err := s.CountReports(ctx, "dev-a"); return err }},
	}
	for _, tt := range tests {
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

// TestCloseRacingWrites checks that each write racing Close is either
// committed (nil) or refused (ErrClosed), and that the nil ones are durable.
func TestCloseRacingWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx := context.Background()
	enroll(t, s, "dev-a")

	const n = 100
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = s.AppendReport(ctx, newReport("dev-a", uint64(i+1), "")) })
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()

	committed := map[uint64]bool{}
	for i, err := range errs {
		switch {
		case err == nil:
			committed[uint64(i+1)] = true
		case !errors.Is(err, store.ErrClosed):
			t.Errorf("append %d: error = %v, want nil or ErrClosed", i+1, err)
		}
	}

	s, err = store.Open(path)
	if err != nil {
		t.Fatalf("re-Open: %v", err)
	}
	defer s.Close()
	stored, err := s.Reports(ctx, "dev-a", 0)
	if err != nil {
		t.Fatalf("Reports: %v", err)
	}
	got := map[uint64]bool{}
	for _, r := range stored {
		got[r.Seq] = true
	}
	if diff := cmp.Diff(committed, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("stored reports differ from acknowledged ones (-acknowledged +stored):\n%s", diff)
	}
	t.Logf("%d of %d writes committed before Close", len(committed), n)
}

func TestCanceledContext(t *testing.T) {
	s, _ := openStore(t)
	enroll(t, s, "dev-a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.AppendReport(ctx, newReport("dev-a", 1, "")); !errors.Is(err, context.Canceled) {
		t.Errorf("AppendReport error = %v, want context.Canceled", err)
	}
	if got := count(t, s, "dev-a"); got != 0 {
		t.Errorf("CountReports = %d, want 0", got)
	}
}

func TestPinnedEKs(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	added, err := s.PinEKs(ctx, []string{"aa", "bb", "aa"}, "batch 1", time.Now())
	if err != nil || added != 2 {
		t.Fatalf("PinEKs = %d, %v; want 2 new", added, err)
	}
	if added, err := s.PinEKs(ctx, []string{"bb", "cc"}, "batch 2", time.Now()); err != nil || added != 1 {
		t.Errorf("second PinEKs = %d, %v; want 1 new", added, err)
	}
	for hash, want := range map[string]bool{"aa": true, "cc": true, "dd": false} {
		if got, err := s.EKPinned(ctx, hash); err != nil || got != want {
			t.Errorf("EKPinned(%s) = %v, %v; want %v", hash, got, err, want)
		}
	}
}

func TestTPMClockAndReboots(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	enroll(t, s, "dev-a")
	steps := []struct {
		clock  store.TPMClock
		reboot bool
	}{
		{store.TPMClock{Clock: 100, ResetCount: 1}, false},
		{store.TPMClock{Clock: 200, ResetCount: 2}, true},
		{store.TPMClock{Clock: 300, ResetCount: 2, RestartCount: 1}, false},
	}
	for i, st := range steps {
		r := newReport("dev-a", uint64(i+1), "")
		r.TPM, r.Reboot = &st.clock, st.reboot
		if err := s.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	d, err := s.Device(ctx, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if d.TPMClock != steps[2].clock || d.Reboots != 1 {
		t.Errorf("TPMClock = %+v, reboots %d; want %+v and 1", d.TPMClock, d.Reboots, steps[2].clock)
	}
}

func TestReEnrollPendingTakesNewState(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	d := newDevice("dev-tpm")
	d.State, d.StateReason, d.EKSHA256 = statePending, "EK not verified", "ek1"
	if _, err := s.EnrollDevice(ctx, createToken(t, s, "t1", 1, time.Now().Add(time.Hour)), time.Now(), d); err != nil {
		t.Fatal(err)
	}
	d.State, d.StateReason = stateActive, ""
	got, err := s.EnrollDevice(ctx, createToken(t, s, "t2", 1, time.Now().Add(time.Hour)), time.Now(), d)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != stateActive || got.EKSHA256 != "ek1" {
		t.Errorf("re-enrolled pending device: state %d, ek %q; want active and ek1", got.State, got.EKSHA256)
	}
}

func TestApproveDevice(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	d := newDevice("dev-tpm")
	d.State, d.StateReason, d.EKSHA256 = statePending, "EK not verified", "ekhash"
	if _, err := s.EnrollDevice(ctx, createToken(t, s, "t1", 1, time.Now().Add(time.Hour)), time.Now(), d); err != nil {
		t.Fatal(err)
	}
	enroll(t, s, "dev-sw")
	got, err := s.ApproveDevice(ctx, "dev-tpm", 2, "approved", time.Now())
	if err != nil || got.State != stateActive || got.Assurance != 2 || got.StateReason != "" {
		t.Fatalf("ApproveDevice = %+v, %v", got, err)
	}
	if pinned, err := s.EKPinned(ctx, "ekhash"); err != nil || !pinned {
		t.Errorf("EK not pinned after approval: %v %v", pinned, err)
	}
	for id, want := range map[string]error{"dev-tpm": store.ErrNotPending, "dev-sw": store.ErrNotPending, "nope": store.ErrNotFound} {
		if _, err := s.ApproveDevice(ctx, id, 2, "", time.Now()); !errors.Is(err, want) {
			t.Errorf("ApproveDevice(%s) = %v, want %v", id, err, want)
		}
	}
}
