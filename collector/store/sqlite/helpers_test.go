package sqlite

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

func openTestStore(tb testing.TB) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "posture.db")
	s, err := Open(path)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, path
}

func enrollTestDevice(tb testing.TB, s *Store, id string) {
	tb.Helper()
	ctx := context.Background()
	hash := sha256.Sum256([]byte("token-" + id))
	if err := s.CreateToken(ctx, store.Token{Hash: hash[:], ExpiresAt: time.Now().Add(time.Hour), Uses: 1}); err != nil {
		tb.Fatalf("CreateToken: %v", err)
	}
	d := store.Device{ID: id, Hostname: id, Platform: "linux", Identity: "software", IdentityKey: []byte("key")}
	if _, _, err := s.EnrollDevice(ctx, hash[:], time.Now(), d); err != nil {
		tb.Fatalf("EnrollDevice: %v", err)
	}
}

// benchReport is roughly the size of a real signed report.
func benchReport(deviceID string, seq uint64) store.Report {
	digest := sha256.Sum256(fmt.Appendf(nil, "%s/%d", deviceID, seq))
	var prev []byte
	if seq > 1 {
		// The digest of benchReport(deviceID, seq-1), without computing
		// the chain again from its start.
		d := sha256.Sum256(fmt.Appendf(nil, "%s/%d", deviceID, seq-1))
		prev = d[:]
	}
	return store.Report{
		PrevDigest: prev,
		DeviceID:   deviceID,
		Seq:        seq,
		Digest:     digest[:],
		Nonce:      digest[:16],
		Body:       make([]byte, 1024),
		Proof:      make([]byte, 72),
		ReceivedAt: time.Now(),
	}
}

// reportFor is the report of a device at seq in a chain of variant: it
// continues the report before it in the chain of "".
func reportFor(deviceID string, seq uint64, variant string) store.Report {
	body := fmt.Sprintf("report %s/%d %s", deviceID, seq, variant)
	digest := sha256.Sum256([]byte(body))
	r := store.Report{
		DeviceID: deviceID, Seq: seq, Digest: digest[:], Nonce: []byte("n"), Body: []byte(body),
		Proof: []byte("p"), ReceivedAt: time.Unix(1_700_000_000+int64(seq), 0).UTC(),
	}
	if seq > 1 {
		r.PrevDigest = reportFor(deviceID, seq-1, "").Digest
	}
	return r
}

// streams holds the report stream each test store uses per device.
var streams = struct {
	sync.Mutex
	of map[*Store]map[string]uint64
}{of: map[*Store]map[string]uint64{}}

// openStream opens the report stream of a device that appendReport uses
// in s from now on.
func openStream(tb testing.TB, s *Store, id string) {
	tb.Helper()
	h, err := s.OpenReportStream(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	streams.Lock()
	defer streams.Unlock()
	if streams.of[s] == nil {
		streams.of[s] = map[string]uint64{}
	}
	streams.of[s][id] = h.Stream
}

// appendReport appends r on the device's report stream in s, which it
// opens on first use.
func appendReport(tb testing.TB, s *Store, r store.Report) error {
	tb.Helper()
	streams.Lock()
	if streams.of[s] == nil {
		streams.of[s] = map[string]uint64{}
	}
	stream, ok := streams.of[s][r.DeviceID]
	streams.Unlock()
	if !ok {
		h, err := s.OpenReportStream(context.Background(), r.DeviceID)
		if err != nil {
			return err
		}
		stream = h.Stream
		streams.Lock()
		streams.of[s][r.DeviceID] = stream
		streams.Unlock()
	}
	r.Stream = stream
	_, err := s.AppendReport(context.Background(), r)
	return err
}
