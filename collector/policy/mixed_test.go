package policy

import (
	"slices"
	"strings"
	"testing"
	"time"

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
	s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assurance: posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE, Assessment: old.Assess(r, t0), ReportAt: t0}
	allowed, _, reasons := cur.Decide(s, "trusted", t0)
	if allowed || len(reasons) == 0 || !strings.Contains(strings.Join(reasons, "; "), "disk_encryption") {
		t.Errorf("Decide under a policy whose required check the assessment lacks = %v, %q; want a denial naming disk_encryption", allowed, reasons)
	}
	if _, set := cur.AllowedSet(s, t0); set != 0 {
		t.Errorf("AllowedSet = %b, want no level", set)
	}
}

// Expired evidence meets no level, including levels without a minimum
// score that read only required checks or an expression; and a score is
// rounded down, so 79.5% does not meet 80.
func TestExpiryAndRounding(t *testing.T) {
	p, err := Parse([]byte(`freshness: {stale_after: 1h, expire_after: 2h}
checks:
  - {name: disk_encryption, weight: 159}
  - {name: firewall, weight: 41}
levels:
  - {name: encrypted, require: [disk_encryption]}
  - {name: fw, expr: 'device.firewall.enabled'}
  - {name: eighty, min_score: 80}
`))
	if err != nil {
		t.Fatal(err)
	}
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	healthy := &Subject{State: active, Assessment: p.Assess(report(nil), t0), ReportAt: t0}
	for _, tt := range []struct {
		level   string
		age     time.Duration
		allowed bool
	}{
		{"encrypted", 90 * time.Minute, true},
		{"fw", 90 * time.Minute, true},
		{"encrypted", 2 * time.Hour, false},
		{"fw", 2 * time.Hour, false},
		{"encrypted", 365 * 24 * time.Hour, false},
		{"fw", 365 * 24 * time.Hour, false},
	} {
		allowed, _, reasons := p.Decide(healthy, tt.level, t0.Add(tt.age))
		if allowed != tt.allowed {
			t.Errorf("%s after %s: allowed %v (%v), want %v", tt.level, tt.age, allowed, reasons, tt.allowed)
		}
		if !allowed && !strings.Contains(strings.Join(reasons, " "), "past expire_after 2h0m0s") {
			t.Errorf("%s after %s: reasons %v, want the expiry", tt.level, tt.age, reasons)
		}
		if _, set := p.AllowedSet(healthy, t0.Add(tt.age)); slices.Contains(p.Names(set), tt.level) != tt.allowed {
			t.Errorf("%s after %s: AllowedSet disagrees with Decide", tt.level, tt.age)
		}
	}

	// 159 of 200 is 79.5%.
	noFirewall := &Subject{State: active, Assessment: p.Assess(report(func(r *posturev1.PostureReport) { r.Firewall.Enabled = false }), t0), ReportAt: t0}
	if allowed, score, reasons := p.Decide(noFirewall, "eighty", t0); allowed || score != 79 {
		t.Errorf("79.5%%: allowed %v with score %d (%v); want denied with 79", allowed, score, reasons)
	}
}
