package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/posture-project/posture/agent/browsercert"
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

// browser-cert picks the store of the platform: the NSS database on
// Linux, the login keychain on macOS, the CurrentUser store on Windows; the flags
// name others.
func TestBrowserCertStorePerOS(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, tc := range []struct {
		goos  string
		flags storeFlags
		want  string // the store's type and location, or the error
	}{
		{"linux", storeFlags{}, "browsercert.NSSDB " + filepath.Join(home, ".pki", "nssdb")},
		{"darwin", storeFlags{}, "browsercert.Keychain " + filepath.Join(home, "Library", "Keychains", "login.keychain-db")},
		{"darwin", storeFlags{keychain: "/tmp/test.keychain-db"}, "browsercert.Keychain /tmp/test.keychain-db"},
		{"darwin", storeFlags{nssdbs: []string{"/tmp/ff"}}, "browsercert.NSSDB /tmp/ff"},
		{"linux", storeFlags{nssdbs: []string{"/a", "/b"}}, "browsercert.Stores"},
		{"windows", storeFlags{}, "browsercert.CurrentUserStore"},
		{"plan9", storeFlags{}, "browser certificates on plan9: unsupported operation"},
		{"linux", storeFlags{nssdbs: []string{"/a"}, keychain: "/k"}, "not both"},
	} {
		t.Run(tc.goos, func(t *testing.T) {
			s, err := userStore(tc.goos, tc.flags)
			var got string
			switch s := s.(type) {
			case browsercert.NSSDB:
				got = "browsercert.NSSDB " + s.Dir
			case browsercert.Keychain:
				got = "browsercert.Keychain " + s.Path
			case browsercert.Stores:
				got = "browsercert.Stores"
			case browsercert.CurrentUserStore:
				got = "browsercert.CurrentUserStore"
			}
			if err != nil {
				got = err.Error()
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("userStore(%s, %+v) = %q, want %q", tc.goos, tc.flags, got, tc.want)
			}
		})
	}
}
