package signals

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
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

// TestCollectPendingThisMachine checks that the signals the report has no
// field for yet are measured, and say how.
func TestCollectPendingThisMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, p := New(Options{}).collect(ctx)
	for name, meta := range map[string]*posturev1.SignalMeta{
		"other volumes":       p.otherVolumes.meta,
		"endpoint protection": p.endpoint.meta,
		"auto-update":         p.autoUpdate.meta,
	} {
		if meta == nil || meta.GetStatus() == posturev1.Status_STATUS_UNSPECIFIED {
			t.Errorf("%s: no status (%v)", name, meta)
			continue
		}
		if meta.GetStatus() != posturev1.Status_STATUS_OK && meta.GetReason() == "" {
			t.Errorf("%s: status %v without a reason", name, meta.GetStatus())
		}
		t.Logf("%s: %v %q", name, meta.GetStatus(), meta.GetReason())
	}
	for _, v := range p.otherVolumes.volumes {
		t.Logf("other volume %s %s encrypted=%v: %s", v.GetMountPoint(), v.GetDevice(), v.GetEncrypted(), v.GetDetail())
	}
	t.Logf("auto-update: %s enabled=%v %s", p.autoUpdate.mechanism, p.autoUpdate.enabled, p.autoUpdate.detail)
	if p.lastInstalled.meta != nil {
		t.Errorf("last installed update measured on Linux: %v", p.lastInstalled)
	}
}
