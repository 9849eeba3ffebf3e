package agent

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/agent/spool"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// copySpoolFixture copies the spool an earlier agent wrote
// (testdata/spool-json) into a fresh directory.
func copySpoolFixture(t *testing.T, dst string) {
	t.Helper()
	src := filepath.Join("testdata", "spool-json")
	des, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(src, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, de.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// A spool written by an agent that wrapped reports in JSON is converted
// once to bare protobuf: the same reports, in the same order, with the
// same IDs; measurements spooled after the upgrade are left alone.
func TestMigrateSpool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	copySpoolFixture(t, dir)
	s, err := spool.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	fresh := &posturev1.PostureReport{Os: &posturev1.OSInfo{KernelVersion: "spooled-after-upgrade"}}
	body, err := proto.Marshal(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(body); err != nil {
		t.Fatal(err)
	}

	n, err := migrateSpool(s)
	if err != nil || n != 3 {
		t.Fatalf("migrateSpool = %d, %v; want the 3 old entries converted", n, err)
	}
	if n, err := migrateSpool(s); err != nil || n != 0 {
		t.Errorf("second migrateSpool = %d, %v; want nothing left to convert", n, err)
	}

	want := []string{"spooled-before-upgrade-1", "spooled-before-upgrade-2", "spooled-before-upgrade-3", "spooled-after-upgrade"}
	for i, w := range want {
		e, ok, err := s.Oldest()
		if err != nil || !ok {
			t.Fatalf("entry %d: Oldest = %v, %v", i, ok, err)
		}
		if e.ID != uint64(i+1) {
			t.Errorf("entry %d has ID %d, want %d", i, e.ID, i+1)
		}
		var r posturev1.PostureReport
		if err := proto.Unmarshal(e.Data, &r); err != nil {
			t.Fatalf("entry %d is not a protobuf report after the migration: %v", e.ID, err)
		}
		if got := r.GetOs().GetKernelVersion(); got != w {
			t.Errorf("entry %d carries %q, want %q", e.ID, got, w)
		}
		if i < 3 && (r.GetDisk().GetMeta().GetStatus() != posturev1.Status_STATUS_OK || !r.GetFirewall().GetEnabled()) {
			t.Errorf("entry %d lost sections in the conversion: %v", e.ID, &r)
		}
		if err := s.Remove(e.ID); err != nil {
			t.Fatal(err)
		}
	}
}
