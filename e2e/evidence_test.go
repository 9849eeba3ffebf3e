package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const recentPolicy = `
freshness: {stale_after: 12h, expire_after: 24h}
checks:
  - {name: disk_encryption, weight: 1}
  - {name: os_version, weight: 1, min_versions: {debian: "12"}}
levels:
  - {name: recent, expr: 'device.evidence_age("os") < duration("1h")'}
`

// A device that dates its measurements years ahead and then goes silent
// does not keep its evidence fresh: the evidence counts as observed when
// the report arrived, so a level that wants it under an hour old denies
// two hours later, and says why. Every way a report is assessed holds to
// this: on arrival, at start from the store, in a policy diff and on a
// policy reload.
func TestFutureObservedAtDoesNotKeepEvidenceFresh(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(file, []byte(recentPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	e := startCollectorWith(t, func(c *collector.Config) { c.Policy, c.PolicyPath = p, file })
	gw := e.gateway("edge")
	ctx := context.Background()

	devices := map[string]string{} // device ID → how far ahead its report is dated
	for _, tt := range []struct {
		name     string
		observed time.Time
	}{
		{"ten years ahead", time.Now().AddDate(10, 0, 0)},
		{"in year 9999", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
	} {
		dir, id := e.enroll()
		cert, key := deviceCreds(t, dir)
		c := openReports(t, e, cert, key, id)
		if m := c.send(c.nextWith(e.clock.Now(), func(r *posturev1.PostureReport) {
			for _, m := range []*posturev1.SignalMeta{r.Os.Meta, r.Disk.Meta, r.SecureBoot.Meta, r.Updates.Meta, r.Firewall.Meta, r.ScreenLock.Meta} {
				m.ObservedAt = timestamppb.New(tt.observed)
			}
		})); m.GetAck() == nil {
			t.Fatalf("report observed %s: %v", tt.name, m)
		}
		devices[id] = tt.name
	}
	decide := func(stage string, wantAllowed bool, wantAge time.Duration) {
		t.Helper()
		for id, name := range devices {
			resp, err := gw.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "recent"})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetAllowed() != wantAllowed {
				t.Errorf("%s, report observed %s: recent allowed = %v (%q), want %v", stage, name, resp.GetAllowed(), resp.GetReasons(), wantAllowed)
			}
			if why := strings.Join(resp.GetReasons(), "; "); !wantAllowed && !strings.Contains(why, `recent: expression is false (device.evidence_age("os") < duration("1h"))`) {
				t.Errorf("%s, report observed %s: denial says %q; want it to name the level's evidence_age rule", stage, name, why)
			}
			if age := resp.GetReportAge().AsDuration(); age < wantAge-time.Minute || age > wantAge+time.Minute {
				t.Errorf("%s, report observed %s: report age %v, want %v", stage, name, age, wantAge)
			}
			d, err := e.admin.GetDevice(ctx, &posturev1.GetDeviceRequest{DeviceId: id})
			if err != nil {
				t.Fatal(err)
			}
			for _, ch := range d.GetChecks() {
				if age := ch.GetEvidenceAge().AsDuration(); age < wantAge-time.Minute || age > wantAge+time.Minute {
					t.Errorf("%s, report observed %s: check %s evidence age %v, want %v, counted from the report's arrival", stage, name, ch.GetName(), age, wantAge)
				}
			}
		}
	}
	diffNothing := func(stage string) {
		t.Helper()
		diff, err := e.admin.DiffPolicy(ctx, &posturev1.DiffPolicyRequest{PolicyYaml: []byte(recentPolicy)})
		if err != nil {
			t.Fatal(err)
		}
		if len(diff.GetChanges()) != 0 {
			t.Errorf("%s: the policy in force diffed against itself changes %v; want nothing", stage, diff.GetChanges())
		}
	}
	reload := func() {
		t.Helper()
		if _, err := e.admin.ReloadPolicy(ctx, &posturev1.ReloadPolicyRequest{}); err != nil {
			t.Fatal(err)
		}
	}

	decide("just after the reports", true, 0)
	diffNothing("just after the reports")
	reload()
	e.stop()
	e.start()
	decide("after a reload and a restart", true, 0)

	// The devices go silent; two hours pass on the collector's clock.
	e.clock.Advance(2 * time.Hour)
	decide("two hours later", false, 2*time.Hour)
	diffNothing("two hours later")
	reload()
	decide("two hours later, after a reload", false, 2*time.Hour)
}
