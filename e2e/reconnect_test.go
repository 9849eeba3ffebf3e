package e2e

import (
	"testing"
	"time"
)

// An agent hears at once that its report stream ended, also while it has
// nothing to send: after a collector restart it is connected again within
// its reconnect backoff, not only when its next measurement is due.
func TestAgentReconnectsWhileIdle(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	m := &fixedMeasurer{encrypted: true}
	runAgent(t, dir, m, time.Hour)
	eventually(t, "the agent's stream", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() == 1 && e.stats().GetStreamsOpen() == 1
	})
	e.stop()
	e.start()
	eventually(t, "the agent's stream on the restarted collector", func() bool { return e.stats().GetStreamsOpen() == 1 })
	if n := m.count(); n != 1 {
		t.Errorf("%d measurements, want the one at start: the reconnect waited for none", n)
	}
}
