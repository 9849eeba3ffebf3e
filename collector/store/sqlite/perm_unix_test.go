//go:build unix

package sqlite_test

import (
	"path/filepath"
	"syscall"
	"testing"
)

// TestModeIgnoresUmask checks that a permissive umask does not widen the
// database files: SQLite creates -wal and -shm itself, outside our control.
// It changes the process umask, so it must not run in parallel.
func TestModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	path := filepath.Join(t.TempDir(), "posture.db")
	s := openAt(t, path)
	defer s.Close()
	enroll(t, s, "dev-a")
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, name)
	}
}
