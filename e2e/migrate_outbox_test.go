package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools"
)

// TestMigrateRefusesUndelivered: a copy does not carry the outbox, so
// migrate refuses a database whose webhook is still owed messages, copies
// nothing, and copies with --discard-undelivered, saying what it dropped.
func TestMigrateRefusesUndelivered(t *testing.T) {
	bin, _ := builtBinaries(t)
	dsn := testtools.Postgres(t)
	secret := filepath.Join(t.TempDir(), "tickets.secret")
	if err := os.WriteFile(secret, []byte("a webhook secret of thirty-two bytes or more\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &replicaSet{t: t, bin: bin}
	// The receiver never answers: nothing listens on its port.
	r := &replica{set: s, name: "collector-a", dataDir: t.TempDir(), addr: freeAddr(t),
		extra: []string{"--webhook", "name=tickets,url=http://" + freeAddr(t) + "/hooks,secret-file=" + secret}}
	s.reps = append(s.reps, r)
	r.start()
	ag := startAgent(t, r.token(1))
	eventually(t, "a report of "+ag.id, func() bool { p, err := r.device(ag.id); return err == nil && p.GetDevice().GetLastSeq() >= 1 })
	ag.stop()
	r.stop()

	migrate := func(extra ...string) (string, int) {
		cmd := exec.Command(bin, append([]string{"migrate", "--from", r.dataDir, "--to", dsn}, extra...)...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	out, code := migrate()
	if code == 0 || !strings.Contains(out, "nothing was copied: messages wait for delivery to webhook:tickets") || !strings.Contains(out, "--discard-undelivered") {
		t.Fatalf("migrate with a webhook owed messages: exit %d: %s; want it refused, naming the webhook and the way out", code, out)
	}
	// Nothing was copied: the database is still empty, so this copy is
	// taken.
	out, code = migrate("--discard-undelivered")
	if code != 0 || !strings.Contains(out, "copied and checked") || !strings.Contains(out, "dropped the messages waiting for webhook:tickets") {
		t.Fatalf("migrate --discard-undelivered: exit %d: %s", code, out)
	}
}
