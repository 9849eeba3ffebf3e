package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
)

// A second agent on a running agent's state directory refuses to run.
func TestSecondAgentOnStateDirRefused(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	stop := runAgent(t, dir, &fixedMeasurer{encrypted: true}, 50*time.Millisecond)
	defer stop()
	eventually(t, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	second, err := agent.New(agent.Config{StateDir: dir, Interval: time.Minute, Measurer: &fixedMeasurer{encrypted: true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := second.Run(ctx); err == nil || !strings.Contains(err.Error(), "another posture-agent is running") {
		t.Errorf("second agent on the same state directory: %v; want a refusal", err)
	}
}
