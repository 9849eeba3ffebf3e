package signals

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docs/contributing/signals.md names the code a new signal touches: files,
// functions, types and the tests that hold each step. Every name it gives
// must exist, so that renaming one without the checklist fails here rather
// than misleading the next person to follow it.
func TestChecklistNamesTheCode(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "contributing", "signals.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Every name declared in the module's Go files: functions and methods,
	// types, variables, constants and struct fields.
	decl := regexp.MustCompile(`^\s*(?:func (?:\([^)]*\) )?([A-Za-z_]\w*)|type ([A-Za-z_]\w*)|var ([A-Za-z_]\w*)|([A-Za-z_]\w*)\s*(?:=|[A-Za-z*\[]))`)
	names := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && path != root):
			return filepath.SkipDir
		case !d.IsDir() && strings.HasSuffix(path, ".go"):
			b, err := os.ReadFile(path)
			for line := range strings.Lines(string(b)) {
				if m := decl.FindStringSubmatch(line); m != nil {
					names[m[1]+m[2]+m[3]+m[4]] = true
				}
			}
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	declared := func(name string) bool { return names[name] }
	identifier := regexp.MustCompile(`^(c\.|[A-Z][A-Za-z]*\.)?([A-Za-z_][A-Za-z0-9_]*)(\(.*\))?$`)
	checked := 0
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(string(doc), -1) {
		tok := m[1]
		switch {
		case strings.Contains(tok, "<"), strings.Contains(tok, " ") && !strings.Contains(tok, "("):
			// a pattern (<signal>_linux.go) or a command
		case strings.HasSuffix(tok, ".go") || strings.HasSuffix(tok, ".md") || strings.HasSuffix(tok, ".proto") || strings.Contains(tok, "/"):
			if strings.HasPrefix(tok, "_") {
				continue // a suffix, not a file
			}
			p := filepath.Join(root, tok)
			if !strings.Contains(tok, "/") {
				p = tok // a file of this package
			}
			if _, err := os.Stat(p); err != nil {
				t.Errorf("the checklist names %s, which does not exist: %v", tok, err)
			}
			checked++
		default:
			id := identifier.FindStringSubmatch(tok)
			if id == nil {
				continue
			}
			name := id[2]
			// Lower-case words are report fields and prose (meta, detail);
			// names in capitals are proto enum values.
			if name == strings.ToLower(name) && id[1] == "" || name == strings.ToUpper(name) {
				continue
			}
			if !declared(name) {
				t.Errorf("the checklist names %s, but no Go code declares %s", tok, name)
			}
			if owner := strings.TrimSuffix(id[1], "."); owner != "" && owner != "c" && !declared(owner) {
				t.Errorf("the checklist names %s, but no Go code declares %s", tok, owner)
			}
			checked++
		}
	}
	if checked < 30 {
		t.Errorf("only %d names checked in docs/contributing/signals.md: is the page still a checklist?", checked)
	}
}
