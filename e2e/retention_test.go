package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// TestReportRetention deletes reports past the retention, keeps each
// device's latest posture however old, and lets chains continue across a
// restart.
func TestReportRetention(t *testing.T) {
	metricsAddr := freeAddr(t)
	e := startCollectorWith(t, func(c *collector.Config) {
		c.ReportRetention = 24 * time.Hour
		c.MetricsListen = metricsAddr
	})
	dirA, idA := e.enroll()
	dirB, idB := e.enroll()
	certA, keyA := deviceCreds(t, dirA)
	certB, keyB := deviceCreds(t, dirB)
	a := openReports(t, e, certA, keyA, idA)
	b := openReports(t, e, certB, keyB, idB)
	send := func(c *reportClient) {
		t.Helper()
		if m := c.send(c.nextAt(e.clock.Now())); m.GetAck() == nil {
			t.Fatalf("report %d of %s: %v", c.seq+1, c.id, m)
		}
	}

	// Two days ago: three reports of A, one of B (its latest ever).
	e.clock.Advance(-48 * time.Hour)
	send(a)
	send(a)
	send(a)
	send(b)
	e.clock.Advance(48 * time.Hour)
	send(a)

	ctx := context.Background()
	pruned := 0
	// Reports are pruned once indexed by device, within a second of arriving.
	eventually(t, "old reports pruned", func() bool {
		n, err := e.c.PruneReports(ctx)
		if err != nil {
			t.Fatalf("PruneReports: %v", err)
		}
		pruned += n
		return pruned >= 3
	})
	if n, _ := e.c.PruneReports(ctx); pruned+n != 3 {
		t.Errorf("pruned %d reports, want 3 (A's first three; B's only report is its latest)", pruned+n)
	}
	body := scrape(t, metricsAddr)
	if !strings.Contains(string(body), "posture_store_reports_pruned_total 3") {
		t.Errorf("metrics lack posture_store_reports_pruned_total 3")
	}

	latest := func(id string, seq uint64) {
		t.Helper()
		p, err := e.gwLocal.GetDevicePosture(ctx, &posturev1.GetDevicePostureRequest{DeviceId: id})
		if err != nil {
			t.Fatalf("GetDevicePosture %s: %v", id, err)
		}
		if p.GetReport().GetSeq() != seq || p.GetDevice().GetLastSeq() != seq {
			t.Errorf("%s: latest report %d, last seq %d; want %d", id, p.GetReport().GetSeq(), p.GetDevice().GetLastSeq(), seq)
		}
	}
	latest(idA, 4)
	latest(idB, 1)

	// After a restart the fleet loads from the kept heads and both chains
	// go on.
	e.stop()
	e.start()
	latest(idA, 4)
	latest(idB, 1)
	a = openReports(t, e, certA, keyA, idA)
	b = openReports(t, e, certB, keyB, idB)
	send(a)
	send(b)
	latest(idA, 5)
	latest(idB, 2)
}

// Without a retention nothing is deleted.
func TestNoReportRetention(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	a := openReports(t, e, cert, key, id)
	e.clock.Advance(-1000 * 24 * time.Hour)
	for range 3 {
		if m := a.send(a.nextAt(e.clock.Now())); m.GetAck() == nil {
			t.Fatalf("report: %v", m)
		}
	}
	e.clock.Advance(1000 * 24 * time.Hour)
	e.stop() // indexes every report by device, which pruning waits for
	e.start()
	if n, err := e.c.PruneReports(context.Background()); err != nil || n != 0 {
		t.Errorf("PruneReports without a retention = %d, %v; want 0", n, err)
	}
}
