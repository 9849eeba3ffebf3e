package signals

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestExecRunner(t *testing.T) {
	ctx := context.Background()
	t.Run("exit code and output", func(t *testing.T) {
		stdout, stderr, code, err := execRunner{}.Run(ctx, "sh", "-c", "echo out; echo err >&2; exit 3")
		if err != nil || code != 3 || string(stdout) != "out\n" || string(stderr) != "err\n" {
			t.Errorf("Run = %q, %q, %d, %v; want \"out\\n\", \"err\\n\", 3, nil", stdout, stderr, code, err)
		}
	})
	t.Run("C locale", func(t *testing.T) {
		stdout, _, _, err := execRunner{}.Run(ctx, "sh", "-c", "echo $LC_ALL")
		if err != nil || strings.TrimSpace(string(stdout)) != "C" {
			t.Errorf("LC_ALL = %q, %v; want C", stdout, err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, _, _, err := execRunner{}.Run(ctx, "posture-no-such-command")
		if !errors.Is(err, exec.ErrNotFound) {
			t.Errorf("err = %v, want exec.ErrNotFound", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		c := New(Options{CommandTimeout: 100 * time.Millisecond})
		start := time.Now()
		_, _, _, err := c.run(ctx, "sleep", "30")
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "sleep 30 did not finish within 100ms") {
			t.Errorf("err = %v, want a deadline error naming the command", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("run took %v after its timeout", d)
		}
	})
}
