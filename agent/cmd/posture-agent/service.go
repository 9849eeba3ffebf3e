package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/jsonview"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// serviceSpec is what the installed service runs.
type serviceSpec struct {
	path     string        // the agent binary; empty: resolved from this process
	stateDir string        // set when --state-dir was given
	interval time.Duration // set when --interval was given
}

// args are the arguments of run: only what install was given, so that the
// configuration file decides the rest.
func (s serviceSpec) args() []string {
	args := []string{"run"}
	if s.stateDir != "" {
		args = append(args, "--state-dir", s.stateDir)
	}
	if s.interval != 0 {
		args = append(args, "--interval", s.interval.String())
	}
	return args
}

// program adapts the agent to kardianos/service.
type program struct {
	stateDir string
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{}
}

func (p *program) Start(service.Service) error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		if err := runAgent(ctx, p.stateDir, p.interval); err != nil {
			newLogger().Error("agent stopped", "err", err)
			os.Exit(1)
		}
	}()
	return nil
}

func (p *program) Stop(service.Service) error {
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	return nil
}

// executablePath is the binary the service runs: the packaged one when the
// package is installed, otherwise this one, with symbolic links resolved.
// A binary that go run built in a temporary directory is refused: the
// service would lose it.
func executablePath() (string, error) {
	if runtime.GOOS == "linux" {
		if _, err := os.Stat(packagedBinary); err == nil {
			return packagedBinary, nil
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find this executable: %w", err)
	}
	if p, err := filepath.EvalSymlinks(exe); err == nil {
		exe = p
	}
	exe, err = filepath.Abs(exe)
	if err != nil {
		return "", err
	}
	if strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "", fmt.Errorf("%s is a temporary build (go run): build or install posture-agent and run its install from there", exe)
	}
	return exe, nil
}

// newService is the agent's service, as kardianos/service manages it on
// this system.
func newService(spec serviceSpec) (service.Service, error) {
	if spec.path == "" {
		p, err := executablePath()
		if err != nil && !(len(os.Args) > 1 && os.Args[1] == "run") {
			return nil, err
		}
		spec.path = p
	}
	args := spec.args()
	cfg := &service.Config{
		Name:        serviceName,
		DisplayName: serviceDisplayName,
		Description: serviceDescription,
		Executable:  spec.path,
		Arguments:   args,
		Option: service.KeyValue{
			// Each definition restarts the agent when it fails.
			"SystemdScript": systemdUnit(spec.path, args),
			"LaunchdConfig": launchdPlist(spec.path, args),
			"SysvScript":    sysvScript(spec.path, args),
			// Windows: the Service Control Manager's recovery actions.
			"OnFailure":              "restart",
			"OnFailureDelayDuration": "10s",
			"OnFailureResetPeriod":   86400,
			"DelayedAutoStart":       true,
		},
	}
	s, err := service.New(&program{stateDir: orDefault(spec.stateDir, defaultStateDir()), interval: orDefaultDuration(spec.interval, time.Minute)}, cfg)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	return s, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orDefaultDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// State is what the service is doing.
type State string

// The states status tells apart.
const (
	NotInstalled State = "not installed"
	Stopped      State = "stopped"
	Running      State = "running"
	Failing      State = "failing"
)

// exitCode is status's exit code for a state, as LSB init scripts answer.
func (s State) exitCode() int {
	switch s {
	case Running:
		return 0
	case Failing:
		return 1
	case Stopped:
		return 3
	}
	return 4
}

// serviceState is the truth about the service on this system.
type serviceState struct {
	Platform string `json:"platform"`
	State    State  `json:"state"`
	PID      int    `json:"pid,omitempty"`
	// Why says why it is failing, or anything else worth knowing.
	Why string `json:"why,omitempty"`
	// Packaged is set when the service definition came with the package.
	Packaged bool `json:"packaged,omitempty"`
}

// systemdUnitPaths are where a package puts the unit.
var systemdUnitPaths = []string{"/lib/systemd/system/posture-agent.service", "/usr/lib/systemd/system/posture-agent.service"}

// queryState finds out what the service is doing.
func queryState(s service.Service) serviceState {
	st := serviceState{Platform: s.Platform()}
	switch st.Platform {
	case "linux-systemd":
		return systemdState(st)
	case "unix-systemv":
		return sysvState(st)
	}
	status, err := s.Status()
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		st.State = NotInstalled
	case err != nil:
		st.State, st.Why = Failing, err.Error()
	case status == service.StatusRunning:
		st.State = Running
	default:
		st.State = Stopped
	}
	if runtime.GOOS == "darwin" && st.State != NotInstalled {
		st = launchdState(st)
	}
	return st
}

// systemdState reads the unit's state from systemctl show.
func systemdState(st serviceState) serviceState {
	out, _ := exec.Command("systemctl", "show", serviceName+".service", "--property=LoadState,ActiveState,SubState,Result,ExecMainPID,ExecMainStatus,NRestarts,UnitFileState,FragmentPath").Output()
	p := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			p[k] = v
		}
	}
	st.Packaged = strings.HasPrefix(p["FragmentPath"], "/lib/") || strings.HasPrefix(p["FragmentPath"], "/usr/lib/")
	st.PID, _ = strconv.Atoi(p["ExecMainPID"])
	switch {
	case p["LoadState"] == "not-found" || p["LoadState"] == "":
		st.State = NotInstalled
	case p["ActiveState"] == "active" && p["SubState"] == "running":
		st.State = Running
	case p["ActiveState"] == "failed" || p["SubState"] == "auto-restart" || p["ActiveState"] == "activating" && p["Result"] != "success":
		st.State = Failing
		st.Why = fmt.Sprintf("%s (exit status %s, %s restarts)", p["Result"], p["ExecMainStatus"], p["NRestarts"])
		if tail := journalTail(); tail != "" {
			st.Why += "; last log lines:\n" + tail
		}
	default:
		st.State = Stopped
		if p["UnitFileState"] == "disabled" {
			st.Why = "not enabled: it will not start at boot (systemctl enable posture-agent)"
		}
	}
	if st.State != Running {
		st.PID = 0
	}
	return st
}

func journalTail() string {
	out, err := exec.Command("journalctl", "-u", serviceName, "-n", "5", "--no-pager", "-o", "cat").Output()
	if err != nil {
		return ""
	}
	return strings.TrimRight(string(out), "\n")
}

// sysvState reads the init script, its pid file and its log.
func sysvState(st serviceState) serviceState {
	if _, err := os.Stat(sysvInitScript); err != nil {
		st.State = NotInstalled
		return st
	}
	data, err := os.ReadFile(sysvPIDFile)
	if errors.Is(err, os.ErrNotExist) {
		st.State = Stopped
		return st
	}
	pid, perr := strconv.Atoi(strings.TrimSpace(string(data)))
	if err == nil && perr == nil && processIsAgent(pid) {
		st.State, st.PID = Running, pid
		return st
	}
	// Started and gone without a stop: it failed.
	st.State = Failing
	st.Why = "the agent exited"
	if tail := fileTail(sysvLogFile, 5); tail != "" {
		st.Why += "; last lines of " + sysvLogFile + ":\n" + tail
	}
	return st
}

const sysvInitScript = "/etc/init.d/" + serviceName

// processIsAgent reports whether pid is a running posture-agent.
func processIsAgent(pid int) bool {
	if pid <= 0 {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// A zombie has exited; it waits only for its parent to notice.
	if _, rest, ok := bytes.Cut(stat, []byte(") ")); ok && len(rest) > 0 && rest[0] == 'Z' {
		return false
	}
	return bytes.Contains(cmdline, []byte("posture-agent"))
}

// launchdState adds why a launchd job is failing: it has no PID and its
// last exit status is not 0 (launchd will start it again).
func launchdState(st serviceState) serviceState {
	out, _ := exec.Command("launchctl", "list", serviceName).Output()
	if m := regexp.MustCompile(`"PID" = ([0-9]+);`).FindSubmatch(out); m != nil {
		st.PID, _ = strconv.Atoi(string(m[1]))
	}
	m := regexp.MustCompile(`"LastExitStatus" = (-?[0-9]+);`).FindSubmatch(out)
	if st.State == Stopped && m != nil && string(m[1]) != "0" {
		st.State = Failing
		st.Why = "last exit status " + string(m[1])
		if tail := fileTail(launchdLogFile, 5); tail != "" {
			st.Why += "; last lines of " + launchdLogFile + ":\n" + tail
		}
	}
	return st
}

// fileTail is the last n lines of a file, inert.
func fileTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 64<<10 {
		f.Seek(-64<<10, io.SeekEnd)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return inert.Text(strings.Join(lines, "\n"))
}

func newInstallCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the system service (and enroll first with --token); --start starts it",
		Long: `Install the agent's system service: systemd, System V init, launchd or the
Windows Service Control Manager, whichever this system runs. It is enabled
to start at boot and restarted when it fails (System V init has no such
supervisor). The service runs this binary (/usr/bin/posture-agent when the
package is installed) with run and the --state-dir and --interval given
here; everything else comes from the configuration file.

With --token the device enrolls first, unless it is enrolled already: an
MDM script can run posture-agent install --token TOKEN --start on every
device, again and again.`,
		Args: noArgs,
	}
	fs := cmd.Flags()
	stateDir := stateDirFlag(fs)
	interval := intervalFlag(fs)
	ef := defineEnrollFlags(fs, "enroll with this token first, unless enrolled already (also $POSTURE_TOKEN)")
	start := fs.Bool("start", false, "start the service once installed, and fail if the agent does not keep running")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		out := cmd.OutOrStdout()
		spec := serviceSpec{}
		if fs.Changed("state-dir") || os.Getenv("POSTURE_AGENT_STATE_DIR") != "" {
			spec.stateDir = *stateDir
		}
		if fs.Changed("interval") {
			spec.interval = *interval
		}
		if *ef.token != "" {
			st, err := agent.ReadStatus(*stateDir)
			switch {
			case err != nil:
				return err
			case st.Enrolled:
				inert.Fprintf(out, "already enrolled as device %s with %s; not enrolling again (posture-agent enroll does)\n", st.DeviceID, st.Collector)
			default:
				if err := ef.enroll(*stateDir, out); err != nil {
					return err
				}
			}
		}
		s, err := newService(spec)
		if err != nil {
			return err
		}
		st := queryState(s)
		switch {
		case st.State != NotInstalled:
			inert.Fprintf(out, "posture-agent service (%s): already installed, %s\n", st.Platform, st.State)
			if st.Platform == "linux-systemd" {
				if err := exec.Command("systemctl", "enable", "--quiet", serviceName).Run(); err != nil {
					return fmt.Errorf("systemctl enable %s: %w", serviceName, err)
				}
			}
		default:
			if err := s.Install(); err != nil {
				return fmt.Errorf("install service (%s): %w", s.Platform(), err)
			}
			inert.Fprintf(out, "posture-agent service (%s): installed, running %s %s\n", s.Platform(), spec.pathOr(s), strings.Join(spec.args(), " "))
		}
		if *start {
			return startService(s, out)
		}
		return nil
	}
	return cmd
}

func (s serviceSpec) pathOr(service.Service) string {
	if s.path != "" {
		return s.path
	}
	p, _ := executablePath()
	return p
}

func newControlCommand(action, short string) *cobra.Command {
	cmd := &cobra.Command{Use: action, Short: short, Args: noArgs}
	// Accepted as before, and meaningless here: the service keeps what
	// install gave it.
	fs := cmd.Flags()
	stateDirFlag(fs)
	intervalFlag(fs)
	fs.MarkHidden("state-dir")
	fs.MarkHidden("interval")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := newService(serviceSpec{path: "-"})
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		switch action {
		case "start":
			return startService(s, out)
		case "stop":
			return stopService(s, out)
		default:
			if err := uninstallService(s, out); err != nil {
				return err
			}
			removeUsersBrowserCerts(out)
			return nil
		}
	}
	return cmd
}

// startWatch is how long start watches the agent after starting it: one
// that exits at once (not enrolled, a bad flag) does so within it.
const startWatch = 3 * time.Second

func startService(s service.Service, out io.Writer) error {
	st := queryState(s)
	switch st.State {
	case NotInstalled:
		return fmt.Errorf("the posture-agent service is not installed (%s): run posture-agent install", st.Platform)
	case Running:
		inert.Fprintf(out, "posture-agent service (%s): already running (pid %d)\n", st.Platform, st.PID)
		return nil
	}
	if st.Platform == "unix-systemv" {
		// Not through service(8), which may hand over to systemctl.
		if out, err := exec.Command(sysvInitScript, "start").CombinedOutput(); err != nil {
			return fmt.Errorf("start service (%s): %w: %s", st.Platform, err, inert.Text(string(out)))
		}
	} else if err := s.Start(); err != nil {
		return fmt.Errorf("start service (%s): %w", s.Platform(), err)
	}
	deadline := time.Now().Add(startWatch)
	for {
		time.Sleep(250 * time.Millisecond)
		st = queryState(s)
		if st.State != Running && st.State != Stopped {
			break
		}
		if time.Now().After(deadline) {
			break
		}
	}
	if st.State != Running {
		why := st.Why
		if why == "" {
			why = "it is " + string(st.State)
		}
		return fmt.Errorf("posture-agent service (%s) did not keep running: %s", st.Platform, why)
	}
	inert.Fprintf(out, "posture-agent service (%s): running (pid %d)\n", st.Platform, st.PID)
	return nil
}

func stopService(s service.Service, out io.Writer) error {
	st := queryState(s)
	switch st.State {
	case NotInstalled:
		return fmt.Errorf("the posture-agent service is not installed (%s)", st.Platform)
	case Stopped:
		inert.Fprintf(out, "posture-agent service (%s): not running\n", st.Platform)
		return nil
	}
	if err := stopAndWait(s, st); err != nil {
		return err
	}
	inert.Fprintf(out, "posture-agent service (%s): stopped\n", st.Platform)
	return nil
}

// stopAndWait stops the service and waits until its process is gone.
func stopAndWait(s service.Service, st serviceState) error {
	var err error
	if st.Platform == "unix-systemv" {
		var b []byte
		if b, err = exec.Command(sysvInitScript, "stop").CombinedOutput(); err != nil {
			err = fmt.Errorf("%w: %s", err, inert.Text(string(b)))
		}
		if st.State == Failing {
			os.Remove(sysvPIDFile) // a dead agent's: stopped now
			err = nil
		}
	} else {
		err = s.Stop()
	}
	if err != nil && st.State == Running {
		return fmt.Errorf("stop service (%s): %w", st.Platform, err)
	}
	deadline := time.Now().Add(25 * time.Second)
	for st.PID > 0 && processAlive(st.PID) {
		if time.Now().After(deadline) {
			return fmt.Errorf("posture-agent (pid %d) is still running 25s after it was asked to stop", st.PID)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func uninstallService(s service.Service, out io.Writer) error {
	st := queryState(s)
	if st.State == NotInstalled {
		inert.Fprintf(out, "posture-agent service (%s): not installed; nothing to do\n", st.Platform)
		return nil
	}
	if st.Packaged {
		return fmt.Errorf("the posture-agent service came with its package: remove the package instead (apt remove posture-agent, dnf remove posture-agent)")
	}
	if st.State != Stopped {
		if err := stopAndWait(s, st); err != nil {
			return err
		}
	}
	if err := s.Uninstall(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("uninstall service (%s): %w", st.Platform, err)
	}
	if st.Platform == "unix-systemv" {
		if err := removeSysvLeftovers(); err != nil {
			return err
		}
	}
	if after := queryState(s); after.State != NotInstalled {
		return fmt.Errorf("posture-agent service (%s) is still installed after uninstall (%s)", st.Platform, after.State)
	}
	inert.Fprintf(out, "posture-agent service (%s): stopped and uninstalled; the enrollment in the state directory stays (delete it to forget this device)\n", st.Platform)
	return nil
}

// removeSysvLeftovers removes what kardianos/service leaves of a System V
// service: the runlevel links, and the pid file and log of the script.
func removeSysvLeftovers() error {
	links, _ := filepath.Glob("/etc/rc[0-6S].d/[SK][0-9][0-9]" + serviceName)
	for _, p := range append(links, sysvPIDFile, sysvLogFile) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	return nil
}

func newStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Installed? running? enrolled as? last report acknowledged when? (exit 0 running, 1 failing, 3 stopped, 4 not installed)",
		Args:  noArgs,
	}
	stateDir := stateDirFlag(cmd.Flags())
	intervalFlag(cmd.Flags())
	cmd.Flags().MarkHidden("interval")
	format := outputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := newService(serviceSpec{path: "-"})
		if err != nil {
			return err
		}
		st := queryState(s)
		if !cmd.Flags().Changed("state-dir") && os.Getenv("POSTURE_AGENT_STATE_DIR") == "" {
			if dir := installedStateDir(); dir != "" {
				*stateDir = dir // the service's, which status is about
			}
		}
		enr, enrErr := agent.ReadStatus(*stateDir)
		out := cmd.OutOrStdout()
		if *format == "json" {
			v := statusJSON{Service: st, StateDir: *stateDir, Enrolled: enr.Enrolled, DeviceID: enr.DeviceID, SPIFFEID: enr.SPIFFEID, Collector: enr.Collector,
				Identity: enr.Identity, LastAcknowledgedSeq: enr.LastSeq, Unsent: enr.Unsent}
			if !enr.AckedAt.IsZero() {
				v.LastAcknowledgedAt = enr.AckedAt.Format(time.RFC3339)
			}
			if !enr.CertExpires.IsZero() {
				v.CertificateExpires = enr.CertExpires.Format(time.RFC3339)
			}
			if enrErr != nil {
				v.Error = enrErr.Error()
			}
			v.Decision = json.RawMessage("null")
			if enr.Decision != nil {
				if b, err := jsonview.Marshal(enr.Decision); err == nil {
					v.Decision = b
				}
			}
			b, _ := json.MarshalIndent(v, "", "  ")
			out.Write(append(inert.JSON(b), '\n'))
		} else {
			printStatus(out, st, *stateDir, enr, enrErr)
		}
		if code := st.State.exitCode(); code != 0 {
			return exitErr{code: code}
		}
		return nil
	}
	return cmd
}

// statusJSON is status -o json.
type statusJSON struct {
	Service             serviceState `json:"service"`
	StateDir            string       `json:"state_dir"`
	Enrolled            bool         `json:"enrolled"`
	DeviceID            string       `json:"device_id"`
	SPIFFEID            string       `json:"spiffe_id"`
	Collector           string       `json:"collector"`
	Identity            string       `json:"identity"`
	LastAcknowledgedSeq uint64       `json:"last_acknowledged_seq"`
	LastAcknowledgedAt  string       `json:"last_acknowledged_at"`
	Unsent              int          `json:"unsent"`
	CertificateExpires  string       `json:"certificate_expires"`
	// Decision is the collector's latest decision, as -o json of the
	// collector prints messages (internal/jsonview); null before one.
	Decision json.RawMessage `json:"decision"`
	Error    string          `json:"error,omitempty"`
}

func printStatus(out io.Writer, st serviceState, stateDir string, enr agent.Status, enrErr error) {
	line := fmt.Sprintf("service:   %s (%s)", st.State, st.Platform)
	if st.PID > 0 {
		line += fmt.Sprintf(", pid %d", st.PID)
	}
	if st.Packaged {
		line += ", from the package"
	}
	inert.Fprintf(out, "%s\n", line)
	if st.Why != "" {
		for _, l := range strings.Split(st.Why, "\n") {
			inert.Fprintf(out, "           %s\n", l)
		}
	}
	switch {
	case enrErr != nil:
		inert.Fprintf(out, "enrolled:  unknown: %s\n", enrErr)
		return
	case !enr.Enrolled:
		inert.Fprintf(out, "enrolled:  no (state directory %s): run posture-agent enroll --token TOKEN\n", stateDir)
		return
	}
	inert.Fprintf(out, "enrolled:  as device %s (%s) with %s; identity %s\n", enr.DeviceID, enr.SPIFFEID, enr.Collector, enr.Identity)
	switch {
	case enr.LastSeq == 0:
		inert.Fprintf(out, "reports:   none acknowledged yet")
	case enr.AckedAt.IsZero():
		inert.Fprintf(out, "reports:   last acknowledged: seq %d", enr.LastSeq)
	default:
		inert.Fprintf(out, "reports:   last acknowledged: seq %d at %s (%s ago)", enr.LastSeq, enr.AckedAt.Local().Format(time.RFC3339), time.Since(enr.AckedAt).Round(time.Second))
	}
	inert.Fprintf(out, "; %d measurement(s) waiting to be sent\n", enr.Unsent)
	if !enr.CertExpires.IsZero() {
		inert.Fprintf(out, "identity:  device certificate valid until %s\n", enr.CertExpires.Local().Format(time.RFC3339))
	}
	printDecision(out, enr.Decision)
}

// printDecision shows what the collector last said it decided: the score,
// every level met or not and why not, and the failing checks with fixes.
func printDecision(out io.Writer, d *posturev1.AgentDecision) {
	if d == nil {
		inert.Fprintf(out, "decision:  none received yet (the collector sends it with acknowledgements)\n")
		return
	}
	at := d.GetDecidedAt().AsTime()
	inert.Fprintf(out, "decision:  score %d at %s (%s ago)\n", d.GetScore(), at.Local().Format(time.RFC3339), time.Since(at).Round(time.Second))
	for _, l := range d.GetLevels() {
		switch {
		case l.GetAllowed() && len(l.GetWarnings()) > 0:
			inert.Fprintf(out, "           level %s: allowed, warned: %s\n", l.GetName(), strings.Join(l.GetWarnings(), "; "))
		case l.GetAllowed():
			inert.Fprintf(out, "           level %s: allowed\n", l.GetName())
		default:
			inert.Fprintf(out, "           level %s: denied: %s\n", l.GetName(), strings.Join(l.GetReasons(), "; "))
		}
	}
	for _, c := range d.GetFailing() {
		fix := c.GetRemediation()
		if fix == "" {
			fix = "-"
		}
		inert.Fprintf(out, "           check %s %s: %s%s; fix: %s\n", c.GetName(), jsonview.EnumWord(c.GetOutcome().Descriptor().Values().ByNumber(c.GetOutcome().Number())), c.GetReason(), graceText(c), fix)
	}
}

// graceText is what a failing check's grace adds to its line: when it
// blocks, or that its grace ended.
func graceText(c *posturev1.CheckResult) string {
	b := c.GetBlocksAt()
	if b == nil {
		return ""
	}
	if c.GetInGrace() {
		return " (in grace: blocks at " + b.AsTime().Local().Format(time.RFC3339) + ")"
	}
	return " (grace ended " + b.AsTime().Local().Format(time.RFC3339) + ")"
}

// procfs reports whether /proc describes processes (Linux), so that a
// zombie can be told from a live process.
func procfs() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

// outputFlag is -o/--output text or json.
func outputFlag(cmd *cobra.Command) *string {
	return cliflag.Output(cmd.Flags(), "text", "json")
}

// installedStateDir is the --state-dir the installed service definition
// gives the agent, "" when it gives none.
func installedStateDir() string {
	for _, p := range append([]string{sysvInitScript, "/etc/systemd/system/posture-agent.service", "/Library/LaunchDaemons/posture-agent.plist"}, systemdUnitPaths...) {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if m := stateDirArg.FindSubmatch(b); m != nil {
			return strings.Trim(string(m[1]), `"'`)
		}
		if m := plistStateDirArg.FindSubmatch(b); m != nil {
			return html.UnescapeString(string(m[1]))
		}
		return ""
	}
	return ""
}

var (
	stateDirArg      = regexp.MustCompile(`--state-dir ('[^']*'|"[^"]*"|[^\s"]+)`)
	plistStateDirArg = regexp.MustCompile(`<string>--state-dir</string>\s*<string>([^<]*)</string>`)
)
