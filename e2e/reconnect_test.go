package e2e

import (
	"log/slog"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// An agent hears at once that its report stream ended, also while it has
// nothing to send: after a collector restart it is connected again within
// its reconnect backoff, not only when its next measurement is due, and
// logs that its stream is back.
func TestAgentReconnectsWhileIdle(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	m := &fixedMeasurer{encrypted: true}
	logs := &testtools.LogRecorder{}
	runAgentLogged(t, dir, m, time.Hour, slog.New(logs))
	eventually(t, "the agent's stream", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() == 1 && e.stats().GetStreamsOpen() == 1
	})
	e.stop()
	e.start()
	eventually(t, "the agent's stream on the restarted collector", func() bool { return e.stats().GetStreamsOpen() == 1 })
	// The agent says so when its stream is back after an outage.
	eventually(t, "the agent logging its stream back", func() bool {
		for _, l := range logs.Messages(slog.LevelInfo) {
			if l == "report stream back" {
				return true
			}
		}
		return false
	})
	if n := m.count(); n != 1 {
		t.Errorf("%d measurements, want the one at start: the reconnect waited for none", n)
	}
}
