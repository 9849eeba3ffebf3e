package signals

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/testing/protocmp"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The firewall reads the ruleset the way the kernel hands it over netlink.
// These tests load the captured rulesets into a kernel, each in a network
// namespace of its own (which needs root, as loading rules does), and read
// them back with the agent's netlink code.

// netnsRuleset loads an nft ruleset into a new network namespace and
// returns a reader of that namespace's ruleset over netlink. It needs nft
// (Debian package nftables), unshare and root; without them the test is
// skipped, or fails with POSTURE_REQUIRE_TOOLS=1.
func netnsRuleset(t *testing.T, ruleset string) func() ([]nftChain, error) {
	t.Helper()
	nft := requireTool(t, "nft")
	unshare := requireTool(t, "unshare")
	if os.Geteuid() != 0 {
		missingPrivilege(t, "loading nftables rules into a network namespace needs root")
	}
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(ruleset), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--net", "--", "sh", "-c", `"$0" -f "$1" && echo ready && exec sleep 600`, nft, file)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			cmd.Wait()
			if strings.Contains(stderr.String(), "unshare failed") {
				missingPrivilege(t, "cannot create a network namespace: "+stderr.String())
			}
			t.Fatalf("load the ruleset into a network namespace: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("loading the ruleset did not finish: %s", stderr.String())
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() ([]nftChain, error) {
		conn, err := nftables.New(nftables.WithNetNSFd(fd))
		if err != nil {
			return nil, err
		}
		return readNftablesFrom(conn)
	}
}

// missingPrivilege skips a test that needs what this machine does not
// give, or fails it with POSTURE_REQUIRE_TOOLS=1.
func missingPrivilege(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("POSTURE_REQUIRE_TOOLS") == "1" {
		t.Fatal(msg + " (POSTURE_REQUIRE_TOOLS=1)")
	}
	t.Skip("SKIPPED CHECK: " + msg)
}

// loadableCapture is a captured ruleset as nft can load it again. nft
// cannot load the "xt match" expressions iptables-nft left in ufw's IPv6
// chains (ICMPv6 rules of chains no hook calls directly), so those rules
// are left out; they decide nothing the firewall reads.
func loadableCapture(t *testing.T, file string) string {
	t.Helper()
	var b strings.Builder
	for line := range strings.Lines(fixtureText(t, "firewall/"+file)) {
		if !strings.Contains(line, " xt match ") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// Every captured ruleset, loaded into a kernel and read back over netlink,
// gives the verdict the capture shows, and the verdict of the ruleset
// built by hand for the tests that run without root (nftRulesets).
func TestNftablesKernel(t *testing.T) {
	for _, tt := range nftVerdicts {
		t.Run(tt.file, func(t *testing.T) {
			chains, err := netnsRuleset(t, loadableCapture(t, tt.file))()
			if err != nil {
				t.Fatalf("read the ruleset over netlink: %v", err)
			}
			checkVerdict(t, chains, tt)
		})
	}
}

// The last rule of an input chain drops everything only when nothing but
// counting and logging comes before the drop or reject, in the forms nft
// writes them into the kernel.
func TestDropsEverythingKernel(t *testing.T) {
	tests := map[string]bool{
		"drop":                                  true,
		"reject":                                true,
		"counter reject":                        true,
		"reject with icmp admin-prohibited":     true,
		`log prefix "denied: " level info drop`: true,
		"counter log drop":                      true,
		"tcp dport 22 drop":                     false,
		"ct state invalid drop":                 false,
		"accept":                                false,
		"limit rate 3/minute drop":              false,
	}
	for rule, want := range tests {
		t.Run(rule, func(t *testing.T) {
			text := "table ip t {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\t" + rule + "\n\t}\n}\n"
			chains, err := netnsRuleset(t, text)()
			if err != nil {
				t.Fatalf("read the ruleset over netlink: %v", err)
			}
			rs := ruleset{chains: map[string]bool{}, tables: map[string]bool{}}
			judgeNftables(chains, &rs)
			if rs.v4Drop != want {
				t.Errorf("an input chain ending in %q drops everything: %v, want %v", rule, rs.v4Drop, want)
			}
		})
	}
}

// The whole firewall measurement, on rulesets read from a kernel.
func TestFirewallKernel(t *testing.T) {
	on := func(product string) *posturev1.Firewall {
		return &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, Product: product}
	}
	tests := []struct {
		capture string
		files   map[string]string
		want    *posturev1.Firewall
	}{
		{"nft-ufw-active.stdout.txt", map[string]string{"proc/net/if_inet6": ifInet6, "usr/sbin/ufw": "",
			"etc/ufw/ufw.conf": "@testdata/firewall/ufw.conf-enabled"}, on("ufw")},
		{"nft-inet-drop.stdout.txt", map[string]string{"proc/net/if_inet6": ifInet6}, on("nftables")},
		{"nft-firewalld.stdout.txt", map[string]string{"proc/net/if_inet6": ifInet6}, on("firewalld")},
		{"nft-ip-reject-only.stdout.txt", map[string]string{"proc/net/if_inet6": ifInet6},
			&posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""),
				Detail: "nftables drops inbound IPv4 by default but accepts IPv6"}},
	}
	for _, tt := range tests {
		t.Run(tt.capture, func(t *testing.T) {
			c := New(Options{Root: fakeRoot(t, tt.files), Runner: newFakeRunner(t, nil), Now: fixedNow,
				SystemBus: "unix:path=/nonexistent/system_bus_socket"})
			c.sys.nftables = netnsRuleset(t, loadableCapture(t, tt.capture))
			if diff := cmp.Diff(tt.want, c.firewall(context.Background()), protocmp.Transform()); diff != "" {
				t.Errorf("firewall (-want +got):\n%s", diff)
			}
		})
	}
}

// Without CAP_NET_ADMIN the kernel refuses the netlink request, and the
// firewall says that it needs root. Run as root, the test runs itself again
// as nobody to see the kernel's answer.
func TestNftablesNeedsRoot(t *testing.T) {
	if os.Getenv("POSTURE_TEST_UNPRIVILEGED") == "1" || os.Geteuid() != 0 {
		c := New(Options{Root: t.TempDir(), Runner: newFakeRunner(t, nil), Now: fixedNow,
			SystemBus: "unix:path=/nonexistent/system_bus_socket"})
		got := c.firewall(context.Background())
		want := &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			"needs root to read the nftables ruleset (netlink: operation not permitted)")}
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("firewall without root (-want +got):\n%s", diff)
		}
		return
	}
	setpriv := requireTool(t, "setpriv")
	// nobody must be able to run the test binary, which lives in a private
	// directory of the go tool.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "unprivileged")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "signals.test")
	if err := copyFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
		bin, "-test.run=^TestNftablesNeedsRoot$", "-test.v", "-test.count=1")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "POSTURE_TEST_UNPRIVILEGED=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestNftablesNeedsRoot") {
		t.Errorf("the test as nobody: %v\n%s", err, out)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
