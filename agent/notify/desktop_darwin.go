package notify

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// macDesktop shows notifications with AppleScript's display notification
// (osascript), in the session of the user at the console: as the system
// service (root) through launchctl asuser, so that it reaches that user's
// notification center.
type macDesktop struct{}

// New is this machine's desktop.
func New() Desktop { return macDesktop{} }

// appleString quotes s as an AppleScript string literal.
func appleString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func (macDesktop) Notify(title, body string) error {
	script := fmt.Sprintf("display notification %s with title %s", appleString(body), appleString(title))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	if os.Getuid() == 0 {
		st, err := os.Stat("/dev/console")
		if err != nil {
			return ErrNoSession
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok || sys.Uid == 0 {
			return ErrNoSession // the login window: nobody logged in
		}
		cmd = exec.CommandContext(ctx, "/bin/launchctl", "asuser", strconv.Itoa(int(sys.Uid)), "/usr/bin/osascript", "-e", script)
	} else {
		cmd = exec.CommandContext(ctx, "/usr/bin/osascript", "-e", script)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("osascript: %v: %s", err, out)
	}
	return nil
}
