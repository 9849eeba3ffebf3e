package collector

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"log/slog"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func TestTPMClockCheck(t *testing.T) {
	base := store.TPMClock{Clock: 5000, ResetCount: 0xfffffffe, RestartCount: 7}
	tests := []struct {
		name    string
		cur     store.TPMClock
		first   bool
		reboot  bool
		suspect string
	}{
		{"first quote", store.TPMClock{Clock: 1}, true, false, ""},
		{"same boot, clock ahead", store.TPMClock{Clock: 6000, ResetCount: 0xfffffffe, RestartCount: 7}, false, false, ""},
		{"reboot twice, obfuscated counter wraps", store.TPMClock{Clock: 10, ResetCount: 0, RestartCount: 7}, false, true, ""},
		{"resume from hibernation", store.TPMClock{Clock: 7000, ResetCount: 0xfffffffe, RestartCount: 8}, false, false, ""},
		{"clock backwards in one boot", store.TPMClock{Clock: 4000, ResetCount: 0xfffffffe, RestartCount: 7}, false, false, "clock ran backwards"},
		{"reset count backwards", store.TPMClock{Clock: 9000, ResetCount: 0xfffffffd, RestartCount: 7}, false, false, "reset count moved by -1"},
		{"restart count backwards", store.TPMClock{Clock: 9000, ResetCount: 0xfffffffe, RestartCount: 6}, false, false, "restart count moved by -1"},
		{"another TPM state", store.TPMClock{Clock: 9000, ResetCount: 0x12345678, RestartCount: 7}, false, false, "not the TPM state last seen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reboot, suspect := tpmClockCheck(base, tt.cur, tt.first)
			if reboot != tt.reboot || (tt.suspect == "") != (suspect == "") || !strings.Contains(suspect, tt.suspect) {
				t.Errorf("tpmClockCheck = %v, %q; want %v, %q", reboot, suspect, tt.reboot, tt.suspect)
			}
		})
	}
}

// A report whose stream ends while it waits for the store — a newer stream
// of the device replaced this one, as at every reconnect — ends the
// stream. It is not a storage failure: not counted as a rejection, not
// logged as an error, and nothing of it is stored, so the agent's next
// stream sends it again.
func TestStreamEndIsNotStorageFailure(t *testing.T) {
	logs := &testtools.LogRecorder{}
	c, key := softwareDevice(t, "a", slog.New(logs))
	s := &reportService{c: c}
	nonce := newNonce()
	body, _ := proto.Marshal(&posturev1.PostureReport{DeviceId: "a", Seq: 1, CreatedAt: timestamppb.Now()})
	sr, err := envelope.SignSoftware(key, nonce, body)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errSuperseded) // what a newer stream of the device does
	before := c.stats.snapshot()
	var k streamKey
	out, err := s.answer(ctx, "a", &k, sr, nonce, newNonce())
	if out != nil || status.Code(err) != codes.Aborted {
		t.Errorf("answer on a replaced stream = %v, %v; want the stream ended (Aborted)", out, err)
	}
	after := c.stats.snapshot()
	if !maps.Equal(before.reportsRejected, after.reportsRejected) || before.reportsAccepted != after.reportsAccepted {
		t.Errorf("counted: rejections %v -> %v, accepted %d -> %d; want nothing counted", before.reportsRejected, after.reportsRejected, before.reportsAccepted, after.reportsAccepted)
	}
	if errs := logs.Messages(slog.LevelError); len(errs) > 0 {
		t.Errorf("logged as errors: %v", errs)
	}
	if n, err := c.store.CountReports(context.Background(), "a"); err != nil || n != 0 {
		t.Errorf("%d reports stored (%v), want none", n, err)
	}
	// The device's next stream sends it again, and it is stored.
	if out, err := s.answer(context.Background(), "a", &k, sr, nonce, newNonce()); err != nil || out.GetAck().GetSeq() != 1 {
		t.Errorf("the report on the next stream: %v, %v; want acknowledged", out, err)
	}
}

// softwareDevice runs a collector (not serving) with one device, id,
// enrolled with a software identity, and returns it with the device's
// identity key.
func softwareDevice(t *testing.T, id string, log *slog.Logger) (*Collector, *ecdsa.PrivateKey) {
	t.Helper()
	dir, now, ctx := t.TempDir(), time.Now(), context.Background()
	st, err := store.Open(filepath.Join(dir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	if err := st.CreateToken(ctx, store.Token{Hash: token.Hash("s"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.EnrollDevice(ctx, token.Hash("s"), now, store.Device{ID: id, Identity: "software", IdentityKey: pub, Assurance: 1, State: 1}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCollectorForTest(c) })
	return c, key
}
