package docscheck

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/testtools"
)

// TestPolicyPageIsTheBuiltInPolicy: the policy docs/policy.md shows, and
// says is the built-in one, is: it parses, and scores and levels as the
// collector's built-in policy does.
func TestPolicyPageIsTheBuiltInPolicy(t *testing.T) {
	blocks := testtools.CodeBlocks(t, filepath.Join(repoRoot, "docs", "policy.md"), "# Policy", "yaml")
	shown, err := policy.Parse([]byte(blocks[0]))
	if err != nil {
		t.Fatalf("docs/policy.md's policy does not parse: %v", err)
	}
	builtIn := policy.Default()
	if !reflect.DeepEqual(shown.Checks, builtIn.Checks) {
		t.Errorf("docs/policy.md's checks differ from the built-in policy's:\n%+v\n%+v", shown.Checks, builtIn.Checks)
	}
	if !reflect.DeepEqual(shown.Freshness, builtIn.Freshness) {
		t.Errorf("docs/policy.md's freshness differs from the built-in policy's:\n%+v\n%+v", shown.Freshness, builtIn.Freshness)
	}
	if len(shown.Levels) != len(builtIn.Levels) {
		t.Fatalf("docs/policy.md has %d levels, the built-in policy %d", len(shown.Levels), len(builtIn.Levels))
	}
	for i := range shown.Levels {
		a, b := shown.Levels[i], builtIn.Levels[i]
		if a.Name != b.Name || a.MinScore != b.MinScore || !reflect.DeepEqual(a.Require, b.Require) {
			t.Errorf("docs/policy.md's level %q differs from the built-in policy's %q", a.Name, b.Name)
		}
	}
}

// TestWalkthroughPolicyValid: the policy the README's walkthrough runs
// with is valid.
func TestWalkthroughPolicyValid(t *testing.T) {
	if _, err := policy.Load(filepath.Join(repoRoot, "docs", "examples", "walkthrough-policy.yaml")); err != nil {
		t.Fatal(err)
	}
}
