package flagdoc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// testRoot is a small command tree: tool show ID [--level NAME] [-o
// text|json], tool run [--webhook SPEC]…, and the group tool ssf.
func testRoot() *cobra.Command {
	root := &cobra.Command{Use: "tool"}
	show := &cobra.Command{Use: "show ID", Args: cobra.ExactArgs(1), RunE: func(*cobra.Command, []string) error { return nil }}
	show.Flags().String("level", "", "")
	show.Flags().StringP("output", "o", "text", "")
	run := &cobra.Command{Use: "run", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error { return nil }}
	run.Flags().StringSlice("webhook", nil, "")
	run.Flags().Bool("plain", false, "")
	ssf := &cobra.Command{Use: "ssf"}
	ssf.AddCommand(&cobra.Command{Use: "list", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error { return nil }})
	root.PersistentFlags().String("data-dir", "", "")
	root.AddCommand(show, run, ssf)
	return root
}

func TestCheckUsage(t *testing.T) {
	for _, tc := range []struct {
		line    string
		wantErr string // "" for none
	}{
		{"tool show 8b6e… --level basic --data-dir /tmp/x", ""},
		{"tool show ID [--level NAME] [-o text|json]", ""},
		{"tool show", ""}, // named in prose
		{"tool run … --webhook 'name=a;b' --plain", ""},
		{"tool run [--webhook …]", ""},
		{"tool run --data-dir DIR …", ""},
		{"tool ssf list", ""},
		{"tool show --level", ""}, // a flag named in prose
		{"tool show --lvl", "unknown flag: --lvl"},
		{"tool ssf", ""},
		{"tool show|run EXTRA", `unknown command "EXTRA" for "tool run"`}, // show takes it, run does not
		{"tool show ID --levle basic", "unknown flag: --levle"},
		{"tool show ID EXTRA", "accepts 1 arg"},
		{"tool run --webhook …  --nope …", "unknown flag: --nope"},
		{"tool ssf lsit", `has no command "lsit"`},
		{"tool run --plain extra", "unknown command \"extra\""},
	} {
		words, ok := commandWords(tc.line, "tool", false)
		if !ok {
			t.Fatalf("%q: not a command line of tool", tc.line)
		}
		err := CheckUsage(testRoot, words)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v, want no error", tc.line, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: %v, want an error containing %q", tc.line, err, tc.wantErr)
		}
	}
}

func TestUsages(t *testing.T) {
	page := "# Page\n\nRun `tool show ID` to see it; `tool` alone is not a command line.\n\n" +
		"```console\n$ sudo tool run \\\n    --plain | less\n$ echo tool show\n```\n\n" +
		"```\ntool      picture      other\n```\n\n" +
		"| a | `tool show ID [-o text\\|json]` |\n"
	file := filepath.Join(t.TempDir(), "page.md")
	if err := os.WriteFile(file, []byte(page), 0o600); err != nil {
		t.Fatal(err)
	}
	us, err := Usages([]string{file}, "tool")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range us {
		got = append(got, strings.Join(u.Args, " "))
	}
	want := []string{"show ID", "", "run --plain", "show ID [-o text|json]"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("usages:\n%q\nwant\n%q", got, want)
	}
}
