package main

import (
	"testing"

	"github.com/posture-project/posture/internal/flagdoc"
	"github.com/posture-project/posture/internal/testtools"
)

// TestDocsNameRealCommands holds every posture-agent command line in
// the README and docs/ to the command line: each names a command that
// exists, with flags it has and the arguments it takes.
func TestDocsNameRealCommands(t *testing.T) {
	t.Setenv("POSTURE_AGENT_CONFIG", "")
	usages, err := flagdoc.Usages(testtools.MarkdownPages(t, "../../.."), "posture-agent")
	if err != nil {
		t.Fatal(err)
	}
	if len(usages) < 5 {
		t.Fatalf("found %d posture-agent command lines in the docs; the search is broken", len(usages))
	}
	for _, u := range usages {
		if err := flagdoc.CheckUsage(newRoot, u.Args); err != nil {
			t.Errorf("%s\n\t%v", u, err)
		}
	}
}
