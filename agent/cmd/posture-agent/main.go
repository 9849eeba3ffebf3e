// Command posture-agent measures this device and streams signed posture
// reports to a Posture collector. It runs as a system service.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/signals"
	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/jsonview"
	"github.com/posture-project/posture/internal/version"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func defaultStateDir() string {
	switch runtime.GOOS {
	case "windows":
		return filepath.Join(envOr("ProgramData", `C:\ProgramData`), "Posture", "agent")
	case "darwin":
		return "/Library/Application Support/Posture/agent"
	}
	return "/var/lib/posture-agent"
}

// defaultConfigFile is read when it exists and --config is not given.
func defaultConfigFile() string {
	switch runtime.GOOS {
	case "windows":
		return filepath.Join(envOr("ProgramData", `C:\ProgramData`), "Posture", "agent.yaml")
	case "darwin":
		return "/Library/Application Support/Posture/agent.yaml"
	}
	return "/etc/posture/agent.yaml"
}

// configKeys are the keys of the configuration file: the flags that say
// how this device is measured and reported, not one-off ones (the token).
var configKeys = []string{"state-dir", "interval", "identity", "tpm", "event-log"}

// envFlags are flags whose default an environment variable sets; they
// rank above the configuration file.
var envFlags = map[string]string{"state-dir": "POSTURE_AGENT_STATE_DIR", "token": "POSTURE_TOKEN"}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Exit codes: 0 done, 1 failed, 2 the command line was wrong. status
// follows the LSB init script convention: 0 running, 1 failing, 3
// stopped, 4 not installed.
const (
	exitFailed = 1
	exitUsage  = 2
)

// usageError is a command line that cannot be run as written: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitErr ends with a specific exit code, after printing err if any.
type exitErr struct {
	code int
	err  error
}

func (e exitErr) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func main() {
	closeInheritedOnExec()
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs the command line args and returns its exit code.
func execute(args []string, out, errOut io.Writer) int {
	err := run(args, out)
	if err == nil {
		return 0
	}
	code := exitFailed
	var ee exitErr
	var ue usageError
	switch {
	case errors.As(err, &ee):
		code, err = ee.code, ee.err
	case errors.As(err, &ue):
		code = exitUsage
	}
	if err != nil {
		// Errors carry what the collector answered (a rejection, a
		// revocation's reason) and the address a token named.
		fmt.Fprintln(errOut, "posture-agent:", inert.Text(err.Error()))
		if code == exitUsage {
			fmt.Fprintln(errOut, "Run 'posture-agent --help' for usage.")
		}
	}
	return code
}

// run runs the command line args, writing its output to out.
func run(args []string, out io.Writer) error {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(os.Stderr)
	return root.Execute()
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "posture-agent",
		Short: "Measure this device and stream signed posture reports to a Posture collector",
		Long: `posture-agent measures this device and streams signed posture reports to a
Posture collector. It runs as a system service (systemd, System V init,
launchd, the Windows Service Control Manager).

Settings come from the command line, then the environment, then the
configuration file (--config, default ` + defaultConfigFile() + `), whose keys
are ` + strings.Join(configKeys, ", ") + `.`,
		Version:           version.String(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		DisableAutoGenTag: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for \"posture-agent\"", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetVersionTemplate("posture-agent {{.Version}}\n")
	root.PersistentFlags().String("config", envOr("POSTURE_AGENT_CONFIG", defaultConfigFile()), "configuration file (YAML; keys: "+strings.Join(configKeys, ", ")+"); also $POSTURE_AGENT_CONFIG")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return loadConfig(cmd) }
	root.AddCommand(newEnrollCommand(), newRunCommand(), newCollectCommand(), newInstallCommand(),
		newControlCommand("uninstall", "Stop and remove the system service, leaving nothing of it behind (the enrollment stays)"),
		newControlCommand("start", "Start the system service; fails when the agent stops at once, saying why"),
		newControlCommand("stop", "Stop the system service"),
		newStatusCommand(), newVersionCommand(), newNotifyCommand(), newBrowserCertCommand(), newManCommand(root))
	return root
}

// loadConfig applies the environment and the configuration file to the
// flags of cmd that its command line left unset.
func loadConfig(cmd *cobra.Command) error {
	fs := cmd.Flags()
	for name, env := range envFlags {
		if f := fs.Lookup(name); f != nil && !f.Changed && os.Getenv(env) != "" {
			if err := fs.Set(name, os.Getenv(env)); err != nil {
				return usagef("$%s: %w", env, err)
			}
		}
	}
	f := fs.Lookup("config")
	optional := !f.Changed && os.Getenv("POSTURE_AGENT_CONFIG") == ""
	_, err := cliflag.Load(f.Value.String(), optional, configKeys, fs)
	return err
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// stateDirFlag is --state-dir.
func stateDirFlag(fs *pflag.FlagSet) *string {
	return fs.String("state-dir", defaultStateDir(), "agent state directory: keys, certificates, spool (also $POSTURE_AGENT_STATE_DIR)")
}

// intervalFlag is --interval.
func intervalFlag(fs *pflag.FlagSet) *time.Duration {
	return cliflag.Duration(fs, "interval", time.Minute, "time between measurements (a duration as 1m, or days)")
}

// enrollFlags are enroll's flags, which install --token uses too.
type enrollFlags struct {
	token, identity, tpm, eventLog *string
}

func defineEnrollFlags(fs *pflag.FlagSet, tokenUsage string) enrollFlags {
	return enrollFlags{
		token:    fs.String("token", "", tokenUsage),
		identity: cliflag.Choice(fs, "identity", "", "identity to enroll with (auto: the TPM when reachable, else software)", agent.IdentityAuto, "tpm", "software"),
		tpm:      fs.String("tpm", "", "TPM to use: empty for the platform TPM, or tcp://HOST:PORT for swtpm"),
		eventLog: fs.String("event-log", "", "TCG event log to send with quotes (default: the platform's)"),
	}
}

// enroll enrolls the device in stateDir with the flags' token.
func (f enrollFlags) enroll(stateDir string, out io.Writer) error {
	res, err := agent.EnrollWith(context.Background(), stateDir, *f.token, agent.EnrollOptions{Identity: *f.identity, TPM: *f.tpm, EventLog: *f.eventLog})
	if err != nil {
		return err
	}
	if res.Note != "" {
		inert.Fprintf(out, "note: %s\n", res.Note)
	}
	// The device ID comes from the collector, the address from the token.
	inert.Fprintf(out, "enrolled as device %s (%s) with %s; identity: %s, assurance: %s\n", res.DeviceID, res.SPIFFEID, res.Collector, res.Identity,
		jsonview.EnumWord(res.Assurance.Descriptor().Values().ByNumber(res.Assurance.Number())))
	if res.State == posturev1.DeviceState_DEVICE_STATE_PENDING {
		inert.Fprintf(out, "the device is pending approval: its TPM endorsement key is neither verified nor pinned. Its reports are sent and kept, but every access level is denied until an admin approves it: ask an admin to run posture-collector devices approve %s\n", res.DeviceID)
	}
	return nil
}

func newEnrollCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enroll --token TOKEN",
		Short: "Enroll this device (TPM when reachable, else software)",
		Args:  noArgs,
	}
	stateDir := stateDirFlag(cmd.Flags())
	ef := defineEnrollFlags(cmd.Flags(), "enrollment token from posture-collector token create (required; also $POSTURE_TOKEN)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *ef.token == "" {
			return usagef("--token is required: ask your admin for one (posture-collector token create)")
		}
		return ef.enroll(*stateDir, cmd.OutOrStdout())
	}
	return cmd
}

func newRunCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Measure and stream in the foreground; what the service runs",
		Args:  noArgs,
	}
	stateDir := stateDirFlag(cmd.Flags())
	interval := intervalFlag(cmd.Flags())
	cmd.RunE = func(*cobra.Command, []string) error {
		if !service.Interactive() {
			// Started by the service manager (Windows SCM needs the handshake).
			s, err := newService(serviceSpec{stateDir: *stateDir, interval: *interval})
			if err != nil {
				return err
			}
			return s.Run()
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runAgent(ctx, *stateDir, *interval)
	}
	return cmd
}

func newCollectCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Measure this machine now, print, send nothing",
		Args:  noArgs,
	}
	format := cliflag.Output(cmd.Flags(), "json", "text")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		// A one-shot measurement waits for the package manager, which a
		// running agent does not let stall a report.
		r := signals.New(signals.Options{FirstSlowWait: 3 * time.Minute}).Collect(context.Background())
		b, err := jsonview.Marshal(r)
		if *format == "text" {
			b, err = protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(r)
			b = append(inert.JSON(b), '\n')
		}
		if err != nil {
			return err
		}
		// Measurements hold text anyone on the machine may set (a volume
		// label, a host name): jsonview escapes them, so the output is safe
		// to read.
		_, err = cmd.OutOrStdout().Write(b)
		return err
	}
	return cmd
}

func runAgent(ctx context.Context, stateDir string, interval time.Duration) error {
	log := newLogger()
	a, err := agent.New(agent.Config{
		StateDir:   stateDir,
		Interval:   interval,
		Measurer:   signals.New(signals.Options{}),
		Logger:     log,
		OnStanding: notifier(stateDir, log),
		// Where the device's users ask for browser certificates.
		LocalSocket: defaultSocket(),
	})
	if err != nil {
		return err
	}
	log.Info("agent running", "device", a.DeviceID(), "state_dir", stateDir, "interval", interval, "version", version.String())
	return a.Run(ctx)
}

// newLogger logs text to standard error, inert: records quote what the
// collector sent (rejections) and what the machine measured.
func newLogger() *slog.Logger {
	return slog.New(inert.NewTextHandler(os.Stderr, nil))
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version and commit",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "posture-agent %s\n", version.String())
			return nil
		},
	}
}

// newManCommand writes the manual pages (one per command) into a
// directory; packages ship them.
func newManCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write manual pages for every command into DIR",
		Hidden: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("usage: posture-agent man DIR")
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			return doc.GenManTree(root, &doc.GenManHeader{Title: "POSTURE-AGENT", Section: "1", Source: "Posture " + version.Version(), Manual: "Posture"}, args[0])
		},
	}
}
