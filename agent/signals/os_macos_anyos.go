package signals

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// macOS commands are run by absolute path: the agent runs as root, and its
// PATH is not to be trusted with that.
const (
	swVers         = "/usr/bin/sw_vers"
	fdesetup       = "/usr/bin/fdesetup"
	diskutil       = "/usr/sbin/diskutil"
	sysctlCmd      = "/usr/sbin/sysctl"
	defaultsCmd    = "/usr/bin/defaults"
	socketfilterfw = "/usr/libexec/ApplicationFirewall/socketfilterfw"
	sysadminctl    = "/usr/sbin/sysadminctl"
	pmset          = "/usr/bin/pmset"
	csrutil        = "/usr/bin/csrutil"
	spctl          = "/usr/sbin/spctl"
	systemProfiler = "/usr/sbin/system_profiler"
	softwareupdate = "/usr/sbin/softwareupdate"
	launchctl      = "/bin/launchctl"
	sudoCmd        = "/usr/bin/sudo"
	statCmd        = "/usr/bin/stat"
)

// macOSInfo reports the product from sw_vers; kernel and hostname come from
// system calls the caller makes.
func (c *Collector) macOSInfo(ctx context.Context, kernel, hostname string) *posturev1.OSInfo {
	info := &posturev1.OSInfo{Platform: "darwin", Arch: runtime.GOARCH, KernelVersion: kernel, Hostname: hostname}
	v, err := c.swVers(ctx)
	if err != nil {
		info.Meta = c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())
		return info
	}
	info.Name, info.Version, info.Build, info.RapidSecurityResponse = v.name, v.version, v.build, v.extra
	info.Meta = c.meta(posturev1.Status_STATUS_OK, "")
	return info
}

// swVersInfo is what sw_vers prints.
type swVersInfo struct {
	name, version, build string
	// extra is ProductVersionExtra, set while a Rapid Security Response
	// is applied ("(a)").
	extra string
}

// majorMinor returns the first two parts of the version (15, 4 for
// "15.4.1"); a missing part is 0.
func (v swVersInfo) majorMinor() (major, minor int) {
	m, rest, _ := strings.Cut(v.version, ".")
	n, _, _ := strings.Cut(rest, ".")
	major, _ = strconv.Atoi(m)
	minor, _ = strconv.Atoi(n)
	return major, minor
}

func (c *Collector) swVers(ctx context.Context) (swVersInfo, error) {
	stdout, stderr, code, err := c.run(ctx, swVers)
	if err != nil {
		return swVersInfo{}, err
	}
	if code != 0 {
		return swVersInfo{}, commandError(swVers, nil, code, stderr, stdout)
	}
	v := parseSwVers(stdout)
	if v.name == "" || v.version == "" {
		return swVersInfo{}, fmt.Errorf("sw_vers printed no ProductName or ProductVersion; output starts %q", firstLine(stdout))
	}
	return v, nil
}

// parseSwVers reads sw_vers(1) output, "Key:<tabs>value" lines:
// ProductName, ProductVersion, ProductVersionExtra (macOS 13 and later,
// only while a Rapid Security Response is applied), BuildVersion.
func parseSwVers(b []byte) swVersInfo {
	var v swVersInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch strings.TrimSpace(k) {
		case "ProductName":
			v.name = val
		case "ProductVersion":
			v.version = val
		case "ProductVersionExtra":
			v.extra = val
		case "BuildVersion":
			v.build = val
		}
	}
	return v
}

// macMajor returns the macOS major version.
func (c *Collector) macMajor(ctx context.Context) (int, error) {
	major, _, err := c.macMajorMinor(ctx)
	return major, err
}

// macMajorMinor returns the macOS major and minor version, asking sw_vers
// once per process: they change only with an update, which restarts the
// agent.
func (c *Collector) macMajorMinor(ctx context.Context) (major, minor int, err error) {
	c.macVersion.mu.Lock()
	defer c.macVersion.mu.Unlock()
	if c.macVersion.major == 0 {
		v, err := c.swVers(ctx)
		if err != nil {
			return 0, 0, err
		}
		c.macVersion.major, c.macVersion.minor = v.majorMinor()
	}
	return c.macVersion.major, c.macVersion.minor, nil
}

// consoleUser is the user logged in at the Mac's screen.
type consoleUser struct {
	name string
	uid  int
}

// macConsoleUser returns who owns /dev/console: the user at the login
// window, or root (and a few system accounts) when nobody is.
func (c *Collector) macConsoleUser(ctx context.Context) (consoleUser, bool, error) {
	args := []string{"-f", "%Su %u", "/dev/console"}
	stdout, stderr, code, err := c.run(ctx, statCmd, args...)
	if err != nil {
		return consoleUser{}, false, err
	}
	if code != 0 {
		return consoleUser{}, false, commandError(statCmd, args, code, stderr, stdout)
	}
	f := strings.Fields(string(stdout))
	if len(f) != 2 {
		return consoleUser{}, false, fmt.Errorf("stat of /dev/console printed %q, want \"user uid\"", firstLine(stdout))
	}
	uid, err := strconv.Atoi(f[1])
	if err != nil {
		return consoleUser{}, false, fmt.Errorf("stat of /dev/console printed %q, want \"user uid\"", firstLine(stdout))
	}
	switch f[0] {
	case "root", "_mbsetupuser", "loginwindow":
		return consoleUser{}, false, nil
	}
	return consoleUser{name: f[0], uid: uid}, true, nil
}

// runAsUser runs a command in the console user's context, where per-user
// preferences live: as root through "launchctl asuser" (the user's
// bootstrap namespace, so cfprefsd answers for that user) and sudo.
func (c *Collector) runAsUser(ctx context.Context, u consoleUser, name string, args ...string) ([]byte, []byte, int, error) {
	switch c.euid {
	case u.uid:
		return c.run(ctx, name, args...)
	case 0:
		argv := append([]string{"asuser", strconv.Itoa(u.uid), sudoCmd, "-H", "-u", u.name, name}, args...)
		return c.run(ctx, launchctl, argv...)
	}
	return nil, nil, -1, fmt.Errorf("needs root to read the settings of user %s: %w", u.name, errAccessDenied)
}
