package ingest

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/fault"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/stats"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
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

// rig is an ingester over a real store and fleet, applying through the
// same feed a collector uses.
type rig struct {
	in    *Ingester
	st    *sqlite.Store
	fleet *fleet.Fleet
	stats *stats.Stats
	key   *ecdsa.PrivateKey
}

// applier applies events to the fleet, as the feed does for a collector.
type applier struct{ f *fleet.Fleet }

func (a applier) Apply(ev store.Event, pre *fleet.Assessed) { a.f.Apply(ev, pre) }

// newRig enrolls one software device, id, and returns an ingester for it.
func newRig(t *testing.T, id string, log *slog.Logger) *rig {
	t.Helper()
	ctx, now := context.Background(), time.Now()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	if err := st.CreateToken(ctx, store.Token{Hash: token.Hash("s"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.EnrollDevice(ctx, token.Hash("s"), now, store.Device{ID: id, Identity: "software", IdentityKey: pub, Assurance: 1, State: 1}); err != nil {
		t.Fatal(err)
	}
	f := fleet.New(policy.Default(), fleet.Budget{Burst: 100, Interval: 1}, now)
	if err := f.Load(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	r := &rig{st: st, fleet: f, stats: stats.New(), key: key}
	r.in = New(Config{Store: st, Fleet: f, Feed: applier{f}, Stats: r.stats, Logger: log, MaxClockSkew: time.Minute})
	return r
}

// session opens a report stream of the device on ctx.
func (r *rig) session(t *testing.T, ctx context.Context, cancel context.CancelCauseFunc, id string) *session {
	t.Helper()
	h, err := r.st.OpenReportStream(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return &session{in: r.in, ctx: ctx, cancel: cancel, id: id, stream: h.Stream, seq: h.LastSeq, digest: h.LastDigest, hasHead: h.LastDigest != nil}
}

// signed is the device's report seq after prev, signed for nonce.
func (r *rig) signed(t *testing.T, id string, seq uint64, prev, nonce []byte) *posturev1.SignedReport {
	t.Helper()
	body, _ := proto.Marshal(&posturev1.PostureReport{DeviceId: id, Seq: seq, PrevDigest: prev, CreatedAt: timestamppb.Now()})
	sr, err := envelope.SignSoftware(r.key, nonce, body)
	if err != nil {
		t.Fatal(err)
	}
	return sr
}

// A report whose stream ends while it waits for the store — a newer stream
// of the device replaced this one, as at every reconnect — ends the
// stream. It is not a storage failure: not counted as a rejection, not
// logged as an error, and nothing of it is stored, so the agent's next
// stream sends it again.
func TestStreamEndIsNotStorageFailure(t *testing.T) {
	logs := &testtools.LogRecorder{}
	r := newRig(t, "a", slog.New(logs))
	ctx, cancel := context.WithCancelCause(context.Background())
	s := r.session(t, ctx, cancel, "a")
	nonce := newNonce()
	sr := r.signed(t, "a", 1, nil, nonce)
	cancel(ErrSuperseded) // what a newer stream of the device does
	before := r.stats.Snapshot()
	out, err := s.answer(sr, nonce, newNonce())
	if f, ok := fault.As(err); out != nil || !ok || f.Kind != fault.Aborted {
		t.Errorf("answer on a replaced stream = %v, %v; want the stream ended (aborted)", out, err)
	}
	after := r.stats.Snapshot()
	if !maps.Equal(before.ReportsRejected, after.ReportsRejected) || before.ReportsAccepted != after.ReportsAccepted {
		t.Errorf("counted: rejections %v -> %v, accepted %d -> %d; want nothing counted", before.ReportsRejected, after.ReportsRejected, before.ReportsAccepted, after.ReportsAccepted)
	}
	if errs := logs.Messages(slog.LevelError); len(errs) > 0 {
		t.Errorf("logged as errors: %v", errs)
	}
	if n, err := r.st.CountReports(context.Background(), "a"); err != nil || n != 0 {
		t.Errorf("%d reports stored (%v), want none", n, err)
	}
	// The device's next stream sends it again, and it is stored.
	next := r.session(t, context.Background(), func(error) {}, "a")
	if out, err := next.answer(sr, nonce, newNonce()); err != nil || out.GetAck().GetSeq() != 1 {
		t.Errorf("the report on the next stream: %v, %v; want acknowledged", out, err)
	}
}

// A stream superseded by one opened elsewhere (another collector: this
// one's fleet never hears of it) stores nothing more: its next report ends
// it, and no report is taken for a fork.
func TestSupersededElsewhere(t *testing.T) {
	r := newRig(t, "a", nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	s := r.session(t, ctx, cancel, "a")
	nonce := newNonce()
	out, err := s.answer(r.signed(t, "a", 1, nil, nonce), nonce, newNonce())
	if err != nil || out.GetAck() == nil {
		t.Fatalf("first report: %v, %v", out, err)
	}
	if _, err := r.st.OpenReportStream(context.Background(), "a"); err != nil { // elsewhere
		t.Fatal(err)
	}
	nonce = newNonce()
	out, err = s.answer(r.signed(t, "a", 2, out.GetAck().GetDigest(), nonce), nonce, newNonce())
	if f, ok := fault.As(err); out != nil || !ok || f.Kind != fault.Aborted {
		t.Fatalf("report on the superseded stream: %v, %v; want the stream ended (aborted)", out, err)
	}
	if !errors.Is(context.Cause(ctx), store.ErrSuperseded) {
		t.Errorf("the stream's context ended with %v, want superseded", context.Cause(ctx))
	}
	if subj, _ := r.fleet.Subject("a"); subj.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device %v, want still active", subj.State)
	}
}

// heldStream is a report stream whose sends wait until the test releases
// them, and whose agent sends nothing.
type heldStream struct {
	ctx     context.Context
	sent    chan *posturev1.CollectorMessage
	release chan struct{}
}

func newHeldStream(ctx context.Context) *heldStream {
	return &heldStream{ctx: ctx, sent: make(chan *posturev1.CollectorMessage, 1), release: make(chan struct{})}
}

func (s *heldStream) Context() context.Context { return s.ctx }

func (s *heldStream) Send(m *posturev1.CollectorMessage) error {
	s.sent <- m
	select {
	case <-s.release:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *heldStream) Recv() (*posturev1.AgentMessage, error) {
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}

// At most MaxOpening report streams open at once: another waits, parked,
// until one has sent its welcome (or held its place for maxOpeningHold),
// or until its own call ends.
func TestOpeningStreamsBounded(t *testing.T) {
	r := newRig(t, "a", nil)
	ctx, now := context.Background(), time.Now()
	for _, id := range []string{"b", "c"} {
		if err := r.st.CreateToken(ctx, store.Token{Hash: token.Hash(id), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1}); err != nil {
			t.Fatal(err)
		}
		_, ev, err := r.st.EnrollDevice(ctx, token.Hash(id), now, store.Device{ID: id, Identity: "software", IdentityKey: []byte("key " + id), Assurance: 1, State: 1})
		if err != nil {
			t.Fatal(err)
		}
		r.fleet.Apply(ev, nil)
	}
	r.in = New(Config{Store: r.st, Fleet: r.fleet, Feed: applier{r.fleet}, Stats: r.stats, MaxClockSkew: time.Minute, MaxOpening: 1})
	serve := func(s *heldStream, id string) chan error {
		done := make(chan error, 1)
		go func() { done <- r.in.Serve(s, id, func() error { return nil }) }()
		return done
	}
	welcomed := func(s *heldStream, within time.Duration) bool {
		select {
		case m := <-s.sent:
			if m.GetWelcome() == nil {
				t.Fatalf("first message %v, want a welcome", m)
			}
			return true
		case <-time.After(within):
			return false
		}
	}

	ctxA, endA := context.WithCancel(ctx)
	defer endA()
	a := newHeldStream(ctxA)
	serve(a, "a")
	if !welcomed(a, 10*time.Second) {
		t.Fatal("the first stream got no welcome")
	}
	// a's welcome is still being sent: b waits.
	ctxB, endB := context.WithCancel(ctx)
	defer endB()
	b := newHeldStream(ctxB)
	serve(b, "b")
	if welcomed(b, 100*time.Millisecond) {
		t.Fatal("a second stream opened while the first one's welcome was being sent")
	}
	// c waits too, and its call ends meanwhile: it ends without a welcome.
	ctxC, endC := context.WithCancel(ctx)
	c := newHeldStream(ctxC)
	doneC := serve(c, "c")
	endC()
	select {
	case err := <-doneC:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a waiting stream whose call ended: %v, want canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting stream whose call ended did not end")
	}
	// a's welcome is never sent: its place lapses, and b opens.
	if !welcomed(b, 10*time.Second) {
		t.Fatalf("the second stream got no welcome within 10 s; the first one's place should lapse after %s", maxOpeningHold)
	}
	close(a.release)
	close(b.release)
}
