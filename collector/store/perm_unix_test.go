//go:build unix

package store_test

import (
	"path/filepath"
	"syscall"
	"testing"

	"github.com/posture-project/posture/collector/store"
)

// TestModeIgnoresUmask checks that a permissive umask does not widen the
// database files: SQLite creates -wal and -shm itself, outside our control.
// It changes the process umask, so it must not run in parallel.
func TestModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	path := filepath.Join(t.TempDir(), "posture.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	enroll(t, s, "dev-a")
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, name)
	}
}
