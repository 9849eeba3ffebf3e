package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// walkStep is one command of the README's walkthrough and what the README
// shows it printing.
type walkStep struct {
	cmd        string   // as written after "$ "
	background bool     // ends with " &"
	exit       int      // the "exit N" the README shows; 0 when it shows none
	output     []string // the lines the README shows after it
}

// readmeWalkthrough returns the commands of the README's "Five minutes by
// hand", block by block.
func readmeWalkthrough(t *testing.T) [][]walkStep {
	t.Helper()
	var blocks [][]walkStep
	for _, block := range testtools.CodeBlocks(t, filepath.Join("..", "README.md"), "## Five minutes by hand", "console") {
		var steps []walkStep
		for _, line := range strings.Split(strings.TrimRight(block, "\n"), "\n") {
			if cmd, ok := strings.CutPrefix(line, "$ "); ok {
				s := walkStep{cmd: cmd}
				if c, ok := strings.CutSuffix(cmd, " &"); ok {
					s.cmd, s.background = c, true
				}
				s.cmd = strings.TrimSuffix(s.cmd, `; echo "exit $?"`)
				// A comment after the command is for the reader.
				if i := strings.Index(s.cmd, "   #"); i > 0 {
					s.cmd = strings.TrimRight(s.cmd[:i], " ")
				}
				steps = append(steps, s)
				continue
			}
			if len(steps) == 0 {
				t.Fatalf("README walkthrough: output before any command: %q", line)
			}
			last := &steps[len(steps)-1]
			if n, ok := strings.CutPrefix(line, "exit "); ok {
				code, err := strconv.Atoi(n)
				if err != nil {
					t.Fatalf("README walkthrough: %q", line)
				}
				last.exit = code
				continue
			}
			last.output = append(last.output, line)
		}
		blocks = append(blocks, steps)
	}
	if len(blocks) != 2 {
		t.Fatalf("README walkthrough has %d console blocks, want 2 (the collector, the admin and the device)", len(blocks))
	}
	return blocks
}

// shape turns a line the README shows into a pattern for the line a run
// prints: "…" stands for anything, numbers may differ (scores, ages,
// durations), and so may the widths of table columns.
func shape(line string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	// A word cut short ("8b6e…", "PT1.eyJh…") stands for the whole word.
	line = regexp.MustCompile(`[^\s(/]*…`).ReplaceAllString(line, "…")
	for i, part := range strings.Split(line, "…") {
		if i > 0 {
			b.WriteString(".*")
		}
		q := regexp.QuoteMeta(part)
		q = regexp.MustCompile(`[0-9]+`).ReplaceAllString(q, `[0-9]+`)
		q = regexp.MustCompile(` {2,}`).ReplaceAllString(q, ` +`)
		b.WriteString(q)
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// TestREADMEWalkthrough runs the README's "Five minutes by hand" as
// written, with the binaries built from this tree, its directories in
// temporary ones and the collector on a free port: every command exits as
// the README shows, and the first line of what each prints (the decision,
// the table's header, the enrollment) has the README's shape. Scores and
// the checks that fail depend on the machine; the README says which
// machine its numbers come from.
func TestREADMEWalkthrough(t *testing.T) {
	collectorBin, agentBin := builtBinaries(t)
	blocks := readmeWalkthrough(t)
	dataDir, stateDir := filepath.Join(t.TempDir(), "posture"), filepath.Join(t.TempDir(), "agent")
	addr := freeAddr(t)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	r := strings.NewReplacer(
		"bin/posture-collector", collectorBin,
		"bin/posture-agent", agentBin,
		"/tmp/posture", dataDir,
		"/tmp/agent", stateDir,
		"127.0.0.1:8443", addr,
		"docs/examples/", filepath.Join(repo, "docs", "examples")+"/",
	)
	expand := func(cmd string) []string {
		args, err := splitShell(r.Replace(cmd))
		if err != nil {
			t.Fatalf("README walkthrough: %q: %v", cmd, err)
		}
		for i, a := range args {
			switch {
			case !strings.HasSuffix(a, "…"):
			case strings.HasPrefix(a, "PT1."):
				args[i] = vars["token"]
			default:
				args[i] = vars["device"]
			}
		}
		return args
	}
	background := func(args []string) *syncBuffer {
		out := &syncBuffer{}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
			if t.Failed() {
				t.Logf("%s:\n%s", filepath.Base(args[0]), out.String())
			}
		})
		return out
	}

	// Terminal 1: the collector, until it says it serves.
	first := blocks[0]
	if len(first) != 1 {
		t.Fatalf("README walkthrough: the collector's block has %d commands, want 1", len(first))
	}
	collectorOut := background(expand(first[0].cmd))
	for _, want := range first[0].output {
		re := shape(r.Replace(strings.TrimPrefix(want, "level=INFO ")))
		eventuallyWithin(t, 30*time.Second, "the collector logs "+want, func() bool {
			for _, line := range strings.Split(collectorOut.String(), "\n") {
				if _, rest, ok := strings.Cut(line, "level=INFO "); ok && re.MatchString(rest) {
					return true
				}
			}
			return false
		})
	}

	// Terminal 2: the admin and the device.
	osSupported := true
	for _, step := range blocks[1] {
		args := expand(step.cmd)
		if step.background {
			background(args)
			// The walkthrough reads the fleet once the first report is in.
			eventuallyWithin(t, 60*time.Second, "the device's first report", func() bool {
				out, err := exec.Command(collectorBin, "devices", "list", "--data-dir", dataDir).Output()
				return err == nil && bytes.Count(out, []byte("\n")) == 2 && !bytes.Contains(out, []byte("never"))
			})
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		code := 0
		if exit, ok := err.(*exec.ExitError); ok {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", step.cmd, err)
		}
		printed := stdout.String() + stderr.String()
		switch {
		case strings.Contains(step.cmd, "token create"):
			vars["token"] = strings.TrimSpace(stdout.String())
		case strings.Contains(step.cmd, "posture-agent enroll"):
			m := regexp.MustCompile(`enrolled as device ([0-9a-f]+)`).FindStringSubmatch(printed)
			if m == nil {
				t.Fatalf("%s printed no device ID:\n%s", step.cmd, printed)
			}
			vars["device"] = m[1]
		case strings.Contains(step.cmd, "devices show"):
			// The walkthrough shows no output; the README's claims about
			// the checks rest on the OS check passing here.
			for _, line := range strings.Split(printed, "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "os_version" && f[1] != "pass" {
					osSupported = false
				}
			}
		}
		if code != step.exit {
			if !osSupported {
				t.Skipf("README walkthrough: this machine's OS is not one the walkthrough policy supports, so %q exits %d, not %d; the walkthrough's numbers are for a supported OS (Debian 12 in the README)", step.cmd, code, step.exit)
			}
			t.Fatalf("%s: exit %d, want %d as the README shows\n%s", step.cmd, code, step.exit, printed)
		}
		if len(step.output) > 0 {
			got, _, _ := strings.Cut(printed, "\n")
			if strings.Contains(step.cmd, "posture-agent enroll") {
				// The note about the TPM depends on the machine; the
				// enrollment line does not.
				got = lineWith(printed, "enrolled as device")
				step.output = []string{lineWith(strings.Join(step.output, "\n"), "enrolled as device")}
			}
			if re := shape(r.Replace(step.output[0])); !re.MatchString(got) {
				t.Errorf("%s printed\n%s\nwhose first line does not have the shape the README shows:\n%s", step.cmd, printed, step.output[0])
			}
		}
	}
}

// lineWith is the first line of text containing s.
func lineWith(text, s string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// splitShell splits a command line as a POSIX shell would for the
// walkthrough's commands: words separated by spaces, double quotes
// keeping spaces.
func splitShell(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord, quoted := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quoted {
		return nil, strconv.ErrSyntax
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}
