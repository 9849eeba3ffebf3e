//go:build cgo

// The System V round trip enrolls with a real collector, whose SQLite
// store needs cgo; make cross vets the agent without it.

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// TestServiceRoundTripSystemV installs, starts, stops and uninstalls the
// agent's service under System V init, which kardianos/service picks on a
// machine without systemd (CI's): every step must tell the truth, and
// nothing of the service may be left afterwards.
func TestServiceRoundTripSystemV(t *testing.T) {
	testtools.RequireSystemTests(t)
	if testtools.SystemdRunning() {
		t.Skip("systemd is the init system here; this test is for System V init")
	}
	if _, err := os.Stat(sysvInitScript); err == nil {
		t.Fatalf("a posture-agent service is installed on this machine already (%s): remove it first (posture-agent uninstall)", sysvInitScript)
	}
	bin := filepath.Join(t.TempDir(), "posture-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// A configuration file of its own, so that one on this machine
	// changes nothing.
	config := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(config, []byte("# defaults\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	agentCmd := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "POSTURE_AGENT_CONFIG="+config)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	t.Cleanup(func() {
		agentCmd("uninstall")
		assertNothingLeft(t, bin)
	})
	stateDir := filepath.Join(t.TempDir(), "agent")

	// Not installed.
	if out, code := agentCmd("status", "--state-dir", stateDir); code != 4 || !strings.Contains(out, "not installed (unix-systemv)") {
		t.Fatalf("status before install: exit %d\n%s", code, out)
	}
	if out, code := agentCmd("start"); code != 1 || !strings.Contains(out, "not installed") {
		t.Fatalf("start before install: exit %d\n%s", code, out)
	}
	// Installed but not enrolled: the agent stops at once, and start says so.
	if out, code := agentCmd("install", "--state-dir", stateDir, "--interval", "1s", "--start"); code != 1 || !strings.Contains(out, "did not keep running") || !strings.Contains(out, "not enrolled") {
		t.Fatalf("install --start without an enrollment: exit %d\n%s", code, out)
	}
	script, err := os.ReadFile(sysvInitScript)
	if err != nil || !strings.Contains(string(script), `cmd="`+bin+` run --state-dir `+stateDir+` --interval 1s"`) {
		t.Fatalf("init script does not run the binary that installed it with its flags (%v):\n%s", err, script)
	}
	if out, code := agentCmd("status"); code != 1 || !strings.Contains(out, "failing (unix-systemv)") || !strings.Contains(out, "not enrolled") {
		t.Fatalf("status of an agent that stopped at once: exit %d\n%s", code, out)
	}

	// Enrolled: install again (nothing to do), start, and it runs and reports.
	token := startCollectorForService(t)
	if out, code := agentCmd("install", "--state-dir", stateDir, "--interval", "1s", "--token", token, "--identity", "software", "--start"); code != 0 || !strings.Contains(out, "already installed") || !strings.Contains(out, "running (pid") {
		t.Fatalf("install --token --start: exit %d\n%s", code, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := agentCmd("status") // the state directory comes from the installed script
		// What the collector decided, as its acknowledgements said.
		if code == 0 && strings.Contains(out, "running (unix-systemv), pid") && strings.Contains(out, "enrolled:  as device") && strings.Contains(out, "last acknowledged: seq") &&
			strings.Contains(out, "decision:  score ") && strings.Contains(out, "level basic: ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed a running agent with an acknowledged report: exit %d\n%s", code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pid := runningPID(t)

	if out, code := agentCmd("stop"); code != 0 || !strings.Contains(out, "stopped") {
		t.Fatalf("stop: exit %d\n%s", code, out)
	}
	if processAlive(pid) {
		t.Fatalf("agent pid %d still runs after stop", pid)
	}
	if out, code := agentCmd("status"); code != 3 || !strings.Contains(out, "stopped (unix-systemv)") {
		t.Fatalf("status after stop: exit %d\n%s", code, out)
	}
	if out, code := agentCmd("stop"); code != 0 || !strings.Contains(out, "not running") {
		t.Fatalf("stop when stopped: exit %d\n%s", code, out)
	}

	// Uninstall while it runs: it stops first and leaves nothing behind.
	if out, code := agentCmd("start"); code != 0 {
		t.Fatalf("start: exit %d\n%s", code, out)
	}
	pid = runningPID(t)
	// What assertNothingLeft looks for finds the running service.
	if out, _ := exec.Command("pgrep", "-f", bin+" run").Output(); !slices.Contains(strings.Fields(string(out)), strconv.Itoa(pid)) {
		t.Fatalf("pgrep -f '%s run' finds %q, not the service's pid %d", bin, out, pid)
	}
	if out, code := agentCmd("uninstall"); code != 0 || !strings.Contains(out, "stopped and uninstalled") {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	if processAlive(pid) {
		t.Fatalf("agent pid %d still runs after uninstall", pid)
	}
	assertNothingLeft(t, bin)
	if out, code := agentCmd("status"); code != 4 || !strings.Contains(out, "not installed") {
		t.Fatalf("status after uninstall: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "agent.json")); err != nil {
		t.Errorf("uninstall removed the enrollment: %v", err)
	}
	if out, code := agentCmd("uninstall"); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("uninstall when not installed: exit %d\n%s", code, out)
	}
}

func runningPID(t *testing.T) int {
	t.Helper()
	st := sysvState(serviceState{})
	if st.State != Running {
		t.Fatalf("service is %s, want running (%s)", st.State, st.Why)
	}
	return st.PID
}

// assertNothingLeft fails when anything of the System V service remains,
// a process of bin (the service's binary) included. Agents of other
// binaries (other tests running beside this one) are not its business.
func assertNothingLeft(t *testing.T, bin string) {
	t.Helper()
	left, _ := filepath.Glob("/etc/rc?.d/*posture-agent")
	for _, p := range []string{sysvInitScript, sysvPIDFile, sysvLogFile} {
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	if len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if out, err := exec.Command("pgrep", "-f", bin+" run").Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			if st, _ := os.ReadFile("/proc/" + pid + "/stat"); !strings.Contains(string(st), ") Z") {
				t.Errorf("an agent still runs: pid %s", pid)
			}
		}
	}
}

// startCollectorForService runs a collector in this process for the
// service's agent to enroll with, and returns a token.
func startCollectorForService(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	c, err := collector.New(collector.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := collector.DialAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := posturev1.NewAdminServiceClient(conn).CreateEnrollmentToken(ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetToken()
}
