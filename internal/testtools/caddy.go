package testtools

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Caddy returns the caddy binary, or skips the test when Caddy is not
// installed (fails it when RequireEnv is 1).
func Caddy(t testing.TB) string {
	t.Helper()
	return Require(t, "caddy")
}

// StartCaddy runs caddy (bin) in the foreground with its files in dir
// until the test ends, and returns the loopback address of the port it
// serves. render writes the whole Caddyfile for that port. Caddy's state
// (its certificate storage, autosaved configuration) stays in dir, and
// its admin endpoint must be off in the Caddyfile. When the test fails,
// Caddy's output is logged.
func StartCaddy(t testing.TB, bin, dir string, render func(port int) []byte) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		port := freePort(t)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		conf := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(conf, render(port), 0o600); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		cmd := exec.Command(bin, "run", "--config", conf, "--adapter", "caddyfile")
		cmd.Stdout, cmd.Stderr = &out, &out
		// Caddy keeps its data and configuration under these; the test's
		// own directory, not the user's home.
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
		err := runServer(t, cmd, []string{addr}, func() string { return "caddy's output:\n" + out.String() })
		if err == nil {
			return addr
		}
		if attempt < 3 && strings.Contains(out.String(), "address already in use") {
			continue
		}
		t.Fatalf("caddy did not start: %v\n%s", err, out.String())
	}
}
