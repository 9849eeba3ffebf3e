//go:build linux

package testtools

import (
	"os"
	"syscall"
	"testing"
)

// SystemLockFile serializes the tests that install system services and
// packages on the machine that runs them: they share /etc/init.d, the
// package database and the posture-agent service name, whichever package's
// tests they are in.
const SystemLockFile = "/run/lock/posture-system-tests.lock"

// RequireSystemTests skips a test that installs into the system unless it
// runs as root (fails it when RequireEnv is 1), and holds SystemLockFile
// until the test ends.
func RequireSystemTests(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "NOT ROOT: this test installs system services or packages and runs only as root (CI runs as root)")
		return
	}
	if err := os.MkdirAll("/run/lock", 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(SystemLockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// SystemdRunning reports whether systemd is the init system here.
func SystemdRunning() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}
