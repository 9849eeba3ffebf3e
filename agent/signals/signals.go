// Package signals measures a device's security posture (operating system,
// disk encryption, secure boot, pending updates, firewall, screen lock,
// endpoint protection, automatic updates, the newest installed update) and
// fills the matching sections of a posture report.
//
// Every section says how it was obtained. A signal that cannot be measured is
// reported with a status other than STATUS_OK and a reason a person can act
// on; its boolean values stay false so that unknown never passes a check.
//
// # File names
//
// Two kinds of per-OS file live here, and their names keep them apart:
//
//   - *_linux.go, *_darwin.go, *_windows.go and *_other.go carry Go's
//     file-name build constraint: they are compiled for that OS only (the
//     _other.go stubs for every OS the agent does not measure). They hold
//     what needs the OS itself: system calls, the registry and WMI, netlink,
//     and on macOS and Windows the few lines that bind the measurements
//     below to them.
//   - *_macos_anyos.go and *_windows_anyos.go hold the macOS and Windows
//     measurements and carry no constraint: they reach the system only
//     through small interfaces (Runner for commands, registryReader,
//     wmiQuerier), so they build on every OS and their tests run on Linux
//     against captured outputs, as no Mac or Windows machine runs the tests.
//     The suffix _anyos says so: Go reads only a GOOS (or GOOS_GOARCH) at
//     the very end of a name as a constraint.
//
// docs/contributing/signals.md is the checklist for adding a signal.
package signals

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	defaultUpdatesInterval = 6 * time.Hour
	defaultCommandTimeout  = 60 * time.Second
)

// swapMountPoint is how swap areas appear in Volume.mount_point.
const swapMountPoint = "[SWAP]"

// Runner runs an external command. Tests replace it with recorded real outputs.
type Runner interface {
	// Run runs name with args and returns what it wrote and its exit code.
	// err is set only when the command could not be started (for example it
	// was not found) or ctx expired; a non-zero exit is reported in exitCode
	// with err nil.
	Run(ctx context.Context, name string, args ...string) (stdout, stderr []byte, exitCode int, err error)
}

// Options configures a Collector. The zero value measures the running system.
type Options struct {
	// Root is the filesystem root prefixed to every file the agent reads
	// itself (/proc, /sys, /etc, /run, /var, /usr, /lib, /home, /tmp,
	// /Library); "" means "/". Tests point it at testdata trees.
	Root string
	// Runner runs external commands; nil means run real commands (os/exec).
	Runner Runner
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// UpdatesInterval is how long a package-manager result is reused before
	// it is measured again; 0 means 6h.
	UpdatesInterval time.Duration
	// CommandTimeout bounds each external command; 0 means 60s.
	CommandTimeout time.Duration
	// SystemBus is the address of the D-Bus system bus, where the Linux
	// measurements ask systemd, logind and firewalld; "" means
	// $DBUS_SYSTEM_BUS_ADDRESS, or unix:path=/run/dbus/system_bus_socket
	// under Root.
	SystemBus string
	// FirstSlowWait is how long the first Collect waits for a slow
	// measurement (package managers) before reporting it as still running
	// and letting it finish in the background, so it cannot stall the first
	// report; 0 means 3s.
	FirstSlowWait time.Duration
}

// Collector measures the device. Create one with New and keep it: it caches
// slow measurements (pending updates) between calls to Collect.
type Collector struct {
	root            string
	runner          Runner
	now             func() time.Time
	updatesInterval time.Duration
	commandTimeout  time.Duration
	firstSlowWait   time.Duration
	// euid decides whose settings the agent may read; tests set it.
	euid int

	// registry and wmi reach Windows; nil elsewhere.
	registry registryReader
	wmi      wmiQuerier
	// sys is what a platform's measurements keep between cycles.
	sys osState

	updates       slowCache[*posturev1.Updates]
	lastInstalled slowCache[*posturev1.InstalledUpdate]
	// config caches measurements that only change when files change.
	config configCache
	// macVersion and macBoot cache what changes only across reboots.
	macVersion struct {
		mu           sync.Mutex
		major, minor int
	}
	macBoot struct {
		mu   sync.Mutex
		last *posturev1.SecureBoot
	}
}

// New returns a Collector configured by opts, filling in defaults for zero
// fields.
func New(opts Options) *Collector {
	c := &Collector{
		root:            opts.Root,
		runner:          opts.Runner,
		now:             opts.Now,
		updatesInterval: opts.UpdatesInterval,
		commandTimeout:  opts.CommandTimeout,
		firstSlowWait:   opts.FirstSlowWait,
	}
	if c.firstSlowWait <= 0 {
		c.firstSlowWait = 3 * time.Second
	}
	if c.root == "" {
		c.root = "/"
	}
	if c.runner == nil {
		c.runner = execRunner{}
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.updatesInterval <= 0 {
		c.updatesInterval = defaultUpdatesInterval
	}
	if c.commandTimeout <= 0 {
		c.commandTimeout = defaultCommandTimeout
	}
	c.euid = os.Geteuid()
	c.registry, c.wmi = platformSources()
	c.sys = newOSState(opts, c.root)
	return c
}

// Collect measures the device now. It never fails as a whole: every
// section is always set, and a section that could not be measured carries a
// status other than STATUS_OK with a reason a person can act on. It fills
// the measured sections only; identity, sequence and timing fields are left
// to the caller.
//
// Each section comes whole from its measurement (see section): adding a
// signal adds a field to the report and one line here, and
// TestCollectFillsEverySection fails until both are there.
func (c *Collector) Collect(ctx context.Context) *posturev1.PostureReport {
	return &posturev1.PostureReport{
		Os:                  c.osInfo(ctx),
		Disk:                c.diskEncryption(ctx),
		SecureBoot:          c.secureBoot(ctx),
		Updates:             c.cachedUpdates(ctx),
		Firewall:            c.firewall(ctx),
		ScreenLock:          c.screenLock(ctx),
		EndpointProtection:  c.endpointProtection(ctx),
		AutoUpdate:          c.autoUpdate(ctx),
		LastInstalledUpdate: c.cachedLastInstalled(ctx),
	}
}

// section is one section of the report as a measurement returns it: the
// section's own message, complete. Its meta says how it was obtained:
// status, observed_at and source always, and reason whenever the status is
// not STATUS_OK. The explanation of an OK verdict ("no input chain drops
// inbound traffic", "user alice's screen saver has no timeout") goes in
// the section's detail field where it has one; in a section without one,
// reason may carry a caveat of an OK measurement (how old it is, how a
// date was read). Measurements never hand back private copies for someone
// else to move into the report.
type section interface {
	proto.Message
	GetMeta() *posturev1.SignalMeta
}

// renewed returns a copy of a measurement kept in a cache, observed again
// at t: the agent has checked at t that nothing it depends on changed.
func renewed[T section](s T, t time.Time) T {
	s = proto.Clone(s).(T)
	if m := s.GetMeta(); m != nil {
		m.ObservedAt = timestamppb.New(t)
	}
	return s
}

// meta builds the SignalMeta of a measurement taken now from the OS.
func (c *Collector) meta(status posturev1.Status, reason string) *posturev1.SignalMeta {
	return metaAt(c.now(), status, reason)
}

// metaAt builds the SignalMeta of a measurement from the OS taken at t.
func metaAt(t time.Time, status posturev1.Status, reason string) *posturev1.SignalMeta {
	return &posturev1.SignalMeta{
		Status:     status,
		Reason:     reason,
		ObservedAt: timestamppb.New(t),
		Source:     posturev1.Source_SOURCE_OS,
	}
}

// path maps an absolute system path under Root.
func (c *Collector) path(p string) string {
	return filepath.Join(c.root, p)
}

// run runs one command under CommandTimeout.
func (c *Collector) run(ctx context.Context, name string, args ...string) (stdout, stderr []byte, exitCode int, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.commandTimeout)
	defer cancel()
	stdout, stderr, exitCode, err = c.runner.Run(ctx, name, args...)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%s did not finish within %s: %w", commandLine(name, args), c.commandTimeout, err)
	}
	return stdout, stderr, exitCode, err
}

// commandLine renders a command for messages.
func commandLine(name string, args []string) string {
	return strings.Join(append([]string{name}, args...), " ")
}

// commandError describes a command that ran and failed, with the first line
// of its error output, which is where package managers say why.
func commandError(name string, args []string, code int, stderr, stdout []byte) error {
	line := firstLine(stderr)
	if line == "" {
		line = firstLine(stdout)
	}
	if line == "" {
		return fmt.Errorf("%s exited with status %d", commandLine(name, args), code)
	}
	return fmt.Errorf("%s exited with status %d: %s", commandLine(name, args), code, line)
}

// firstLine returns the first non-blank line of b, trimmed.
func firstLine(b []byte) string {
	for line := range strings.Lines(string(b)) {
		if t := strings.TrimSpace(line); t != "" {
			return t
		}
	}
	return ""
}

// execRunner runs real commands.
type execRunner struct{}

// waitDelay bounds how long Run waits for output after the command exits or
// is killed, so that a grandchild holding the pipes open cannot stall it.
const waitDelay = 2 * time.Second

func (execRunner) Run(ctx context.Context, name string, args ...string) ([]byte, []byte, int, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	// Parsers read English output; a localized one would not parse.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C", "LANGUAGE=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	if ctxErr := ctx.Err(); ctxErr != nil {
		return stdout.Bytes(), stderr.Bytes(), -1, fmt.Errorf("run %s: %w", name, ctxErr)
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return stdout.Bytes(), stderr.Bytes(), 0, nil
	case errors.As(err, &exitErr):
		return stdout.Bytes(), stderr.Bytes(), exitErr.ExitCode(), nil
	case errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil:
		// The command itself finished; only a leftover child kept the pipes.
		return stdout.Bytes(), stderr.Bytes(), cmd.ProcessState.ExitCode(), nil
	default:
		return stdout.Bytes(), stderr.Bytes(), -1, fmt.Errorf("run %s: %w", name, err)
	}
}
