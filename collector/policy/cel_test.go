package policy

import (
	"strings"
	"testing"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func celPolicy(t *testing.T, expr string) *Policy {
	t.Helper()
	p, err := Parse([]byte(`
freshness: {stale_after: 1h, expire_after: 2h}
checks: [{name: disk_encryption, weight: 1}]
levels: [{name: l, expr: '` + expr + `'}]
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestCELLevels(t *testing.T) {
	tpm := posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED
	sw := posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE
	tests := []struct {
		name      string
		expr      string
		report    *posturev1.PostureReport
		assurance posturev1.IdentityAssurance
		at        time.Duration
		allowed   bool
		reason    string
	}{
		{"issue example holds", `device.score >= 80 && device.identity.assurance == "tpm_ek_verified" && device.disk.system_encrypted && device.evidence_age("os") < duration("24h")`, report(nil), tpm, 0, true, ""},
		{"issue example, software identity", `device.score >= 80 && device.identity.assurance == "tpm_ek_verified"`, report(nil), sw, 0, false, "expression is false"},
		{"unknown disk denies", `device.disk.system_encrypted`, report(func(r *posturev1.PostureReport) {
			r.Disk.Meta.Status = posturev1.Status_STATUS_UNAVAILABLE
		}), sw, 0, false, "could not be evaluated"},
		{"evidence too old", `device.evidence_age("os") < duration("30m")`, report(nil), sw, 45 * time.Minute, false, "expression is false"},
		{"evidence of an unmeasured section", `device.evidence_age("firewall") < duration("1h")`, report(func(r *posturev1.PostureReport) { r.Firewall = nil }), sw, 0, false, "no measured evidence"},
		{"check outcomes", `device.checks.disk_encryption == "pass"`, report(nil), sw, 0, true, ""},
		{"updates", `device.updates.security_pending == 0 && !device.updates.reboot_required`, report(nil), sw, 0, true, ""},
		{"os version", `device.os.name == "ubuntu" && device.os.version in ["22.04", "24.04"]`, report(nil), sw, 0, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := celPolicy(t, tt.expr)
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assurance: tt.assurance, Assessment: p.Assess(tt.report), ReportAt: t0}
			allowed, _, reasons := p.Decide(s, "l", t0.Add(tt.at))
			if allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (%v)", allowed, tt.allowed, reasons)
			}
			if !allowed && !strings.Contains(strings.Join(reasons, " "), tt.reason) {
				t.Errorf("reasons %v lack %q", reasons, tt.reason)
			}
		})
	}
}

func TestCELCompileErrors(t *testing.T) {
	tests := []struct{ expr, want string }{
		{`device.score >=`, "<input>:1:"},
		{`device.score + 1`, "want bool"},
		{`devices.score > 1`, "undeclared reference to 'devices'"},
		{`device.evidence_age(1) < duration("1h")`, "found no matching overload"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: l, expr: '" + tt.expr + "'}]"))
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "levels[0] l: expr") {
			t.Errorf("Parse(%q) = %v, want an error naming the level and containing %q", tt.expr, err, tt.want)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	for _, bc := range []struct{ name, expr string }{
		{"score-only", ""},
		{"cel", `device.score >= 80 && device.disk.system_encrypted && device.evidence_age("os") < duration("24h")`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			y := "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: l, min_score: 50"
			if bc.expr != "" {
				y += ", expr: '" + bc.expr + "'"
			}
			p, err := Parse([]byte(y + "}]"))
			if err != nil {
				b.Fatal(err)
			}
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.Assess(report(nil)), ReportAt: t0}
			b.ReportAllocs()
			for b.Loop() {
				if ok, _, _ := p.Decide(s, "l", t0); !ok {
					b.Fatal("denied")
				}
			}
		})
	}
}
