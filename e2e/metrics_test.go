package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"

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
	used := e.token(time.Hour, 1)
	for range 2 {
		agent.Enroll(context.Background(), t.TempDir(), used) // the second is refused: token_used
	}
	body := scrape(t, addr)
	for _, want := range []string{
		"posture_reports_accepted_total 1",
		"posture_enrollments_total 2",
		`posture_enrollments_rejected_total{reason="token_used"} 1`,
		`posture_reports_rejected_total{reason="bad_signature"} 1`,
		`posture_decisions_total{level="basic",result="allow"} 2`,
		`posture_decisions_total{level="trusted",result="allow"} 1`,
		`posture_devices{state="active"} 2`,
		`posture_devices_allowed{level="trusted"} 1`,
		"posture_report_streams 1",
		"posture_report_verify_seconds_count 2",
		"posture_store_history_failures_total 0",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// posture-collector stats (GetStats) and /metrics read the same
	// counters: every count the one prints, the other serves.
	st := e.stats()
	got := metricValues(body)
	want := map[string]uint64{
		"posture_reports_accepted_total":     st.GetReportsAccepted(),
		"posture_enrollments_total":          st.GetEnrollments(),
		"posture_certificates_renewed_total": st.GetCertificatesRenewed(),
	}
	for name, m := range map[string]map[string]uint64{
		`posture_reports_rejected_total{reason="%s"}`:              st.GetReportsRejected(),
		`posture_enrollments_rejected_total{reason="%s"}`:          st.GetEnrollmentsRejected(),
		`posture_rpc_denied_total{method="%s"}`:                    st.GetRpcDenied(),
		`posture_certificate_renewals_rejected_total{reason="%s"}`: st.GetRenewalsRejected(),
	} {
		for label, n := range m {
			want[fmt.Sprintf(name, label)] = n
		}
	}
	if len(st.GetReportsRejected()) == 0 || len(st.GetEnrollmentsRejected()) == 0 {
		t.Fatalf("stats count no refusal: %v", st)
	}
	for series, n := range want {
		if v, ok := got[series]; !ok || v != float64(n) {
			t.Errorf("/metrics serves %s = %v (present %v), stats say %d", series, v, ok, n)
		}
	}
}

// metricValues reads the series of a Prometheus text exposition.
func metricValues(body string) map[string]float64 {
	out := map[string]float64{}
	for l := range strings.Lines(body) {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}
