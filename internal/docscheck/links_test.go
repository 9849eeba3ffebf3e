package docscheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools"
)

// repoRoot is the module's root, two levels up.
var repoRoot = filepath.Join("..", "..")

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile(`^#{1,6} (.*)$`)
	slugDrop  = regexp.MustCompile(`[^\p{L}\p{N}\- _]`)
)

// slug is the anchor a heading gets on a rendered page: lower case,
// punctuation dropped, spaces as hyphens.
func slug(heading string) string {
	s := strings.ToLower(strings.TrimSpace(heading))
	s = slugDrop.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, " ", "-")
}

// scan returns a page's anchors and its links, outside code blocks.
func scan(t *testing.T, path string) (anchors map[string]bool, links []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	anchors = map[string]bool{}
	fenced := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		if m := headingRE.FindStringSubmatch(line); m != nil {
			anchors[slug(m[1])] = true
		}
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			links = append(links, m[1])
		}
	}
	return anchors, links
}

// TestLinks: every relative link in the README and docs/ reaches a file
// of the repository, and every #anchor a heading of its page, so that
// moving a section cannot leave a reader at a dead end.
func TestLinks(t *testing.T) {
	files := testtools.MarkdownPages(t, repoRoot)
	anchors := map[string]map[string]bool{}
	links := map[string][]string{}
	for _, f := range files {
		clean := filepath.Clean(f)
		anchors[clean], links[clean] = scan(t, f)
	}
	for page, ls := range links {
		for _, link := range ls {
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(link, "#")
			target := page
			if path != "" {
				target = filepath.Clean(filepath.Join(filepath.Dir(page), path))
				if _, err := os.Stat(target); err != nil {
					t.Errorf("%s: link %q: %v", page, link, err)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			known, ok := anchors[target]
			if !ok {
				if !strings.HasSuffix(target, ".md") {
					t.Errorf("%s: link %q: an anchor into a file that is not a page", page, link)
				}
				continue // a page outside README and docs/: not checked
			}
			if !known[anchor] {
				t.Errorf("%s: link %q: %s has no heading with anchor #%s", page, link, target, anchor)
			}
		}
	}
}
