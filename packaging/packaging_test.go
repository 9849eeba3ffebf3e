// Package packaging holds the tests of what make package builds: the
// packages' contents, modes and metadata, their installation, upgrade,
// removal and purge on this machine, and the systemd units.
package packaging

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// dist is where make package put its output.
func dist(t *testing.T) string {
	t.Helper()
	d := os.Getenv("POSTURE_DIST")
	if d == "" {
		d = "../dist"
	}
	d, _ = filepath.Abs(d)
	if _, err := os.Stat(filepath.Join(d, "SHA256SUMS")); err != nil {
		missing(t, fmt.Sprintf("NO PACKAGES in %s (%v): run make package first (or set POSTURE_DIST)", d, err))
	}
	return d
}

func missing(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv(testtools.RequireEnv) == "1" {
		t.Fatal(msg)
	}
	t.Skipf("%s; set %s=1 to make this a failure", msg, testtools.RequireEnv)
}

// one returns the single file in dir matching pattern.
func one(t *testing.T, dir, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(m) != 1 {
		t.Fatalf("%s in %s: %d files, want 1: %v", pattern, dir, len(m), m)
	}
	return m[0]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	// A service it started that held on to the output pipe would keep
	// this waiting forever: fail instead.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// debArch and rpmArch are the package architectures of a Go GOARCH.
var (
	debArch = map[string]string{"amd64": "amd64", "arm64": "arm64"}
	rpmArch = map[string]string{"amd64": "x86_64", "arm64": "aarch64"}
)

// wantFile is a file a package must hold, with its mode.
type wantFile struct {
	path string
	mode string // as ls -l prints it
}

func agentFiles(rpm bool) []wantFile {
	unit := "/lib/systemd/system/posture-agent.service"
	zsh := "/usr/share/zsh/vendor-completions/_posture-agent"
	if rpm {
		unit, zsh = "/usr/lib/systemd/system/posture-agent.service", "/usr/share/zsh/site-functions/_posture-agent"
	}
	return []wantFile{
		{"/usr/bin/posture-agent", "-rwxr-xr-x"},
		{unit, "-rw-r--r--"},
		{"/etc/posture/agent.yaml", "-rw-r--r--"},
		{"/etc/xdg/autostart/posture-browser-cert.desktop", "-rw-r--r--"},
		{"/var/lib/posture-agent", "drwx------"},
		{"/usr/share/bash-completion/completions/posture-agent", "-rw-r--r--"},
		{zsh, "-rw-r--r--"},
		{"/usr/share/fish/vendor_completions.d/posture-agent.fish", "-rw-r--r--"},
		{"/usr/share/man/man1/posture-agent.1.gz", "-rw-r--r--"},
		{"/usr/share/man/man1/posture-agent-status.1.gz", "-rw-r--r--"},
	}
}

func collectorFiles(rpm bool) []wantFile {
	unit := "/lib/systemd/system/posture-collector.service"
	zsh := "/usr/share/zsh/vendor-completions/_posture-collector"
	if rpm {
		unit, zsh = "/usr/lib/systemd/system/posture-collector.service", "/usr/share/zsh/site-functions/_posture-collector"
	}
	return []wantFile{
		{"/usr/bin/posture-collector", "-rwxr-xr-x"},
		{unit, "-rw-r--r--"},
		{"/etc/posture/collector.yaml", "-rw-r-----"},
		{"/usr/share/bash-completion/completions/posture-collector", "-rw-r--r--"},
		{zsh, "-rw-r--r--"},
		{"/usr/share/fish/vendor_completions.d/posture-collector.fish", "-rw-r--r--"},
		{"/usr/share/man/man1/posture-collector.1.gz", "-rw-r--r--"},
		{"/usr/share/man/man1/posture-collector-backup.1.gz", "-rw-r--r--"},
	}
}

// TestPackageContents checks every package's files, modes and metadata
// with the distributions' own tools: dpkg-deb and rpm (Debian's rpm
// package).
func TestPackageContents(t *testing.T) {
	d := dist(t)
	dpkgDeb := testtools.Require(t, "dpkg-deb")
	rpmBin := testtools.Require(t, "rpm")
	check := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	check.Dir = d
	b, err := check.CombinedOutput()
	if err != nil {
		t.Fatalf("sha256sum --check: %v\n%s", err, b)
	}
	sums := string(b)
	if n := strings.Count(sums, ": OK"); n != 13 {
		t.Errorf("SHA256SUMS checks %d files, want 13 (4 deb, 4 rpm, 2 darwin, 2 windows .zip, 1 windows .msi):\n%s", n, sums)
	}
	if !regexp.MustCompile(`(?m)^posture-agent_\S+_windows_amd64\.msi: OK$`).MatchString(sums) {
		t.Errorf("SHA256SUMS does not cover the .msi:\n%s", sums)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		for product, files := range map[string]func(bool) []wantFile{"agent": agentFiles, "collector": collectorFiles} {
			name := "posture-" + product
			t.Run(name+"_deb_"+arch, func(t *testing.T) {
				deb := one(t, d, name+"_*_"+debArch[arch]+".deb")
				fields := run(t, dpkgDeb, "--field", deb, "Package", "Architecture", "Version", "Maintainer", "Homepage")
				for _, want := range []string{"Package: " + name, "Architecture: " + debArch[arch], "Homepage: https://github.com/posture-project/posture"} {
					if !strings.Contains(fields, want) {
						t.Errorf("control lacks %q:\n%s", want, fields)
					}
				}
				listing := run(t, dpkgDeb, "--contents", deb)
				for _, f := range files(false) {
					if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(f.mode) + ` \S+ +\d+ \S+ \S+ \.` + regexp.QuoteMeta(f.path) + `/?$`).MatchString(listing) {
						t.Errorf("%s: no %s with mode %s:\n%s", filepath.Base(deb), f.path, f.mode, listing)
					}
				}
				control := t.TempDir()
				run(t, dpkgDeb, "--control", deb, control)
				if _, err := os.Stat(filepath.Join(control, "conffiles")); err != nil {
					t.Errorf("no conffiles: the configuration file is not marked as one")
				} else if c, _ := os.ReadFile(filepath.Join(control, "conffiles")); !strings.Contains(string(c), "/etc/posture/"+product+".yaml") {
					t.Errorf("conffiles: %s", c)
				}
				for _, s := range []string{"postinst", "prerm", "postrm"} {
					if fi, err := os.Stat(filepath.Join(control, s)); err != nil || fi.Mode().Perm()&0o111 == 0 {
						t.Errorf("maintainer script %s: %v", s, err)
					}
				}
				if product == "collector" {
					if _, err := os.Stat(filepath.Join(control, "preinst")); err != nil {
						t.Errorf("no preinst creating the collector's user: %v", err)
					}
				}
			})
			t.Run(name+"_rpm_"+arch, func(t *testing.T) {
				rpm := one(t, d, name+"-*."+rpmArch[arch]+".rpm")
				info := run(t, rpmBin, "-qp", "--queryformat", "%{NAME} %{ARCH} %{LICENSE}\n", rpm)
				if want := name + " " + rpmArch[arch] + " Apache-2.0"; !strings.Contains(info, want) {
					t.Errorf("rpm says %q, want %q", info, want)
				}
				listing := run(t, rpmBin, "-qlvp", rpm)
				for _, f := range files(true) {
					if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(f.mode) + ` .* ` + regexp.QuoteMeta(f.path) + `$`).MatchString(listing) {
						t.Errorf("%s: no %s with mode %s:\n%s", filepath.Base(rpm), f.path, f.mode, listing)
					}
				}
				if cfg := run(t, rpmBin, "-qcp", rpm); !strings.Contains(cfg, "/etc/posture/"+product+".yaml") {
					t.Errorf("the configuration file is not marked as one: %s", cfg)
				}
				if scripts := run(t, rpmBin, "-qp", "--scripts", rpm); !strings.Contains(scripts, "postinstall scriptlet") || !strings.Contains(scripts, "preuninstall scriptlet") {
					t.Errorf("scriptlets missing:\n%s", scripts)
				}
			})
		}
		t.Run("darwin_"+arch, func(t *testing.T) {
			names := tarNames(t, one(t, d, "posture-agent_*_darwin_"+arch+".tar.gz"))
			for _, want := range []string{"/posture-agent", "/posture-agent.plist", "/LICENSE", "/agent.yaml", "/completions/_posture-agent", "/man/man1/posture-agent.1.gz"} {
				if !hasSuffix(names, want) {
					t.Errorf("no %s in %v", want, names)
				}
			}
		})
		t.Run("windows_"+arch, func(t *testing.T) {
			z, err := zip.OpenReader(one(t, d, "posture-agent_*_windows_"+arch+".zip"))
			if err != nil {
				t.Fatal(err)
			}
			defer z.Close()
			var names []string
			for _, f := range z.File {
				names = append(names, f.Name)
			}
			for _, want := range []string{"/posture-agent.exe", "/LICENSE", "/agent.yaml"} {
				if !hasSuffix(names, want) {
					t.Errorf("no %s in %v", want, names)
				}
			}
		})
	}
}

func hasSuffix(names []string, s string) bool {
	for _, n := range names {
		if strings.HasSuffix(n, s) {
			return true
		}
	}
	return false
}

func tarNames(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "" || strings.Contains(h.Name, "..") {
			t.Errorf("bad entry %q", h.Name)
		}
		names = append(names, h.Name)
	}
}

// TestSystemdUnits checks the units with systemd-analyze, which works
// without systemd running: both verify, and the collector's exposure is
// at most 2.0 ("OK").
func TestSystemdUnits(t *testing.T) {
	analyze := testtools.Require(t, "systemd-analyze")
	dir := t.TempDir()
	// verify wants the binaries to exist: a stand-in at a path of the test's.
	stub := filepath.Join(dir, "stub")
	os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755)
	for _, unit := range []string{"posture-collector.service", "posture-agent.service"} {
		data, err := os.ReadFile(filepath.Join("systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		text := regexp.MustCompile(`/usr/bin/posture-(agent|collector)`).ReplaceAllString(string(data), stub)
		p := filepath.Join(dir, unit)
		os.WriteFile(p, []byte(text), 0o644)
		cmd := exec.Command(analyze, "verify", "--man=no", p)
		if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
	}
	out, err := exec.Command(analyze, "security", "--offline=true", filepath.Join(dir, "posture-collector.service")).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for posture-collector.service: ([0-9.]+) (\w+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("posture-collector.service exposure: %s %s", m[1], m[2])
	if score > 2.0 {
		t.Errorf("exposure %.1f %s, want at most 2.0:\n%s", score, m[2], out)
	}
	unit, _ := os.ReadFile("systemd/posture-collector.service")
	for _, want := range []string{"User=posture-collector", "StateDirectory=posture-collector", "CapabilityBoundingSet=\n", "ProtectSystem=strict",
		"ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("collector unit lacks %q", want)
		}
	}
}

// installed is the machine's state the package test starts from and
// leaves: no trace of either package.
func cleanMachine(t *testing.T) {
	exec.Command("dpkg", "--purge", "posture-agent", "posture-collector").Run()
	if _, err := os.Stat("/etc/init.d/posture-agent"); err == nil {
		exec.Command("/etc/init.d/posture-agent", "stop").Run()
	}
	links, _ := filepath.Glob("/etc/rc?.d/*posture-agent")
	for _, p := range append(links, "/etc/init.d/posture-agent", "/var/run/posture-agent.pid", "/var/log/posture-agent.log") {
		os.Remove(p)
	}
	for _, p := range []string{"/var/lib/posture-agent", "/var/lib/posture-collector", "/etc/posture"} {
		os.RemoveAll(p)
	}
	exec.Command("userdel", "posture-collector").Run()
	exec.Command("groupdel", "posture-collector").Run()
}

// TestDebInstallUpgradeRemovePurge installs the .deb packages on this
// machine with dpkg, as root and without systemd running (CI's): files,
// modes, the collector's user and directory, a collector run as that user,
// an agent enrolled with it and running under System V init; an upgrade
// keeps its identity and runs it again; dpkg -r leaves the state and
// configuration, dpkg -P nothing.
func TestDebInstallUpgradeRemovePurge(t *testing.T) {
	d := dist(t)
	testtools.RequireSystemTests(t)
	testtools.Require(t, "dpkg")
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("no packages for %s", runtime.GOARCH)
	}
	if testtools.SystemdRunning() {
		t.Skip("systemd runs here: this test installs the packages where it does not (CI); the maintainer scripts would start the services")
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "posture-agent").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("posture-agent is installed on this machine already; remove it first (dpkg -P posture-agent)")
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "posture-collector").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("posture-collector is installed on this machine already; remove it first (dpkg -P posture-collector)")
	}
	cleanMachine(t)
	t.Cleanup(func() { cleanMachine(t) })
	arch := debArch[runtime.GOARCH]
	collectorDeb := one(t, d, "posture-collector_*_"+arch+".deb")
	agentDeb := one(t, d, "posture-agent_*_"+arch+".deb")

	// The collector.
	run(t, "dpkg", "-i", collectorDeb)
	checkModes(t, collectorFiles(false))
	pw := run(t, "getent", "passwd", "posture-collector")
	if f := strings.Split(strings.TrimSpace(pw), ":"); len(f) < 7 || !strings.HasSuffix(f[6], "nologin") || f[5] != "/var/lib/posture-collector" {
		t.Errorf("posture-collector user: %s", pw)
	} else if uid, _ := strconv.Atoi(f[2]); uid >= 1000 {
		t.Errorf("posture-collector is not a system user (uid %d)", uid)
	}
	checkOwner(t, "/var/lib/posture-collector", "posture-collector", "drwx------")
	checkOwner(t, "/etc/posture/collector.yaml", "root:posture-collector", "-rw-r-----")
	if out := run(t, "posture-collector", "--version"); !strings.HasPrefix(out, "posture-collector ") {
		t.Errorf("posture-collector --version: %q", out)
	}
	// Run as its user, on the packaged data directory and configuration
	// (readable by the user), as the unit would.
	u, err := user.Lookup("posture-collector")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	collector := exec.Command("/usr/bin/posture-collector", "run", "--listen", "127.0.0.1:0")
	collector.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	collector.WaitDelay = 5 * time.Second
	clog, err := os.Create(filepath.Join(t.TempDir(), "collector.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer clog.Close()
	collector.Stdout, collector.Stderr = clog, clog
	if err := collector.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { collector.Process.Kill(); collector.Wait() })
	var token string
	eventually(t, "the collector answering on its admin socket (its log: "+clog.Name()+")", func() bool {
		out, err := exec.Command("posture-collector", "token", "create", "--ttl", "10m").Output()
		token = strings.TrimSpace(string(out))
		return err == nil && strings.HasPrefix(token, "PT1.")
	})
	checkOwner(t, "/var/lib/posture-collector/ca.key", "posture-collector", "-rw-------")

	// The agent: installed, its service installed under System V init by
	// the package, stopped until enrolled.
	out := run(t, "dpkg", "-i", agentDeb)
	if !strings.Contains(out, "not enrolled yet") {
		t.Errorf("dpkg -i does not say how to enroll:\n%s", out)
	}
	checkModes(t, agentFiles(false))
	if _, err := os.Stat("/etc/init.d/posture-agent"); err != nil {
		t.Errorf("the package did not install the System V service: %v", err)
	}
	if out, code := status(t); code != 3 || !strings.Contains(out, "stopped (unix-systemv)") || !strings.Contains(out, "enrolled:  no") {
		t.Errorf("posture-agent status after install: exit %d\n%s", code, out)
	}
	// Report every 2 s: through the configuration file, which an upgrade
	// must keep.
	if err := os.WriteFile("/etc/posture/agent.yaml", []byte("interval: 2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "posture-agent", "enroll", "--token", token, "--identity", "software")
	run(t, "posture-agent", "start")
	id := deviceID(t)
	waitAcked(t, id, 1)

	// An upgrade to a newer build keeps the identity and runs the agent again.
	newer := newerAgentDeb(t, d, arch)
	run(t, "dpkg", "-i", newer)
	if got := deviceID(t); got != id {
		t.Errorf("the upgrade changed the device ID from %s to %s", id, got)
	}
	if out := run(t, "posture-agent", "--version"); !strings.Contains(out, "99.0.0") {
		t.Errorf("after the upgrade: %s", out)
	}
	if cfg, _ := os.ReadFile("/etc/posture/agent.yaml"); string(cfg) != "interval: 2s\n" {
		t.Errorf("the upgrade replaced the changed configuration file: %q", cfg)
	}
	seq := waitAcked(t, id, 1)
	waitAcked(t, id, seq+1) // reporting again, on the same chain

	// Remove: the service goes, the state and configuration stay.
	pid := agentPID(t)
	run(t, "dpkg", "-r", "posture-agent")
	if pid > 0 && processRuns(pid) {
		t.Errorf("the agent (pid %d) still runs after dpkg -r", pid)
	}
	links, _ := filepath.Glob("/etc/rc?.d/*posture-agent")
	for _, p := range append(links, "/usr/bin/posture-agent", "/etc/init.d/posture-agent", "/var/run/posture-agent.pid", "/var/log/posture-agent.log") {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after dpkg -r", p)
		}
	}
	for _, p := range []string{"/var/lib/posture-agent/agent.json", "/var/lib/posture-agent/identity.key", "/etc/posture/agent.yaml"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dpkg -r removed %s, which stays until purge: %v", p, err)
		}
	}
	run(t, "dpkg", "-P", "posture-agent")
	for _, p := range []string{"/var/lib/posture-agent", "/etc/posture/agent.yaml"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after dpkg -P", p)
		}
	}

	collector.Process.Kill()
	collector.Wait()
	run(t, "dpkg", "-r", "posture-collector")
	for _, p := range []string{"/var/lib/posture-collector/ca.key", "/var/lib/posture-collector/posture.db", "/etc/posture/collector.yaml"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dpkg -r removed %s, which stays until purge: %v", p, err)
		}
	}
	run(t, "dpkg", "-P", "posture-collector")
	for _, p := range []string{"/var/lib/posture-collector", "/etc/posture", "/usr/bin/posture-collector", "/lib/systemd/system/posture-collector.service"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after dpkg -P", p)
		}
	}
	if err := exec.Command("getent", "passwd", "posture-collector").Run(); err == nil {
		t.Error("the posture-collector user is left after dpkg -P")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func status(t *testing.T) (string, int) {
	t.Helper()
	out, err := exec.Command("posture-agent", "status").CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

type agentStatus struct {
	Service struct {
		State string `json:"state"`
		PID   int    `json:"pid"`
	} `json:"service"`
	DeviceID string `json:"device_id"`
	Seq      uint64 `json:"last_acknowledged_seq"`
}

func statusJSON(t *testing.T) agentStatus {
	t.Helper()
	cmd := exec.Command("posture-agent", "status", "-o", "json")
	cmd.WaitDelay = 10 * time.Second
	out, _ := cmd.Output()
	var st agentStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	return st
}

func deviceID(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/var/lib/posture-agent/agent.json")
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		DeviceID string `json:"device_id"`
	}
	json.Unmarshal(data, &e)
	return e.DeviceID
}

// waitAcked waits until the running agent has a report at least seq
// acknowledged, and returns its sequence number.
func waitAcked(t *testing.T, id string, seq uint64) uint64 {
	t.Helper()
	var st agentStatus
	eventually(t, fmt.Sprintf("device %s running with report %d acknowledged", id, seq), func() bool {
		st = statusJSON(t)
		return st.Service.State == "running" && st.DeviceID == id && st.Seq >= seq
	})
	return st.Seq
}

func agentPID(t *testing.T) int {
	return statusJSON(t).Service.PID
}

func processRuns(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(stat), ") Z")
}

// newerAgentDeb builds the agent's .deb again as version 99.0.0, from a
// binary that says so, as the next release would be.
func newerAgentDeb(t *testing.T, d, arch string) string {
	t.Helper()
	build := t.TempDir()
	bin := filepath.Join(build, "linux-"+runtime.GOARCH, "posture-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X github.com/posture-project/posture/internal/version.version=99.0.0", "-o", bin, "github.com/posture-project/posture/agent/cmd/posture-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	if err := os.Symlink(filepath.Join(d, "build", "share"), filepath.Join(build, "share")); err != nil {
		t.Fatal(err)
	}
	tool := "../bin/tools/posture-package"
	if _, err := os.Stat(tool); err != nil {
		missing(t, "NO PACKAGING PROGRAM at "+tool+": make package builds it")
	}
	out := t.TempDir()
	run(t, tool, "--top", "..", "--build", build, "--out", out, "--version", "99.0.0", "--linux", runtime.GOARCH, "--only", "deb", "--products", "agent")
	return one(t, out, "posture-agent_99.0.0*_"+arch+".deb")
}

func checkModes(t *testing.T, files []wantFile) {
	t.Helper()
	for _, f := range files {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if got := fi.Mode().String(); got != f.mode {
			t.Errorf("%s: mode %s, want %s", f.path, got, f.mode)
		}
	}
}

// checkOwner checks a file's owner (user, or user:group) and mode.
func checkOwner(t *testing.T, path, owner, mode string) {
	t.Helper()
	format := "%U %A"
	if strings.Contains(owner, ":") {
		format = "%U:%G %A"
	}
	out := strings.TrimSpace(run(t, "stat", "-c", format, path))
	if want := owner + " " + mode; out != want {
		t.Errorf("%s: %s, want %s", path, out, want)
	}
}
