package policy

import (
	"strings"
	"testing"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A level that requires a check the subject's assessment lacks (it was
// assessed under another policy) denies: an unknown check never passes.
func TestRequireMissingCheckDenies(t *testing.T) {
	old, err := Parse([]byte(`freshness: {stale_after: 1h, expire_after: 2h}
checks:
  - {name: screen_lock, weight: 1, max_timeout: 15m}
levels:
  - {name: trusted, min_score: 0, require: [screen_lock]}
`))
	if err != nil {
		t.Fatal(err)
	}
	cur, err := Parse([]byte(`freshness: {stale_after: 1h, expire_after: 2h}
checks:
  - {name: disk_encryption, weight: 1}
levels:
  - {name: trusted, min_score: 0, require: [disk_encryption]}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := report(func(r *posturev1.PostureReport) {
		r.Disk.SystemEncrypted = false
		r.ScreenLock.Enabled = false
	})
	s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assurance: posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE, Assessment: old.Assess(r), ReportAt: t0}
	allowed, _, reasons := cur.Decide(s, "trusted", t0)
	if allowed || len(reasons) == 0 || !strings.Contains(strings.Join(reasons, "; "), "disk_encryption") {
		t.Errorf("Decide under a policy whose required check the assessment lacks = %v, %q; want a denial naming disk_encryption", allowed, reasons)
	}
	if _, set := cur.AllowedSet(s, t0); set != 0 {
		t.Errorf("AllowedSet = %b, want no level", set)
	}
}
