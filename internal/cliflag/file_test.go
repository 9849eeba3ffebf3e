package cliflag

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "collector.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A repeatable flag takes a list item by item (its values hold commas); a
// flag given on the command line wins over the file; a bad item names
// its own line.
func TestRepeatedFromFile(t *testing.T) {
	check := func(v string) error {
		if !strings.HasPrefix(v, "name=") {
			return errors.New("want name=…")
		}
		return nil
	}
	keys := []string{"webhook", "serving-name", "listen"}
	newFlags := func() (*pflag.FlagSet, *[]string, *string, *string) {
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		hooks := Repeated(fs, "webhook", "spec", "", check)
		names := fs.String("serving-name", "", "")
		listen := fs.String("listen", "127.0.0.1:8443", "")
		return fs, hooks, names, listen
	}

	path := writeFile(t, "webhook:\n  - name=a,url=https://a.example\n  - name=b,url=https://b.example\nserving-name: [x.example, y.example]\nlisten: 0.0.0.0:8443\n")
	fs, hooks, names, listen := newFlags()
	if err := fs.Parse([]string{"--listen", "127.0.0.1:9443"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, false, keys, fs); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"name=a,url=https://a.example", "name=b,url=https://b.example"}, *hooks); d != "" {
		t.Errorf("webhook (-want +got):\n%s", d)
	}
	if *names != "x.example,y.example" || *listen != "127.0.0.1:9443" {
		t.Errorf("serving-name %q, listen %q", *names, *listen)
	}

	// A single value is a list of one; the command line's values replace the file's.
	fs, hooks, _, _ = newFlags()
	if _, err := Load(writeFile(t, "webhook: name=only\n"), false, keys, fs); err != nil || len(*hooks) != 1 || (*hooks)[0] != "name=only" {
		t.Errorf("single value: %v, %q", err, *hooks)
	}
	fs, hooks, _, _ = newFlags()
	fs.Parse([]string{"--webhook", "name=cli"})
	if _, err := Load(writeFile(t, "webhook: [name=file]\n"), false, keys, fs); err != nil || len(*hooks) != 1 || (*hooks)[0] != "name=cli" {
		t.Errorf("command line over file: %v, %q", err, *hooks)
	}

	fs, _, _, _ = newFlags()
	bad := writeFile(t, "listen: 0.0.0.0:8443\nwebhook:\n  - name=a\n  - url=https://b.example\n")
	_, err := Load(bad, false, keys, fs)
	if err == nil || !strings.Contains(err.Error(), bad+":4: webhook: want name=") {
		t.Errorf("bad item: %v", err)
	}
}

// The example file writes a repeatable flag as an empty list.
func TestExampleRepeated(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	Repeated(fs, "webhook", "spec", "post events", func(string) error { return nil })
	if got := Example("header", fs, []string{"webhook"}); !strings.Contains(got, "\n#webhook: []\n") {
		t.Errorf("example:\n%s", got)
	}
}
