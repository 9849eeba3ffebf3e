package ssf

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/testtools"
)

// The SETs in docs/ssf.md are what the transmitter makes of a revocation
// of a device bound to its user: a compliance change of the level the
// receiver follows, and the session revocation.
func TestSSFDoc(t *testing.T) {
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "ssf.md"), "## What a receiver gets", "json")
	if len(blocks) != 2 {
		t.Fatalf("docs/ssf.md has %d SET examples, want 2", len(blocks))
	}
	ctx := context.Background()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tok := store.Token{Hash: []byte("t"), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}
	if err := st.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.EnrollDevice(ctx, tok.Hash, time.Now(), store.Device{ID: "4f1c0c1e8b6a4e0f", Identity: "software", IdentityKey: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	if err := st.BindDeviceUser(ctx, store.DeviceUser{DeviceID: "4f1c0c1e8b6a4e0f", Email: "ada@example.com"}); err != nil {
		t.Fatal(err)
	}
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(ctx, Config{Issuer: "https://posture.example.com", Key: key, Store: st, Now: func() time.Time { return time.Unix(1733562001, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	s := Stream{ID: "s1", Audience: "https://example.okta.com", Level: "trusted", Status: StatusEnabled}
	at := time.Unix(1733562000, 0)
	dev := &store.OutboxDevice{ID: "4f1c0c1e8b6a4e0f", Hostname: "ada-x1", State: "revoked", StateReason: "laptop stolen"}
	lost, _ := json.Marshal(store.OutboxData{Device: dev, Level: "trusted"})
	revoked, _ := json.Marshal(store.OutboxData{Device: dev, Reason: "laptop stolen"})
	msgs := []store.OutboxMessage{
		{ID: "c1f0b2a4-8e2d-4c55-9f3e-5a6b7c8d9e0f", At: at, Kind: store.OutboxLevelLost, DeviceID: dev.ID, EventID: 4212, Data: lost},
		{ID: "7d3c9a10-4b2e-4f61-8a07-1e2d3c4b5a69", At: at, Kind: store.OutboxDeviceRevoked, DeviceID: dev.ID, EventID: 4212, Data: revoked},
	}
	for i, m := range msgs {
		if !tr.wants(s)(m) {
			t.Errorf("the stream does not take %s", m.Kind)
		}
		c, err := tr.Claims(ctx, s, m)
		if err != nil {
			t.Fatal(err)
		}
		var got, want any
		b, _ := json.Marshal(c)
		json.Unmarshal(b, &got)
		if err := json.Unmarshal([]byte(blocks[i]), &want); err != nil {
			t.Fatalf("example %d: %v", i, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("SET %d differs from docs/ssf.md (-doc +made):\n%s", i, diff)
		}
	}
}
