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

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A restarted collector does not announce its whole fleet as changed on
// its first decay pass: only real changes reach watchers.
func TestRestartDoesNotFloodWatchers(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	if err := st.CreateToken(ctx, store.Token{Hash: token.Hash("s"), CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 3}); err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	ok := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(now)}
	for _, id := range []string{"a", "b", "c"} {
		if _, err := st.EnrollDevice(ctx, token.Hash("s"), now, store.Device{ID: id, Identity: "software", IdentityKey: pub, Assurance: 1, State: 1}); err != nil {
			t.Fatal(err)
		}
		body, _ := proto.Marshal(&posturev1.PostureReport{DeviceId: id, Seq: 1, Disk: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: true}})
		sum := sha256.Sum256(body)
		if err := st.AppendReport(ctx, store.Report{DeviceID: id, Seq: 1, Digest: sum[:], Nonce: sum[:4], Body: body, Proof: sum[:], ReceivedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		c.Serve(cctx)
	}()
	w, snap, _ := c.subscribe(0)
	if len(snap) != 4 { // three devices and SnapshotEnd
		t.Fatalf("snapshot has %d events, want 4", len(snap))
	}
	c.decayPass()
	if n := len(w.ch); n != 0 {
		t.Errorf("first decay pass after a start sent %d events, want none", n)
	}
	// A real change still goes out.
	c.fleet.setState("b", posturev1.DeviceState_DEVICE_STATE_SUSPECT, "test")
	c.decayPass()
	if n := len(w.ch); n != 1 {
		t.Errorf("decay pass after a change sent %d events, want 1", n)
	}
}
