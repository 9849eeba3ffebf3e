package main

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/posture-project/posture/agent"
)

// token list shows every token with what is left of it, description
// inert; token revoke takes a unique prefix, and a device then cannot
// enroll with the token, told why; each revocation is in the audit log
// under the token's full id. Unknown, ambiguous and malformed ids are
// refused, saying what to give, and change nothing.
func TestTokenListAndRevoke(t *testing.T) {
	dir := startCollector(t)
	first := func(out string) string { return strings.SplitN(out, "\n", 2)[0] }
	out, code := cli(t, "token", "create", "--data-dir", dir, "--uses", "2", "--description", "laptops \x1b[2J")
	if code != 0 {
		t.Fatalf("token create: %q (exit %d)", out, code)
	}
	laptops := first(out)
	if out, code = cli(t, "token", "create", "--data-dir", dir, "--ttl", "2h", "--description", "kiosks"); code != 0 {
		t.Fatalf("token create: %q (exit %d)", out, code)
	}
	kiosks := first(out)
	if _, err := agent.Enroll(context.Background(), t.TempDir(), laptops); err != nil {
		t.Fatalf("enroll with the laptops token: %v", err)
	}

	out, code = cli(t, "token", "list", "--data-dir", dir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.Contains(lines[1], "kiosks") || !strings.Contains(lines[1], "0/1") ||
		!strings.Contains(lines[2], `laptops \x1b[2J`) || !strings.Contains(lines[2], "1/2") || !strings.HasSuffix(lines[2], "usable") {
		t.Fatalf("token list:\n%s\n(exit %d); want kiosks then laptops (its description inert, 1 of 2 used), both usable", out, code)
	}
	id := regexp.MustCompile(`^[0-9a-f]{16}\b`).FindString(lines[2])
	if id == "" {
		t.Fatalf("token list: the laptops row has no 16-digit id:\n%s", out)
	}

	for _, tt := range []struct{ id, want string }{
		{"zz", "give a token's id as token list shows it"},
		{"0123456789abcdef", "no enrollment token has id 0123456789abcdef"},
	} {
		if out, code := cli(t, "token", "revoke", tt.id, "--data-dir", dir); code == 0 || !strings.Contains(out, tt.want) {
			t.Errorf("token revoke %s: %q (exit %d); want a refusal saying %q", tt.id, out, code, tt.want)
		}
	}
	out, code = cli(t, "token", "revoke", id[:6], "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "enrollment token "+id+` (laptops \x1b[2J) revoked; it had enrolled 1 of 2`) {
		t.Fatalf("token revoke %s: %q (exit %d)", id[:6], out, code)
	}
	if out, code := cli(t, "token", "revoke", id, "--data-dir", dir); code == 0 || !strings.Contains(out, "was revoked already") {
		t.Errorf("token revoke of a revoked token: %q (exit %d); want a refusal saying it was revoked already", out, code)
	}
	if _, err := agent.Enroll(context.Background(), t.TempDir(), laptops); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("enroll with the revoked token: %v; want a refusal saying it was revoked", err)
	}
	if _, err := agent.Enroll(context.Background(), t.TempDir(), kiosks); err != nil {
		t.Errorf("enroll with the other token: %v", err)
	}

	out, _ = cli(t, "token", "list", "--data-dir", dir)
	if !regexp.MustCompile(id+`.*1/2\s+revoked \d{4}-\d\d-\d\d`).MatchString(out) || !strings.Contains(out, "used up") {
		t.Errorf("token list after revoking laptops and using up kiosks:\n%s", out)
	}
	out, _ = cli(t, "audit", "--data-dir", dir, "--target", id)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(lines[1], "token revoke") || !strings.Contains(lines[1], "refused: enrollment token "+id+" was revoked already") ||
		!strings.Contains(lines[2], "token revoke") || !strings.HasSuffix(lines[2], "done") {
		t.Errorf("audit --target %s:\n%s\nwant the refused second revocation, then the revocation", id, out)
	}
}
