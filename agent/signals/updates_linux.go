package signals

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// aptCheckPath is Ubuntu's update-notifier helper; it applies the same
// security classification as the desktop update notifications.
const aptCheckPath = "/usr/lib/update-notifier/apt-check"

// updateCheck asks one package manager how many updates are pending.
type updateCheck func(ctx context.Context) (pending, security uint32, err error)

func (c *Collector) measureUpdates(ctx context.Context) *posturev1.Updates {
	observed := c.now()
	manager, check := c.updateManager()
	if check == nil {
		return &posturev1.Updates{Meta: metaAt(observed, posturev1.Status_STATUS_UNAVAILABLE,
			"no supported package manager (apt, dnf, zypper) found")}
	}
	pending, security, err := check(ctx)
	if err != nil {
		return &posturev1.Updates{Meta: metaAt(observed, posturev1.Status_STATUS_ERROR, err.Error()), Manager: manager}
	}
	return &posturev1.Updates{
		Meta:            metaAt(observed, posturev1.Status_STATUS_OK, ""),
		Manager:         manager,
		Pending:         pending,
		SecurityPending: security,
		RebootRequired:  c.rebootRequired(),
	}
}

// updateManager picks the package manager by which binary is installed.
func (c *Collector) updateManager() (string, updateCheck) {
	switch {
	case exists(c.path(aptCheckPath)):
		return "apt", c.aptCheck
	case c.hasCommand("apt-get"):
		return "apt", c.aptGetSimulate
	case c.hasCommand("dnf"):
		return "dnf", c.dnfCheckUpdate
	case c.hasCommand("zypper"):
		return "zypper", c.zypperUpdates
	}
	return "", nil
}

func (c *Collector) hasCommand(name string) bool {
	for _, dir := range []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin"} {
		if st, err := os.Stat(c.path(filepath.Join(dir, name))); err == nil && !st.IsDir() {
			return true
		}
	}
	if c.root == "/" {
		_, err := exec.LookPath(name)
		return err == nil
	}
	return false
}

// aptCheck runs apt-check, which prints "pending;security" on stderr.
func (c *Collector) aptCheck(ctx context.Context) (pending, security uint32, err error) {
	stdout, stderr, code, err := c.run(ctx, aptCheckPath)
	if err != nil {
		return 0, 0, err
	}
	if code != 0 {
		return 0, 0, commandError(aptCheckPath, nil, code, stderr, stdout)
	}
	return parseAptCheck(stderr)
}

func parseAptCheck(b []byte) (pending, security uint32, err error) {
	found := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		a, s, ok := strings.Cut(strings.TrimSpace(sc.Text()), ";")
		if !ok {
			continue
		}
		p, err1 := strconv.ParseUint(a, 10, 32)
		q, err2 := strconv.ParseUint(s, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		// The last such line wins: warnings may precede it.
		pending, security, found = uint32(p), uint32(q), true
	}
	if !found {
		return 0, 0, fmt.Errorf("apt-check printed no \"updates;security\" line: %q", firstLine(b))
	}
	return pending, security, nil
}

// aptGetSimulate counts the packages a dist-upgrade would install. A
// simulation needs no root and takes no lock.
func (c *Collector) aptGetSimulate(ctx context.Context) (pending, security uint32, err error) {
	args := []string{"-s", "dist-upgrade"}
	stdout, stderr, code, err := c.run(ctx, "apt-get", args...)
	if err != nil {
		return 0, 0, err
	}
	if code != 0 {
		return 0, 0, commandError("apt-get", args, code, stderr, stdout)
	}
	return parseAptSimulate(stdout)
}

// parseAptSimulate reads apt-get -s output. Each package to install is one
// line "Inst name [old] (new origin, origin [arch])"; the security archive's
// origin ends in "-security" ("Debian-Security:12/stable-security",
// "Ubuntu:24.04/noble-security").
func parseAptSimulate(b []byte) (pending, security uint32, err error) {
	summary := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "Inst ")
		if !ok {
			// "0 upgraded, 0 newly installed, ..." shows the output was
			// understood even when nothing is pending.
			summary = summary || (strings.Contains(line, " upgraded, ") && strings.Contains(line, " newly installed"))
			continue
		}
		pending++
		if _, origin, ok := strings.Cut(rest, " ("); ok && strings.Contains(origin, "-security") {
			security++
		}
	}
	if !summary {
		return 0, 0, fmt.Errorf("apt-get -s dist-upgrade printed no summary line; output starts %q", firstLine(b))
	}
	return pending, security, nil
}

// dnfCheckUpdate runs check-update twice: all updates, then security ones.
func (c *Collector) dnfCheckUpdate(ctx context.Context) (pending, security uint32, err error) {
	pending, err = c.dnfCount(ctx, "-q", "check-update")
	if err != nil {
		return 0, 0, err
	}
	security, err = c.dnfCount(ctx, "-q", "check-update", "--security")
	if err != nil {
		return 0, 0, err
	}
	return pending, security, nil
}

// dnfCount runs dnf check-update: exit 0 means nothing pending, 100 means
// the updates are listed on stdout, anything else is a failure.
func (c *Collector) dnfCount(ctx context.Context, args ...string) (uint32, error) {
	stdout, stderr, code, err := c.run(ctx, "dnf", args...)
	if err != nil {
		return 0, err
	}
	switch code {
	case 0:
		return 0, nil
	case 100:
		n := countDNFUpdates(stdout)
		if n == 0 {
			return 0, fmt.Errorf("%s reported updates (exit 100) but listed none in a known format; output starts %q",
				commandLine("dnf", args), firstLine(stdout))
		}
		return n, nil
	}
	return 0, commandError("dnf", args, code, stderr, stdout)
}

// countDNFUpdates counts "name.arch version repo" lines. dnf 4 wraps a long
// name onto its own line and indents the rest; the list ends where
// "Obsoleting Packages" begins.
func countDNFUpdates(b []byte) uint32 {
	var n uint32
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Obsoleting") {
			break
		}
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		f := strings.Fields(line)
		if strings.Contains(f[0], ".") && (len(f) == 3 || len(f) == 1) {
			n++
		}
	}
	return n
}

// zypperUpdates counts package updates, and security patches: SUSE marks
// security fixes on patches, not on packages.
func (c *Collector) zypperUpdates(ctx context.Context) (pending, security uint32, err error) {
	updates, err := c.zypperXML(ctx, "list-updates")
	if err != nil {
		return 0, 0, err
	}
	patches, err := c.zypperXML(ctx, "list-patches")
	if err != nil {
		return 0, 0, err
	}
	for _, u := range updates {
		if u.Kind == "package" {
			pending++
		}
	}
	for _, p := range patches {
		if p.Kind == "patch" && p.Category == "security" && (p.Status == "" || p.Status == "needed") {
			security++
		}
	}
	return pending, security, nil
}

// zypperStream is the part of zypper's --xmlout output the agent reads.
type zypperStream struct {
	Messages []struct {
		Type string `xml:"type,attr"`
		Text string `xml:",chardata"`
	} `xml:"message"`
	Updates []zypperUpdate `xml:"update-status>update-list>update"`
}

type zypperUpdate struct {
	Kind     string `xml:"kind,attr"`
	Category string `xml:"category,attr"`
	Status   string `xml:"status,attr"`
}

// zypperOK lists the exit codes that zypper(8) documents as informational
// (100 updates, 101 security updates, 102 reboot needed, 103 restart of
// zypper needed, 106 some repositories skipped) rather than failures.
var zypperOK = map[int]bool{0: true, 100: true, 101: true, 102: true, 103: true, 106: true}

func (c *Collector) zypperXML(ctx context.Context, command string) ([]zypperUpdate, error) {
	args := []string{"--non-interactive", "--xmlout", command}
	stdout, stderr, code, err := c.run(ctx, "zypper", args...)
	if err != nil {
		return nil, err
	}
	var s zypperStream
	xmlErr := xml.Unmarshal(stdout, &s)
	if !zypperOK[code] {
		// zypper writes its errors into the XML stream, not to stderr.
		for _, m := range s.Messages {
			if m.Type == "error" {
				return nil, fmt.Errorf("%s exited with status %d: %s", commandLine("zypper", args), code, firstLine([]byte(m.Text)))
			}
		}
		return nil, commandError("zypper", args, code, stderr, stdout)
	}
	if xmlErr != nil {
		return nil, fmt.Errorf("parse output of %s: %w", commandLine("zypper", args), xmlErr)
	}
	return s.Updates, nil
}

// rebootRequired reports whether installed updates wait for a reboot:
// Debian and Ubuntu packages create /run/reboot-required; elsewhere a
// kernel newer than the running one is installed in /lib/modules.
func (c *Collector) rebootRequired() bool {
	for _, p := range []string{"/var/run/reboot-required", "/run/reboot-required"} {
		if exists(c.path(p)) {
			return true
		}
	}
	return c.newerKernelInstalled()
}

// newerKernelInstalled compares the running kernel with the installed ones
// of the same flavor ("amd64", "generic", "rt-amd64"); a directory without
// modules.dep is a leftover of a removed kernel and is ignored.
func (c *Collector) newerKernelInstalled() bool {
	running, err := c.readTrimmed("/proc/sys/kernel/osrelease")
	if err != nil {
		return false
	}
	entries, err := os.ReadDir(c.path("/lib/modules"))
	if err != nil {
		return false
	}
	flavor := kernelFlavor(running)
	for _, e := range entries {
		name := e.Name()
		if kernelFlavor(name) != flavor || !exists(c.path(filepath.Join("/lib/modules", name, "modules.dep"))) {
			continue
		}
		if compareVersions(name, running) > 0 {
			return true
		}
	}
	return false
}

// kernelFlavor returns the trailing dash-separated words of a kernel release
// that start with a letter: "6.1.0-18-rt-amd64" → "rt-amd64",
// "6.8.9-300.fc40.x86_64" → "".
func kernelFlavor(release string) string {
	parts := strings.Split(release, "-")
	i := len(parts)
	for i > 1 && parts[i-1] != "" && unicode.IsLetter(rune(parts[i-1][0])) {
		i--
	}
	return strings.Join(parts[i:], "-")
}

// compareVersions compares two version strings piecewise, runs of digits
// numerically and other runs as text (as rpmvercmp does), returning -1, 0
// or +1.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		var pa, pb string
		pa, a = leadingRun(a)
		pb, b = leadingRun(b)
		if pa == pb {
			continue
		}
		da, db := isDigit(pa[0]), isDigit(pb[0])
		switch {
		case da && db:
			pa, pb = strings.TrimLeft(pa, "0"), strings.TrimLeft(pb, "0")
			if c := cmp.Compare(len(pa), len(pb)); c != 0 {
				return c
			}
			if c := strings.Compare(pa, pb); c != 0 {
				return c
			}
		case da:
			return 1 // a number sorts after text, so 6.1.10 > 6.1.rc
		case db:
			return -1
		default:
			return strings.Compare(pa, pb)
		}
	}
	return cmp.Compare(len(a), len(b))
}

// leadingRun splits off the leading run of digits or of non-digits.
func leadingRun(s string) (run, rest string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }
