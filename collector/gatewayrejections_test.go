package collector

import (
	"fmt"
	"testing"

	"github.com/posture-project/posture/collector/stats"
)

// TestGatewayRejections counts rejections by front end and reason in
// posture_gateway_rejected_total, and keeps the number of series bounded
// whatever reasons a front end reports.
func TestGatewayRejections(t *testing.T) {
	c, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer stopCollectorForTest(c)
	fa, ext := c.GatewayRejections("forward_auth"), c.GatewayRejections("ext_authz")
	fa.Rejected("gateway_unauthenticated", "gateway not authenticated")
	fa.Rejected("gateway_unauthenticated", "gateway not authenticated")
	ext.Rejected("device_cert_invalid", "source certificate rejected")
	const distinct = 1000
	for i := range distinct {
		ext.Rejected(fmt.Sprintf("reason-%d", i), "")
	}

	families, err := c.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{} // front/reason
	for _, f := range families {
		if f.GetName() != "posture_gateway_rejected_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			got[labels["front"]+"/"+labels["reason"]] = m.GetCounter().GetValue()
		}
	}
	for series, want := range map[string]float64{
		"forward_auth/gateway_unauthenticated": 2,
		"ext_authz/device_cert_invalid":        1,
		// The two above and the first distinct reasons fill the bound.
		"other/other": distinct - (stats.MaxGatewayRejections - 2),
	} {
		if got[series] != want {
			t.Errorf("posture_gateway_rejected_total %s = %v, want %v", series, got[series], want)
		}
	}
	if len(got) > stats.MaxGatewayRejections+1 {
		t.Errorf("%d series after %d distinct reasons; want at most %d", len(got), distinct, stats.MaxGatewayRejections+1)
	}
}
