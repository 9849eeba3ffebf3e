package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/agent/notify"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// notifier tells the device's user of failing checks, on the desktop, as
// the collector's acknowledgements describe them (agent/notify); what was
// shown is kept in the state directory.
func notifier(stateDir string, log *slog.Logger) func(*posturev1.DeviceStanding) {
	p, err := notify.NewPlanner(filepath.Join(stateDir, "notify.json"))
	if err != nil {
		log.Warn("desktop notifications off", "err", err)
		return nil
	}
	n := &notify.Notifier{Planner: p, Desktop: notify.New(), Logf: func(format string, args ...any) {
		log.Info("notification", "detail", fmt.Sprintf(format, args...))
	}}
	// Off the report stream: a slow desktop must not hold up reports.
	updates := make(chan *posturev1.DeviceStanding, 1)
	go func() {
		for st := range updates {
			n.Update(st)
		}
	}()
	return func(st *posturev1.DeviceStanding) {
		select {
		case updates <- st:
		default: // one is waiting already; the next acknowledgement brings news
		}
	}
}

// newNotifyCommand is "posture-agent notify --title T --body B": what the
// agent, running as the system service, runs as a logged-in user to show
// a notification in that user's session (on Linux, whose session bus
// admits only its owner).
func newNotifyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "notify --title TITLE [--body TEXT]",
		Short:  "Show a desktop notification in this user's session (run by the agent service)",
		Hidden: true,
		Args:   noArgs,
		// Run as the logged-in user, who may not read the agent's
		// configuration file; notify needs none of it.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
	}
	title := cmd.Flags().String("title", "", "the notification's title")
	body := cmd.Flags().String("body", "", "its text")
	cmd.RunE = func(*cobra.Command, []string) error {
		if *title == "" {
			return usagef("notify: --title is required")
		}
		addr := os.Getenv("DBUS_SESSION_BUS_ADDRESS")
		if addr == "" {
			return errors.New("notify: no session bus (DBUS_SESSION_BUS_ADDRESS is empty)")
		}
		return notifyBus(addr, *title, *body)
	}
	return cmd
}
