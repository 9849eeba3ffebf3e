//go:build !linux

package testtools

import (
	"runtime"
	"testing"
)

// SmallFS mounts a small filesystem on Linux; elsewhere the test is
// skipped loudly (failed when RequireEnv is 1).
func SmallFS(t testing.TB, size int64) string {
	t.Helper()
	missing(t, "CANNOT MOUNT A SMALL FILESYSTEM on "+runtime.GOOS+": the disk-full tests run on Linux")
	return ""
}
