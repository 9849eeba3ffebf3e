//go:build !linux

package testtools

import (
	"errors"
	"os"
	"runtime"
	"testing"
)

// PostgresMain runs the package's tests; the PostgreSQL servers tests
// start run on Linux only, so there is nothing to stop here.
func PostgresMain(m *testing.M, after ...func()) {
	code := m.Run()
	for _, f := range after {
		f()
	}
	os.Exit(code)
}

// Postgres skips the test loudly (fails it when RequireEnv is 1): the
// tests start their PostgreSQL servers on Linux only.
func Postgres(t testing.TB) string {
	t.Helper()
	missing(t, "NO POSTGRESQL TEST SERVER on "+runtime.GOOS+": the tests start their servers on Linux")
	return ""
}

// PostgresBin finds nothing: see Postgres.
func PostgresBin(name string) (string, error) {
	return "", errors.New("PostgreSQL test servers run on Linux only")
}
