package main

import (
	"os"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/flagdoc"
)

// configDoc is the page that documents every flag and configuration key.
const configDoc = "../../../docs/configuration.md"

// TestConfigurationDoc keeps docs/configuration.md true to the command
// line: the table under "## Collector" has a row for every key of the
// configuration file (every flag of run) and for --config, names no flag
// that does not exist, and gives each flag's default where it writes one
// as a value; the reference of every command's flags is the one the flags
// render (go test -run ConfigurationDoc -update, or make generate,
// rewrites it).
func TestConfigurationDoc(t *testing.T) {
	t.Setenv("POSTURE_COLLECTOR_CONFIG", "") // the tree's defaults, not this shell's
	doc, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	root := newRoot()
	rows, err := flagdoc.Table(doc, "## Collector")
	if err != nil {
		t.Fatalf("%s: %v", configDoc, err)
	}
	keys := append(configKeys(newRunCommand()), "config")
	for _, p := range flagdoc.CheckTable(rows, flagdoc.AllFlags(root), keys) {
		t.Errorf("%s, ## Collector: %s", configDoc, p)
	}

	out, old, err := flagdoc.Splice(doc, "posture-collector", flagdoc.Reference(root))
	if err != nil {
		t.Fatalf("%s: %v", configDoc, err)
	}
	if *update {
		if err := os.WriteFile(configDoc, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if strings.TrimSpace(old) != strings.TrimSpace(flagdoc.Reference(root)) {
		t.Errorf("%s: the reference of posture-collector's flags is stale: run make generate (or go test ./collector/cmd/posture-collector -run ConfigurationDoc -update)", configDoc)
	}
}
