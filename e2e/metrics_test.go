package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/posture-project/posture/collector"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The metrics listener exposes what the collector accepted, rejected and
// decided.
func TestMetrics(t *testing.T) {
	addr := freeAddr(t)
	e := startCollectorWith(t, func(c *collector.Config) { c.MetricsListen = addr })
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	a := openReports(t, e, cert, key, id)
	if m := a.send(a.next()); m.GetAck() == nil {
		t.Fatalf("honest report: %v", m)
	}
	bad := a.next()
	bad.GetSoftware().Signature[3] ^= 1
	a.send(bad)
	for _, level := range []string{"basic", "trusted", "basic"} {
		if _, err := e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: level}); err != nil {
			t.Fatal(err)
		}
	}
	body := scrape(t, addr)
	for _, want := range []string{
		"posture_reports_accepted_total 1",
		`posture_reports_rejected_total{reason="bad_signature"} 1`,
		`posture_decisions_total{level="basic",result="allow"} 2`,
		`posture_decisions_total{level="trusted",result="allow"} 1`,
		`posture_devices{state="active"} 1`,
		`posture_devices_allowed{level="trusted"} 1`,
		"posture_report_streams 1",
		"posture_report_verify_seconds_count 2",
		"posture_store_history_failures_total 0",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
