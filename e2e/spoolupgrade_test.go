package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// An agent upgraded while reports wait in its spool sends them: the spool
// in agent/testdata/spool-json was written by an agent that wrapped each
// report in JSON; the current agent converts the entries when it starts and
// sends them, in order, before what it measures itself.
func TestUpgradedAgentSendsOldSpool(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	src := filepath.Join("..", "agent", "testdata", "spool-json")
	des, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(stateDir, "spool"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(src, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stateDir, "spool", de.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "the old spool and one new measurement stored", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() == 4
	})
	e.wantActiveAt(t, id, 4)
	got := storedMeasurements(t, e, id)
	want := []string{"spooled-before-upgrade-1", "spooled-before-upgrade-2", "spooled-before-upgrade-3", "m-000001"}
	if !slices.Equal(got, want) {
		t.Errorf("stored measurements by seq: %q, want %q", got, want)
	}
}
