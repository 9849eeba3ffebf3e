package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// browser-cert runs as the user: it reads no configuration file (one the
// user cannot read does not stop it), says where it looked for the agent
// when none answers, and refuses arguments and bad flags as usage errors.
func TestBrowserCertCommand(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "no-agent.sock")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no agent", []string{"browser-cert", "--socket", socket, "--nssdb", dir, "--config", filepath.Join(dir, "unreadable.yaml")}, 1, "reach the Posture agent at " + socket},
		{"an argument", []string{"browser-cert", "now"}, 2, "takes no arguments"},
		{"a bad interval", []string{"browser-cert", "--watch", "often"}, 2, "--watch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := execute(tc.args, &out, &out); code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Errorf("%q: exit %d, want %d, saying %q:\n%s", tc.args, code, tc.code, tc.want, out.String())
			}
		})
	}
	var out bytes.Buffer
	if code := execute([]string{"browser-cert", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "--nssdb stringArray") || !strings.Contains(out.String(), "/run/posture-agent/agent.sock") {
		t.Errorf("browser-cert --help: exit %d:\n%s", code, out.String())
	}
}
