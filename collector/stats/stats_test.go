package stats

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Counts go straight into the Prometheus counters: a scrape of /metrics
// serves each under its name and labels, and Snapshot (what GetStats and
// posture-collector stats print) reads the same numbers.
func TestCountsScrapedAndSnapshot(t *testing.T) {
	s := New()
	s.Accepted()
	s.Accepted()
	s.Rejected("bad_signature")
	s.Rejected("rate_limited")
	s.Rejected("rate_limited")
	s.StreamRefused("storage")
	s.Enrolled()
	s.EnrollRejected("token_unknown")
	s.Denied("/posture.v1.AdminService/ListDevices")
	s.GatewayRejected("forward_auth", "no_certificate")
	s.Renewed()
	s.Renewed()
	s.Renewed()
	s.RenewRejected("revoked")
	s.AnonymousRefused("conns_per_peer")
	s.BrowserCertIssued()
	s.BrowserCertRefused("device_state")

	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	body := scrape(t, srv.URL+"/metrics")
	for _, want := range []string{
		"posture_reports_accepted_total 2",
		`posture_reports_rejected_total{reason="bad_signature"} 1`,
		`posture_reports_rejected_total{reason="rate_limited"} 2`,
		`posture_report_streams_refused_total{reason="storage"} 1`,
		"posture_enrollments_total 1",
		`posture_enrollments_rejected_total{reason="token_unknown"} 1`,
		`posture_rpc_denied_total{method="/posture.v1.AdminService/ListDevices"} 1`,
		`posture_gateway_rejected_total{front="forward_auth",reason="no_certificate"} 1`,
		"posture_certificates_renewed_total 3",
		`posture_certificate_renewals_rejected_total{reason="revoked"} 1`,
		`posture_anonymous_refused_total{limit="conns_per_peer"} 1`,
		"posture_browser_certificates_issued_total 1",
		`posture_browser_certificates_refused_total{reason="device_state"} 1`,
		"# HELP posture_reports_rejected_total Reports rejected, by reason.",
		"# TYPE posture_reports_rejected_total counter",
	} {
		if !hasLine(body, want) {
			t.Errorf("/metrics lacks the line %q; it serves:\n%s", want, body)
		}
	}

	want := Snapshot{
		ReportsAccepted: 2, Enrollments: 1, CertsRenewed: 3,
		ReportsRejected:     map[string]uint64{"bad_signature": 1, "rate_limited": 2},
		EnrollmentsRejected: map[string]uint64{"token_unknown": 1},
		RPCDenied:           map[string]uint64{"/posture.v1.AdminService/ListDevices": 1},
		RenewalsRejected:    map[string]uint64{"revoked": 1},
		StreamsRefused:      map[string]uint64{"storage": 1},
		GatewayRejected:     map[GatewayRejection]uint64{{"forward_auth", "no_certificate"}: 1},
		AnonRefused:         map[string]uint64{"conns_per_peer": 1},
		BrowserCertsIssued:  1,
		BrowserCertsRefused: map[string]uint64{"device_state": 1},
	}
	if d := cmp.Diff(want, s.Snapshot()); d != "" {
		t.Errorf("Snapshot (-want +got):\n%s", d)
	}
}

// Nothing counted: the counters without labels are served as 0, the
// vectors not at all, and Snapshot has empty maps (GetStats prints {}).
func TestZeroCounts(t *testing.T) {
	s := New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	body := scrape(t, srv.URL+"/metrics")
	for _, want := range []string{"posture_reports_accepted_total 0", "posture_enrollments_total 0", "posture_certificates_renewed_total 0"} {
		if !hasLine(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "posture_reports_rejected_total") {
		t.Errorf("a vector with nothing counted is served:\n%s", body)
	}
	got := s.Snapshot()
	if got.ReportsRejected == nil || len(got.ReportsRejected) != 0 || got.ReportsAccepted != 0 {
		t.Errorf("Snapshot of nothing: %+v", got)
	}
}

// Past MaxGatewayRejections distinct pairs, further pairs count as
// other/other instead of making new series; pairs already seen still
// count under their own labels.
func TestGatewayRejectionsBounded(t *testing.T) {
	s := New()
	for i := range MaxGatewayRejections {
		s.GatewayRejected("ext_authz", fmt.Sprintf("reason%d", i))
	}
	s.GatewayRejected("ext_authz", "one_too_many")
	s.GatewayRejected("ext_authz", "another")
	s.GatewayRejected("ext_authz", "reason0")
	got := s.Snapshot().GatewayRejected
	if len(got) != MaxGatewayRejections+1 {
		t.Errorf("%d series, want %d", len(got), MaxGatewayRejections+1)
	}
	if n := got[GatewayRejection{"other", "other"}]; n != 2 {
		t.Errorf("other/other = %d, want 2", n)
	}
	if n := got[GatewayRejection{"ext_authz", "reason0"}]; n != 2 {
		t.Errorf("ext_authz/reason0 = %d, want 2", n)
	}
	if _, ok := got[GatewayRejection{"ext_authz", "one_too_many"}]; ok {
		t.Error("a pair past the bound has its own series")
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func hasLine(body, line string) bool {
	for l := range strings.Lines(body) {
		if strings.TrimSuffix(l, "\n") == line {
			return true
		}
	}
	return false
}
