package flagdoc

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func TestCheckTable(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.String("listen", "127.0.0.1:8443", "")
	fs.Duration("interval", time.Minute, "")
	fs.String("name", "", "")
	fs.Bool("plain", false, "")
	fs.Duration("min", time.Second, "")
	fs.Duration("max", 5*time.Minute, "")
	doc := []byte("# Page\n\n## Collector\n\nText.\n\n| flag | default | meaning |\n| --- | --- | --- |\n" +
		"| `--listen` | `127.0.0.1:8443` | where \\| how |\n" +
		"| `--interval` | `1m` | 1m is 1m0s |\n" +
		"| `--name` | the host name | words are not checked |\n" +
		"| `--plain` | on | a word other than off and none |\n" +
		"| `--min`, `--max` | `1s`, `10m` | the second is wrong |\n" +
		"| `--gone` | none | no such flag |\n" +
		"\nAfter.\n\n| other | table |\n| --- | --- |\n| `--nope` | x |\n")
	rows, err := Table(doc, "## Collector")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 6 || rows[0][2] != "where | how" {
		t.Fatalf("rows: %q", rows)
	}
	got := CheckTable(rows, fs, []string{"listen", "interval", "name", "plain", "min", "max", "missing"})
	want := []string{
		"--max: documented default `10m`, but it is \"5m0s\"",
		"--gone is documented but is not a flag",
		"--missing has no row (its help: )",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("problems (-want +got):\n%s", d)
	}
	if _, err := Table(doc, "## Agent"); err == nil {
		t.Error("a missing heading is no error")
	}
}

func TestReferenceAndSplice(t *testing.T) {
	root := &cobra.Command{Use: "tool"}
	root.PersistentFlags().String("config", "/etc/tool.yaml", "configuration file")
	run := &cobra.Command{Use: "run", Run: func(*cobra.Command, []string) {}}
	run.Flags().StringP("output", "o", "table", "table|json, *all* of it")
	run.Flags().StringArray("hook", nil, "repeatable")
	hidden := &cobra.Command{Use: "man", Hidden: true, Run: func(*cobra.Command, []string) {}}
	hidden.Flags().String("dir", "", "")
	root.AddCommand(run, hidden)
	ref := Reference(root)
	for _, want := range []string{
		"#### `tool`\n", "| `--config` | string | `/etc/tool.yaml` | configuration file |",
		"#### `tool run`\n", "| `-o`, `--output` | string | `table` | table\\|json, \\*all\\* of it |", "| `--hook` | stringArray | none | repeatable |",
	} {
		if !strings.Contains(ref, want) {
			t.Errorf("reference lacks %q:\n%s", want, ref)
		}
	}
	if strings.Contains(ref, "man") || strings.Count(ref, "--config") != 1 {
		t.Errorf("a hidden command, or an inherited flag, is in the reference:\n%s", ref)
	}

	doc := []byte("head\n" + Begin("tool") + "\nold\n" + End("tool") + "\ntail\n")
	out, old, err := Splice(doc, "tool", ref)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(old) != "old" || !strings.HasPrefix(string(out), "head\n"+Begin("tool")+"\n#### `tool`") || !strings.HasSuffix(string(out), "\n\n"+End("tool")+"\ntail\n") {
		t.Errorf("splice: old %q, out:\n%s", old, out)
	}
	again, old2, _ := Splice(out, "tool", ref)
	if string(again) != string(out) || strings.TrimSpace(old2) != strings.TrimSpace(ref) {
		t.Error("splicing the same reference again changes the document")
	}
	if _, _, err := Splice([]byte("no markers"), "tool", ref); err == nil {
		t.Error("a document without markers is no error")
	}
}
