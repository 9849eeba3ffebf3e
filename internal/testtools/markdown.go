package testtools

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CodeBlocks returns the fenced code blocks of language lang (```lang)
// in the section of the Markdown file path that the heading line heading
// ("### nginx") opens, up to the next heading of the same level or
// higher. It fails the test when the file has no such blocks there, so
// that a test of documented snippets cannot pass on a page that lost
// them.
func CodeBlocks(t testing.TB, path, heading, lang string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	level := headingLevel(heading)
	if level == 0 {
		t.Fatalf("CodeBlocks: %q is not a Markdown heading", heading)
	}
	var (
		blocks           []string
		in, fenced, keep bool
		cur              strings.Builder
	)
	for _, line := range strings.SplitAfter(string(data), "\n") {
		trimmed := strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(trimmed, "```"):
			if fenced {
				if keep {
					blocks = append(blocks, cur.String())
				}
				cur.Reset()
				fenced, keep = false, false
			} else {
				fenced = true
				keep = in && strings.TrimPrefix(trimmed, "```") == lang
			}
		case fenced:
			if keep {
				cur.WriteString(line)
			}
		case trimmed == heading:
			in = true
		case in && headingLevel(trimmed) > 0 && headingLevel(trimmed) <= level:
			in = false
		}
	}
	if fenced {
		t.Fatalf("%s: a code block is not closed", path)
	}
	if blocks == nil {
		t.Fatalf("%s: no ```%s blocks under %q", path, lang, heading)
	}
	return blocks
}

// headingLevel is the number of #s opening a Markdown heading line, or 0.
func headingLevel(line string) int {
	n := len(line) - len(strings.TrimLeft(line, "#"))
	if n == 0 || n > 6 || !strings.HasPrefix(line[n:], " ") {
		return 0
	}
	return n
}

// MarkdownPages are the README and every page under docs/ of the
// repository at root.
func MarkdownPages(t testing.TB, root string) []string {
	t.Helper()
	files := []string{filepath.Join(root, "README.md")}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
