package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/internal/cliflag"
)

var update = flag.Bool("update", false, "rewrite golden files")

// Every command answers --help with exit 0.
func TestEveryCommandHelps(t *testing.T) {
	var paths [][]string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		paths = append(paths, strings.Fields(c.CommandPath())[1:])
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
	if len(paths) < 25 {
		t.Fatalf("only %d commands found", len(paths))
	}
	for _, p := range paths {
		t.Run(strings.Join(append([]string{"posture-collector"}, p...), " "), func(t *testing.T) {
			out, code := cli(t, append(p, "--help")...)
			if code != 0 || !strings.Contains(out, "Usage:") {
				t.Errorf("--help: exit %d\n%s", code, out)
			}
		})
	}
	for _, args := range [][]string{{"devices"}, {"devices", "frob"}, {"run", "--nope"}, {"run", "x"}, {"devices", "show"}, {"decisions", "a", "b"}, {"backup"}, {"restore"}} {
		if out, code := cli(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)\n%s", args, code, out)
		}
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		if out, code := cli(t, args...); code != 0 || !strings.HasPrefix(out, "posture-collector ") {
			t.Errorf("%q: exit %d: %q", args, code, out)
		}
	}
}

// The configuration file the packages install names every flag of run,
// commented, with its default: packaging/config/collector.yaml is this
// test's golden file (go test -run ConfigExample -update rewrites it).
func TestConfigExample(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	defineRunFlags(fs)
	got := cliflag.Example(`posture-collector configuration: every key is a flag of posture-collector run
(posture-collector run --help), shown here with its default. Remove the # to
set one; the command line overrides the file. Check with:
posture-collector config check`, fs, configKeys(newRunCommand()))
	file := "../../../packaging/config/collector.yaml"
	if *update {
		os.MkdirAll(filepath.Dir(file), 0o755)
		os.WriteFile(file, []byte(got), 0o644)
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Errorf("%s is not what the flags say (go test -run ConfigExample -update):\n%s", file, got)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(got, "\n#"+f.Name+": ") {
			t.Errorf("flag --%s has no key in the example", f.Name)
		}
	})
	// The example, uncommented, is a valid configuration.
	dir := t.TempDir()
	p := filepath.Join(dir, "collector.yaml")
	uncommented := regexp.MustCompile(`(?m)^#([a-z-]+: )`).ReplaceAllString(got, "$1")
	uncommented = strings.Replace(uncommented, "data-dir: /var/lib/posture-collector", "data-dir: "+dir, 1)
	os.WriteFile(p, []byte(uncommented), 0o644)
	if out, code := cli(t, "config", "check", "--config", p); code != 0 || !strings.Contains(out, "valid;") {
		t.Errorf("config check of the uncommented example: exit %d\n%s", code, out)
	}
}

// The configuration file sets flags, the command line overrides it, and
// unknown keys and bad values are errors naming the file, line and key.
func TestConfigFile(t *testing.T) {
	dataDir := startCollector(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "collector.yaml")
	write := func(body string) {
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# a collector\ndata-dir: " + dataDir + "\nreport-retention: 30d\nserving-name: [posture.example.com, 10.0.0.7]\n")
	// Admin commands take --data-dir from the file.
	if out, code := cli(t, "devices", "list", "--config", p); code != 0 || !strings.Contains(out, "ID") {
		t.Errorf("devices list with data-dir from the file: exit %d\n%s", code, out)
	}
	if out, code := cli(t, "devices", "list", "--config", p, "--data-dir", t.TempDir()); code != 1 || !strings.Contains(out, "no collector is running") {
		t.Errorf("--data-dir does not override the file: exit %d\n%s", code, out)
	}
	if out, code := cli(t, "config", "check", "--config", p); code != 0 || !strings.Contains(out, "report-retention: 30d (line 3)") || !strings.Contains(out, "serving-name: posture.example.com,10.0.0.7 (line 4)") {
		t.Errorf("config check: exit %d\n%s", code, out)
	}
	for _, tc := range []struct{ body, want string }{
		{"listen: 0.0.0.0:8443\nlisten-addr: x\n", p + `:2: unknown key "listen-addr"`},
		{"data-dir: /x\nreport-retention: 3 months\n", p + `:2: report-retention: "3 months": want whole days (90d), a duration (36h) or forever`},
		{"decay-interval: often\n", p + `:1: decay-interval: "often": want whole days`},
		{"http-plaintext: maybe\n", p + `:1: http-plaintext: `},
		{"serving-name: [a_b]\n", p + `:1: serving-name: "a_b" is neither a host name`},
		{"listen: a\nlisten: b\n", p + `:2: key "listen" given again (first on line 1)`},
		{"report-burst: 0\n", p + `: --report-burst and --report-interval cannot be 0`},
		{"watch-heartbeat: 1h\n", p + `: watch heartbeat interval 1h0m0s is too long`},
		{"browser-cert-ttl: 10m\n", p + `: --browser-cert-ttl 10m0s: give 1h to 30d`},
		{"browser-cert-ttl: 31d\n", p + `: --browser-cert-ttl 744h0m0s: give 1h to 30d`},
	} {
		write(tc.body)
		for _, args := range [][]string{{"config", "check", "--config", p}, {"run", "--config", p, "--data-dir", filepath.Join(dir, "never")}} {
			out, code := cli(t, args...)
			if args[0] == "run" && strings.HasPrefix(tc.want, p+": ") {
				continue // checks of several flags together name the flags, not the file
			}
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("%q with %q: exit %d\n%s\nwant %q", args, tc.body, code, out, tc.want)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "never")); err == nil {
		t.Error("run with a bad configuration file created its data directory")
	}
	if out, code := cli(t, "devices", "list", "--config", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(out, "missing.yaml") {
		t.Errorf("a missing --config file: exit %d\n%s", code, out)
	}
	// Days everywhere a duration is taken.
	if out, code := cli(t, "decisions", "--since", "1d", "--data-dir", dataDir); code != 0 {
		t.Errorf("decisions --since 1d: exit %d\n%s", code, out)
	}
	if out, code := cli(t, "token", "create", "--ttl", "7d", "--data-dir", dataDir); code != 0 || !strings.HasPrefix(out, "PT1.") {
		t.Errorf("token create --ttl 7d: exit %d\n%s", code, out)
	}
}

// A unique prefix of a device ID names the device; an ambiguous one is an
// error listing the devices it could mean.
func TestDeviceIDPrefix(t *testing.T) {
	dir := startCollector(t)
	tok, code := cli(t, "token", "create", "--uses", "20", "--data-dir", dir)
	if code != 0 {
		t.Fatal(tok)
	}
	// Seventeen devices: two of them share the first hex digit.
	byFirst := map[byte][]string{}
	var shared []string
	for i := 0; i < 17 && shared == nil; i++ {
		res, err := agent.Enroll(context.Background(), t.TempDir(), strings.TrimSpace(tok))
		if err != nil {
			t.Fatal(err)
		}
		id := res.DeviceID
		byFirst[id[0]] = append(byFirst[id[0]], id)
		if len(byFirst[id[0]]) == 2 {
			shared = byFirst[id[0]]
		}
	}
	id := shared[0]
	if out, code := cli(t, "devices", "show", id[:8], "--data-dir", dir); code != 0 || !strings.Contains(out, "Device     "+id) {
		t.Errorf("devices show by a unique prefix: exit %d\n%s", code, out)
	}
	if out, code := cli(t, "check", id[:8], "--level", "basic", "--data-dir", dir); code != 1 || !strings.Contains(out, "DENY "+id) {
		t.Errorf("check by a unique prefix: exit %d\n%s", code, out)
	}
	if out, code := cli(t, "devices", "show", "ffffffffff", "--data-dir", dir); code != 1 || !strings.Contains(out, "not enrolled") {
		t.Errorf("a prefix of no device: exit %d\n%s", code, out)
	}
	old := minPrefix
	minPrefix = 1
	defer func() { minPrefix = old }()
	out, code := cli(t, "devices", "revoke", id[:1], "--reason", "x", "--data-dir", dir)
	if code != 1 || !strings.Contains(out, "ambiguous device ID prefix") || !strings.Contains(out, shared[0]) || !strings.Contains(out, shared[1]) {
		t.Errorf("an ambiguous prefix: exit %d\n%s", code, out)
	}
	if out, _ := cli(t, "devices", "show", shared[1], "--data-dir", dir); !strings.Contains(out, "State      active") {
		t.Errorf("an ambiguous prefix revoked a device:\n%s", out)
	}
}
