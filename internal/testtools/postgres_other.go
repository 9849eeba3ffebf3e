//go:build !linux

package testtools

import (
	"errors"
	"os"
	"testing"
)

// The PostgreSQL test cluster runs on Linux, where the tests run
// (postgres.go); elsewhere these keep the packages that use it building,
// so that the agent's tests vet for every OS it ships on.

// PostgresMain runs a test binary's tests.
func PostgresMain(m *testing.M) { os.Exit(m.Run()) }

// Postgres skips the test (fails it when RequireEnv is 1): the cluster
// runs on Linux only.
func Postgres(t testing.TB) string {
	t.Helper()
	missing(t, "the PostgreSQL test cluster runs on Linux only")
	return ""
}

// PostgresBin finds PostgreSQL's programs in Debian's layout, on Linux
// only.
func PostgresBin(string) (string, error) {
	return "", errors.New("the PostgreSQL test cluster runs on Linux only")
}
