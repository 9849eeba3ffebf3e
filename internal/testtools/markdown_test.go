package testtools

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestCodeBlocks(t *testing.T) {
	page := "# Top\n\n```nginx\nbefore\n```\n\n## Gateways\n\n### nginx\n\ntext\n\n```nginx\none\n```\n\n```console\n# not a heading\n```\n\n#### deeper\n\n```nginx\ntwo\n  lines\n```\n\n### Caddy\n\n```nginx\nafter\n```\n"
	path := filepath.Join(t.TempDir(), "page.md")
	if err := os.WriteFile(path, []byte(page), 0o600); err != nil {
		t.Fatal(err)
	}
	got := CodeBlocks(t, path, "### nginx", "nginx")
	if want := []string{"one\n", "two\n  lines\n"}; !slices.Equal(got, want) {
		t.Errorf("CodeBlocks = %q, want %q", got, want)
	}
	if got := CodeBlocks(t, path, "### nginx", "console"); !slices.Equal(got, []string{"# not a heading\n"}) {
		t.Errorf("console blocks = %q", got)
	}
}
