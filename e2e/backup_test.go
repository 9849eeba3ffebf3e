package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// TestBackupRestore backs up a collector while its agent reports, keeps
// reporting after the backup (reports the backup does not hold), loses the
// data directory, restores the backup with posture-collector restore and
// starts again: the same CA, the device active, its agent continuing its
// chain from where the backup left it.
func TestBackupRestore(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	seq := func() uint64 {
		d, err := e.device(id)
		if err != nil {
			return 0
		}
		return d.GetDevice().GetLastSeq()
	}
	eventually(t, "three reports stored", func() bool { return seq() >= 3 })
	fingerprint := e.c.CAFingerprint()
	// A user's browser certificate, which must keep working after a
	// restore.
	devCert, _ := deviceCreds(t, stateDir)
	browser, err := issueBrowserCert(t, e, devCert, "alice")
	if err != nil {
		t.Fatal(err)
	}

	bin, _ := builtBinaries(t)
	archive := filepath.Join(t.TempDir(), "collector.tar.gz")
	before := seq()
	// The commands docs/backup.md gives, on this test's files.
	backupArgs := append(docCommand(t, "## Backup", "posture-collector backup --to"), archive)
	out, err := exec.Command(bin, append(backupArgs, "--data-dir", e.dataDir)...).CombinedOutput()
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "posture.db") || !strings.Contains(string(out), "ca.key") {
		t.Errorf("backup does not say what it holds: %s", out)
	}
	after := seq()
	if fi, err := os.Stat(archive); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("archive: %v, mode %v; want 0600 (it holds the CA key)", err, fi.Mode().Perm())
	}
	eventually(t, "reports after the backup", func() bool { return seq() >= after+5 })
	e.stop()
	lost := (&runningAgent{stateDir: stateDir}).ackedHead(t) // acknowledged, and not in the backup

	// The data directory is lost; the backup comes back.
	if err := os.RemoveAll(e.dataDir); err != nil {
		t.Fatal(err)
	}
	restoreArgs := append(docCommand(t, "## Restore", "posture-collector restore --from"), archive)
	out, err = exec.Command(bin, append(restoreArgs, "--data-dir", e.dataDir)...).CombinedOutput()
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "restore", "--from", archive, "--data-dir", e.dataDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "restore into an empty data directory") {
		t.Errorf("a second restore over the first: %v\n%s", err, out)
	}
	e.start()
	if got := e.c.CAFingerprint(); got != fingerprint {
		t.Fatalf("CA fingerprint %s after restore, was %s", got, fingerprint)
	}
	d, err := e.device(id)
	if err != nil {
		t.Fatal(err)
	}
	if s := d.GetDevice().GetLastSeq(); s < before || s > after {
		t.Errorf("the restored database's head is %d, want what it was during the backup (%d to %d)", s, before, after)
	}
	eventually(t, "the agent reporting past what was lost", func() bool { return seq() > lost })
	if d, _ := e.device(id); d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device %s after restore: %v (%s), want active", id, d.GetDevice().GetState(), d.GetDevice().GetStateReason())
	}
	r, err := e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic",
		CertificateSerial: pki.SerialHex(browser), CertificateKeySha256: pki.KeySHA256(browser)})
	if err != nil || !r.GetAllowed() {
		t.Errorf("the user's browser certificate after restore: %v, %v; want it to count as the device", r.GetReasons(), err)
	}
}

// docCommand is the arguments in prefix of the command line that starts
// with it (after sudo) in the sh blocks of docs/backup.md's section
// heading: the test gives the file.
func docCommand(t *testing.T, heading, prefix string) []string {
	t.Helper()
	for _, block := range testtools.CodeBlocks(t, filepath.Join("..", "docs", "backup.md"), heading, "sh") {
		for _, line := range strings.Split(block, "\n") {
			line = strings.TrimPrefix(strings.TrimSpace(line), "sudo ")
			if strings.HasPrefix(line, prefix+" ") {
				return strings.Fields(prefix)[1:]
			}
		}
	}
	t.Fatalf("docs/backup.md %s has no %s command", heading, prefix)
	return nil
}
