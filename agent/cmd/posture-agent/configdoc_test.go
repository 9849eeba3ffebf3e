package main

import (
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/flagdoc"
)

// configDoc is the page that documents every flag and configuration key.
const configDoc = "../../../docs/configuration.md"

// TestConfigurationDoc keeps docs/configuration.md true to the command
// line: the table under "## Agent" has a row for every key of the
// configuration file and for --config, names no flag that does not exist,
// and gives each flag's default where it writes one as a value; the
// reference of every command's flags is the one the flags render (go test
// -run ConfigurationDoc -update, or make generate, rewrites it). Defaults
// that depend on the platform are Linux's there.
func TestConfigurationDoc(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the reference shows Linux's defaults")
	}
	t.Setenv("POSTURE_AGENT_CONFIG", "") // the tree's defaults, not this shell's
	doc, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	root := newRoot()
	rows, err := flagdoc.Table(doc, "## Agent")
	if err != nil {
		t.Fatalf("%s: %v", configDoc, err)
	}
	for _, p := range flagdoc.CheckTable(rows, flagdoc.AllFlags(root), append(configKeys, "config")) {
		t.Errorf("%s, ## Agent: %s", configDoc, p)
	}

	ref := flagdoc.Reference(root)
	out, old, err := flagdoc.Splice(doc, "posture-agent", ref)
	if err != nil {
		t.Fatalf("%s: %v", configDoc, err)
	}
	if *update {
		if err := os.WriteFile(configDoc, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if strings.TrimSpace(old) != strings.TrimSpace(ref) {
		t.Errorf("%s: the reference of posture-agent's flags is stale: run make generate (or go test ./agent/cmd/posture-agent -run ConfigurationDoc -update)", configDoc)
	}
}
