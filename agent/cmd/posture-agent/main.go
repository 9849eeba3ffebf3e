// Command posture-agent measures this device and streams signed posture
// reports to a Posture collector. It runs as a system service.
package main

import (
	"context"
	"errors"
	"flag"
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
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/signals"
	"github.com/posture-project/posture/internal/inert"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const usage = `posture-agent measures this device and streams signed posture reports.

Usage:
  posture-agent enroll --token TOKEN [--state-dir DIR] [--identity auto|tpm|software] [--tpm tcp://HOST:PORT]
  posture-agent run [--state-dir DIR] [--interval 1m]     foreground; what the service runs
  posture-agent collect [-o json|text]                    measure now, print, send nothing
  posture-agent install [--state-dir DIR] [--interval 1m] install the system service
  posture-agent uninstall|start|stop|status               manage the system service
  posture-agent browser-cert [--watch 10m] [--remove]     as the user: the browser certificate in the user's store
  posture-agent version
`

func defaultStateDir() string {
	switch runtime.GOOS {
	case "windows":
		return filepath.Join(envOr("ProgramData", `C:\ProgramData`), "Posture", "agent")
	case "darwin":
		return "/Library/Application Support/Posture/agent"
	}
	return "/var/lib/posture-agent"
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		// Errors carry what the collector answered (a rejection, a
		// revocation's reason) and the address a token named.
		fmt.Fprintln(os.Stderr, "posture-agent:", inert.Text(err.Error()))
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(out, usage)
		return nil
	}
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	stateDir := fs.String("state-dir", envOr("POSTURE_AGENT_STATE_DIR", defaultStateDir()), "agent state directory (keys, certificates, spool)")
	interval := fs.Duration("interval", time.Minute, "time between measurements")
	switch cmd {
	case "enroll":
		tok := fs.String("token", "", "enrollment token from posture-collector token create (required)")
		ident := fs.String("identity", agent.IdentityAuto, "identity: auto (TPM when reachable, else software), tpm or software")
		tpmAddr := fs.String("tpm", "", "TPM to use: empty for the platform TPM, or tcp://HOST:PORT for swtpm")
		eventLog := fs.String("event-log", "", "TCG event log to send with quotes (default: the platform's)")
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if *tok == "" {
			return errors.New("--token is required: ask your admin for one (posture-collector token create)")
		}
		res, err := agent.EnrollWith(context.Background(), *stateDir, *tok, agent.EnrollOptions{Identity: *ident, TPM: *tpmAddr, EventLog: *eventLog})
		if err != nil {
			return err
		}
		if res.Note != "" {
			inert.Fprintf(out, "note: %s\n", res.Note)
		}
		// The device ID comes from the collector, the address from the token.
		inert.Fprintf(out, "enrolled as device %s (%s) with %s; identity: %s, assurance: %s\n", res.DeviceID, res.SPIFFEID, res.Collector, res.Identity,
			strings.ToLower(strings.TrimPrefix(res.Assurance.String(), "IDENTITY_ASSURANCE_")))
		if res.State == posturev1.DeviceState_DEVICE_STATE_PENDING {
			inert.Fprintf(out, "the device is pending: its TPM endorsement key is not verified; an admin must run posture-collector devices approve %s\n", res.DeviceID)
		}
		return nil
	case "run":
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if !service.Interactive() {
			// Started by the service manager (Windows SCM needs the handshake).
			s, err := newService(*stateDir, *interval)
			if err != nil {
				return err
			}
			return s.Run()
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runAgent(ctx, *stateDir, *interval)
	case "collect":
		format := fs.String("o", "json", "output format: json or text")
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		opts := protojson.MarshalOptions{Multiline: true, Indent: "  "}
		switch *format {
		case "json":
		case "text":
			opts = protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}
		default:
			return fmt.Errorf("-o %q: want json or text", *format) // before measuring, which can take minutes
		}
		// A one-shot measurement waits for the package manager, which a
		// running agent does not let stall a report.
		r := signals.New(signals.Options{FirstSlowWait: 3 * time.Minute}).Collect(context.Background())
		b, err := opts.Marshal(r)
		if err != nil {
			return err
		}
		// Measurements hold text anyone on the machine may set (a volume
		// label, a host name): escaped, so the output is safe to read.
		fmt.Fprintln(out, string(inert.JSON(b)))
		return nil
	case "install", "uninstall", "start", "stop", "status":
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		return control(cmd, *stateDir, *interval, out)
	case "version":
		fmt.Fprintln(out, agent.Version)
		return nil
	case "notify":
		return notifyCommand(rest)
	case "browser-cert":
		return browserCertCommand(rest, out)
	}
	return fmt.Errorf("unknown command %q\n\n%s", cmd, usage)
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
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
	log.Info("agent running", "device", a.DeviceID(), "state_dir", stateDir, "interval", interval)
	return a.Run(ctx)
}

// newLogger logs text to standard error, inert: records quote what the
// collector sent (rejections) and what the machine measured.
func newLogger() *slog.Logger {
	return slog.New(inert.NewTextHandler(os.Stderr, nil))
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

func newService(stateDir string, interval time.Duration) (service.Service, error) {
	cfg := &service.Config{
		Name:        "posture-agent",
		DisplayName: "Posture agent",
		Description: "Measures device posture and streams signed reports to the Posture collector.",
		Arguments:   []string{"run", "--state-dir", stateDir, "--interval", interval.String()},
	}
	if runtime.GOOS == "linux" {
		cfg.Dependencies = []string{"After=network-online.target", "Wants=network-online.target"}
	}
	s, err := service.New(&program{stateDir: stateDir, interval: interval}, cfg)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	return s, nil
}

func control(action, stateDir string, interval time.Duration, out io.Writer) error {
	s, err := newService(stateDir, interval)
	if err != nil {
		return err
	}
	if action == "status" {
		st, err := s.Status()
		if err != nil {
			return fmt.Errorf("service status (%s): %w", s.Platform(), err)
		}
		names := map[service.Status]string{service.StatusRunning: "running", service.StatusStopped: "stopped", service.StatusUnknown: "unknown"}
		fmt.Fprintf(out, "posture-agent service (%s): %s\n", s.Platform(), names[st])
		return nil
	}
	if err := service.Control(s, action); err != nil {
		return fmt.Errorf("%s service (%s): %w", action, s.Platform(), err)
	}
	fmt.Fprintf(out, "posture-agent service: %s done (%s)\n", action, s.Platform())
	if action == "uninstall" {
		removeUsersBrowserCerts(out)
	}
	return nil
}
