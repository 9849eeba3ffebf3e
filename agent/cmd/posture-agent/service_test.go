package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/cliflag"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite the golden service definitions in packaging/")

// TestServiceDefinitionsGolden holds the service definitions the agent
// writes against the files the packages ship (packaging/): the same text,
// restart on failure included. go test -run Golden -update rewrites them.
func TestServiceDefinitionsGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		got  string
		want []string // what must be in it
	}{
		{"../../../packaging/systemd/posture-agent.service", systemdUnit(packagedBinary, []string{"run"}),
			[]string{"ExecStart=/usr/bin/posture-agent run\n", "Restart=always", "StartLimitIntervalSec=0", "WantedBy=multi-user.target"}},
		{"../../../packaging/launchd/posture-agent.plist", launchdPlist("/usr/local/bin/posture-agent", []string{"run"}),
			[]string{"<key>KeepAlive</key>\n\t<true/>", "<key>RunAtLoad</key>\n\t<true/>", "<string>/usr/local/bin/posture-agent</string>"}},
	} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			for _, w := range tc.want {
				if !strings.Contains(tc.got, w) {
					t.Errorf("definition lacks %q:\n%s", w, tc.got)
				}
			}
			if strings.Contains(tc.got, "{{") {
				t.Errorf("definition holds {{, which kardianos/service would read as a template")
			}
			if *update {
				if err := os.WriteFile(tc.file, []byte(tc.got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if string(want) != tc.got {
				t.Errorf("%s differs from what the agent writes (go test -run Golden -update rewrites it):\n--- file\n%s\n--- agent\n%s", tc.file, want, tc.got)
			}
		})
	}
}

// Arguments with spaces and quotes survive each definition's quoting.
func TestServiceDefinitionsQuote(t *testing.T) {
	args := []string{"run", "--state-dir", `/srv/my agent's "state"`}
	if got := systemdUnit("/opt/posture agent/posture-agent", args); !strings.Contains(got, `ExecStart="/opt/posture agent/posture-agent" run --state-dir "/srv/my agent's \"state\""`+"\n") {
		t.Errorf("systemd quoting:\n%s", got)
	}
	if got := sysvScript("/usr/bin/posture-agent", args); !strings.Contains(got, `cmd="/usr/bin/posture-agent run --state-dir '/srv/my agent'\''s "state"'"`) {
		t.Errorf("sh quoting:\n%s", got)
	}
	if got := launchdPlist("/usr/local/bin/posture-agent", args); !strings.Contains(got, "<string>/srv/my agent&#39;s &#34;state&#34;</string>") {
		t.Errorf("plist escaping:\n%s", got)
	}
}

// Every command answers --help with exit 0, and usage errors exit 2.
func TestEveryCommandHelps(t *testing.T) {
	var walk func(c *cobra.Command)
	var paths [][]string
	walk = func(c *cobra.Command) {
		path := strings.Fields(c.CommandPath())[1:]
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
	if len(paths) < 10 {
		t.Fatalf("only %d commands found", len(paths))
	}
	for _, p := range paths {
		t.Run(strings.Join(append([]string{"posture-agent"}, p...), " "), func(t *testing.T) {
			var out bytes.Buffer
			if code := execute(append(append([]string{}, p...), "--help"), &out, &out); code != 0 || !strings.Contains(out.String(), "Usage:") {
				t.Errorf("--help: exit %d\n%s", code, out.String())
			}
		})
	}
	for _, args := range [][]string{{"nope"}, {"run", "--nope"}, {"run", "extra"}, {"enroll"}, {"run", "--interval", "soon"}, {"status", "-o", "yaml"}} {
		var out bytes.Buffer
		if code := execute(args, &out, &out); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)\n%s", args, code, out.String())
		}
	}
}

// The configuration file gives flags their values, the command line
// overrides it, and unknown keys and bad values name the file, line and key.
func TestConfigurationFile(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stateDir := t.TempDir()
	p := write("# agent\nstate-dir: " + stateDir + "\ninterval: 2d\n")
	var out bytes.Buffer
	execute([]string{"status", "--config", p, "-o", "json"}, &out, &out)
	if !strings.Contains(out.String(), `"state_dir": "`+stateDir+`"`) {
		t.Errorf("state-dir from the file not used:\n%s", out.String())
	}
	out.Reset()
	execute([]string{"status", "--config", p, "--state-dir", "/elsewhere", "-o", "json"}, &out, &out)
	if !strings.Contains(out.String(), `"state_dir": "/elsewhere"`) {
		t.Errorf("the command line does not override the file:\n%s", out.String())
	}
	for _, tc := range []struct{ body, cmd, want string }{
		{"state-dir: /x\nintervall: 1m\n", "status", p + `:2: unknown key "intervall" (did you mean interval?)`},
		{"interval: often\n", "status", p + `:1: interval: "often": want whole days (90d) or a duration`},
		{"identity: [a, b]\n", "enroll", p + `:1: identity: want auto or tpm or software`},
		{"- a\n", "status", p + `:1: want a mapping`},
	} {
		write(tc.body)
		out.Reset()
		args := []string{tc.cmd, "--config", p}
		if tc.cmd == "enroll" {
			args = append(args, "--token", "x")
		}
		if code := execute(args, &out, &out); code == 0 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("file %q: exit %d\n%s\nwant %q", tc.body, code, out.String(), tc.want)
		}
	}
	out.Reset()
	if code := execute([]string{"status", "--config", filepath.Join(dir, "missing.yaml")}, &out, &out); code == 0 || !strings.Contains(out.String(), "missing.yaml") {
		t.Errorf("a missing --config file: exit %d\n%s", code, out.String())
	}
}

// The configuration file the Linux packages install names every key,
// commented, with its default: packaging/config/agent.yaml is this test's
// golden file (go test -run ConfigExample -update rewrites it).
func TestConfigExample(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the example holds Linux's defaults")
	}
	got := exampleConfig()
	file := "../../../packaging/config/agent.yaml"
	if *update {
		os.WriteFile(file, []byte(got), 0o644)
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Errorf("%s is not what the flags say (go test -run ConfigExample -update):\n%s", file, got)
	}
	for _, k := range configKeys {
		if !strings.Contains(got, "\n#"+k+": ") {
			t.Errorf("key %s missing from the example", k)
		}
	}
}

func exampleConfig() string {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	stateDirFlag(fs)
	intervalFlag(fs)
	defineEnrollFlags(fs, "")
	return cliflag.Example(`posture-agent configuration, read by every posture-agent command (enroll, run,
install …). Remove the # to set a key; the command line overrides the file.`, fs, configKeys)
}
