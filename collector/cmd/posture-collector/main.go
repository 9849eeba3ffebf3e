// Command posture-collector runs the Posture collector and is its admin CLI.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/version"
)

const defaultDataDir = "/var/lib/posture-collector"

// defaultConfigFile is read when it exists and --config is not given.
func defaultConfigFile() string {
	if runtime.GOOS == "windows" {
		return envOr("ProgramData", `C:\ProgramData`) + `\Posture\collector.yaml`
	}
	return "/etc/posture/collector.yaml"
}

// Exit codes: 0 done (check: allowed), 1 failed (check: denied), 2 the
// command line was wrong (check: any error).
const (
	exitFailed = 1
	exitUsage  = 2
)

// exitErr carries a specific exit code.
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

func (e exitErr) Unwrap() error { return e.err }

// usageError is a command line that cannot be run as written: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func main() {
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
		// Errors carry what the collector answered, and that can quote
		// a device or a request.
		fmt.Fprintln(errOut, "posture-collector:", inert.Text(err.Error()))
		if code == exitUsage && errors.As(err, &ue) {
			fmt.Fprintln(errOut, "Run 'posture-collector --help' for usage.")
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

// newRoot builds the command tree.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "posture-collector",
		Short: "Run the Posture collector and administer it",
		Long: `posture-collector runs the Posture collector and administers it.

Admin commands reach the running collector through the admin socket in
--data-dir (default ` + defaultDataDir + `, or $POSTURE_DATA_DIR).
Settings come from the command line, then the environment, then the
configuration file (--config, default ` + defaultConfigFile() + `), whose
keys are the flags of posture-collector run.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for \"posture-collector\"", args[0])
			}
			return nil
		},
		RunE:              groupRunE,
		DisableAutoGenTag: true,
	}
	root.SetVersionTemplate("posture-collector {{.Version}}\n")
	root.PersistentFlags().String("config", envOr("POSTURE_COLLECTOR_CONFIG", defaultConfigFile()), "configuration file (YAML; keys are the flags of run); also $POSTURE_COLLECTOR_CONFIG")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	runCmd := newRunCommand()
	keys := configKeys(runCmd)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if cmd.Name() == "check" && cmd.Parent() != nil && cmd.Parent().Name() == "config" {
			return nil // reads the file itself, and reports what it finds
		}
		return loadConfig(cmd, keys)
	}
	root.AddCommand(runCmd, newConfigCommand(keys), newTokenCommand(), newDevicesCommand(), newCheckCommand(),
		newGatewayCommand(), newStatsCommand(), newPolicyCommand(), newDecisionsCommand(), newReplicasCommand(),
		newMigrateCommand(), newBackupCommand(), newRestoreCommand(), newSSFCommand(), newVersionCommand(), newManCommand(root))
	return root
}

// envFlags are flags whose default an environment variable sets. They rank
// above the configuration file: command line, environment, file, default.
var envFlags = map[string]string{"data-dir": "POSTURE_DATA_DIR", "database": "POSTURE_DATABASE"}

// configKeys are the keys of the configuration file: the flags of run.
func configKeys(runCmd *cobra.Command) []string {
	var keys []string
	runCmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			keys = append(keys, f.Name)
		}
	})
	return keys
}

// loadConfig applies the environment and the configuration file to the
// flags of cmd that its command line left unset.
func loadConfig(cmd *cobra.Command, keys []string) error {
	fs := cmd.Flags()
	for name, env := range envFlags {
		if f := fs.Lookup(name); f != nil && !f.Changed && os.Getenv(env) != "" {
			if err := fs.Set(name, os.Getenv(env)); err != nil {
				return usagef("$%s: %w", env, err)
			}
		}
	}
	path, optional := configPath(cmd)
	if _, err := cliflag.Load(path, optional, keys, fs); err != nil {
		return err
	}
	return nil
}

// configPath is the configuration file to read, and whether it may be
// missing (the default path may: a collector needs no file).
func configPath(cmd *cobra.Command) (string, bool) {
	f := cmd.Flags().Lookup("config")
	return f.Value.String(), !f.Changed && os.Getenv("POSTURE_COLLECTOR_CONFIG") == ""
}

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// exactArgs wants n positional arguments, named in usage.
func exactArgs(n int, usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("usage: %s", usage)
		}
		return nil
	}
}

// groupRunE answers a command that only groups others: a missing or
// unknown subcommand is a usage error.
func groupRunE(cmd *cobra.Command, args []string) error {
	if !cmd.HasSubCommands() || cmd.Parent() == nil && len(args) == 0 {
		return cmd.Help()
	}
	if len(args) == 0 {
		return usagef("%s: missing subcommand (%s --help lists them)", cmd.CommandPath(), cmd.CommandPath())
	}
	return usagef("%s: unknown subcommand %q (%s --help lists them)", cmd.CommandPath(), args[0], cmd.CommandPath())
}

// group is a command that holds subcommands.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Args: cobra.ArbitraryArgs, RunE: groupRunE}
	c.AddCommand(subs...)
	return c
}

func dataDirFlag(fs *pflag.FlagSet) *string {
	return fs.String("data-dir", defaultDataDir, "collector data directory (also $POSTURE_DATA_DIR)")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the collector's version and commit",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "posture-collector %s\n", version.String())
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
		Args:   exactArgs(1, "posture-collector man DIR"),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			return doc.GenManTree(root, &doc.GenManHeader{Title: "POSTURE-COLLECTOR", Section: "1", Source: "Posture " + version.Version(), Manual: "Posture"}, args[0])
		},
	}
}
