package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/testtools"
)

// console login prints a link to the running console, and audit lists it
// with every admin action of the socket; without a console, console login
// says how to start one.
func TestConsoleLoginAndAudit(t *testing.T) {
	c := serveCollectorWith(t, collector.Config{Console: &collector.ConsoleConfig{Listen: "127.0.0.1:0"}})
	dir := c.DataDir()
	out, code := cli(t, "console", "login", "--data-dir", dir, "--ttl", "5m", "--name", "ada")
	if code != 0 || !strings.HasPrefix(out, c.ConsoleURL()+"/signin/link?t=") {
		t.Fatalf("console login: %q (exit %d); want a link to %s", out, code, c.ConsoleURL())
	}
	if out, code := cli(t, "console", "login", "--data-dir", dir, "--ttl", "48h"); code == 0 || !strings.Contains(out, "1m0s to 24h0m0s") {
		t.Errorf("console login --ttl 48h: %q (exit %d); want a refusal naming the bounds", out, code)
	}
	if _, code := cli(t, "token", "create", "--data-dir", dir, "--description", "laptops \x1b[2J"); code != 0 {
		t.Fatal("token create failed")
	}
	out, code = cli(t, "audit", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("audit: %q (exit %d)", out, code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[1], "token create") || !strings.Contains(lines[1], `laptops \x1b[2J`) ||
		!strings.Contains(lines[2], "refused: ttl 48h0m0s") || !strings.Contains(lines[3], "console login") || !strings.Contains(lines[3], "local admin") {
		t.Errorf("audit:\n%s\nwant the token (its description inert), the refused link and the link, newest first", out)
	}
	out, code = cli(t, "audit", "--data-dir", dir, "-o", "json", "--target", "ada")
	var resp struct {
		Records []struct{ Action, Actor, Via string }
	}
	if err := json.Unmarshal([]byte(out), &resp); code != 0 || err != nil || len(resp.Records) != 1 || resp.Records[0].Via != "admin socket" {
		t.Errorf("audit -o json --target ada: %q (exit %d, %v); want the one link made for ada, over the admin socket", out, code, err)
	}

	plain := startCollector(t)
	if out, code := cli(t, "console", "login", "--data-dir", plain); code == 0 || !strings.Contains(out, "--console-listen") {
		t.Errorf("console login without a console: %q (exit %d); want a refusal naming --console-listen", out, code)
	}
}

// The console's flags need --console-listen, and the client secret file
// must be private.
func TestConsoleFlags(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--console-oidc-issuer", "https://idp.example"}, "need --console-listen"},
		{[]string{"--console-listen", "127.0.0.1:0", "--console-oidc-client-id", "x"}, "need --console-oidc-issuer"},
		{[]string{"--console-listen", "127.0.0.1:0", "--console-oidc-issuer", "https://idp.example", "--console-oidc-client-id", "x", "--console-oidc-client-secret-file", secret, "--console-admin-values", "a"}, "chmod 600"},
		{[]string{"--console-listen", "127.0.0.1:0", "--console-session-ttl", "1m"}, "5m to 168h"},
	} {
		out, code := cli(t, append([]string{"run", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0"}, tt.args...)...)
		if code == 0 || !strings.Contains(out, tt.want) {
			t.Errorf("run %v: %q (exit %d); want an error saying %q", tt.args, out, code, tt.want)
		}
	}
}

// The console's configuration file in docs/console.md is what config check
// and run read: every key a flag of run, the lists given as YAML lists.
func TestConsoleConfigDoc(t *testing.T) {
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "..", "docs", "console.md"), "# The admin console", "yaml")
	if len(blocks) != 1 {
		t.Fatalf("docs/console.md: %d yaml blocks, want the one configuration file", len(blocks))
	}
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := strings.Replace(blocks[0], "/etc/posture/console-client-secret", secret, 1)
	if file == blocks[0] {
		t.Fatal("docs/console.md: the configuration file names no /etc/posture/console-client-secret")
	}
	p := filepath.Join(dir, "collector.yaml")
	if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := cli(t, "config", "check", "--config", p)
	for _, want := range []string{"valid; 9 setting(s)", "console-admin-values: posture-admins (line 7)", "console-viewer-values: posture-viewers (line 8)", "console-session-ttl: 8h"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("config check of docs/console.md's file: %q (exit %d); want %q", out, code, want)
		}
	}
	// The same file with a world-readable secret is refused, as run refuses it.
	if err := os.Chmod(secret, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := cli(t, "config", "check", "--config", p); code == 0 || !strings.Contains(out, "chmod 600") {
		t.Errorf("config check with a readable secret: %q (exit %d); want a refusal saying chmod 600", out, code)
	}
}
