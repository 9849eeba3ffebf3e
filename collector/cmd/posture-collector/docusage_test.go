package main

import (
	"testing"

	"github.com/posture-project/posture/internal/flagdoc"
	"github.com/posture-project/posture/internal/testtools"
)

// TestDocsNameRealCommands holds every posture-collector command line in
// the README and docs/ to the command line: each names a command that
// exists, with flags it has and the arguments it takes.
func TestDocsNameRealCommands(t *testing.T) {
	t.Setenv("POSTURE_COLLECTOR_CONFIG", "")
	usages, err := flagdoc.Usages(testtools.MarkdownPages(t, "../../.."), "posture-collector")
	if err != nil {
		t.Fatal(err)
	}
	if len(usages) < 20 {
		t.Fatalf("found %d posture-collector command lines in the docs; the search is broken", len(usages))
	}
	for _, u := range usages {
		if err := flagdoc.CheckUsage(newRoot, u.Args); err != nil {
			t.Errorf("%s\n\t%v", u, err)
		}
	}
}
