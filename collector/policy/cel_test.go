package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

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
		{"has of a measured section", `!has(device.firewall) || device.firewall.enabled`, report(func(r *posturev1.PostureReport) { r.Firewall.Enabled = false }), sw, 0, false, "expression is false"},
		{"has of an unmeasured section", `!has(device.firewall) || device.firewall.enabled`, report(func(r *posturev1.PostureReport) { r.Firewall = nil }), sw, 0, true, ""},
		{"every check passes", `device.checks.all(c, device.checks[c] == "pass")`, report(func(r *posturev1.PostureReport) { r.Disk.SystemEncrypted = false }), sw, 0, false, "expression is false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := celPolicy(t, tt.expr)
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assurance: tt.assurance, Assessment: p.Assess(tt.report, t0), ReportAt: t0}
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
	tests := []struct{ name, expr, want string }{
		{"syntax", `device.score >=`, "at line 1, column 16 of the expression: Syntax error"},
		{"not a bool", `device.score + 1`, "want bool"},
		{"undeclared variable", `devices.score > 1`, "undeclared reference to 'devices'"},
		{"wrong argument type", `device.evidence_age(1) < duration("1h")`, "found no matching overload"},
		{"misspelt field", `device.scor >= 80`, `at line 1, column 8 of the expression: device has no field "scor"; it has checks, disk,`},
		{"misspelt field under has", `!has(device.firewal) || device.firewall.enabled`, `at line 1, column 13 of the expression: device has no field "firewal"`},
		{"field under has named like its parent", "has(device.os.os)", "at line 1, column 15 of the expression: device.os has no field \"os\""},
		{"misspelt field under has across lines", "device.score > 1 ||\n  has( device.os\n    . nam)", "at line 3, column 7 of the expression: device.os has no field \"nam\"; it has kernel_version, name, platform, version\n |     . nam)\n | ......^"},
		{"misspelt nested field", `device.identity.assurence == "software"`, `device.identity has no field "assurence"; it has assurance`},
		{"misspelt field by index", `device["scor"] >= 80`, `device has no field "scor"`},
		{"misspelt field under in", `"firewal" in device`, `device has no field "firewal"`},
		{"field of a value", `device.score.value > 1`, `device.score is a value without fields`},
		{"misspelt check", `device.checks.disk_encrytion == "pass"`, `device.checks has no check "disk_encrytion"; the policy's checks are disk_encryption`},
		{"check the policy does not define", `device.checks.firewall == "pass"`, `device.checks has no check "firewall"`},
		{"misspelt check under in", `"disk_encrytion" in device.checks`, `device.checks has no check "disk_encrytion"`},
		{"misspelt section", `device.evidence_age("sceen_lock") < duration("1h")`, `at line 1, column 21 of the expression: device.evidence_age has no section "sceen_lock"; sections are disk, firewall, os, screen_lock, secure_boot, updates`},
		{"internal key", `device["@now"] != null`, `device has no field "@now"`},
		{"position on a later line", "device.score > 1 &&\n  devce.score > 2", "at line 2, column 3 of the expression: undeclared reference to 'devce'"},
		{"caret under the error", "device.score > 1 &&\n  device.scor > 2", "\n |   device.scor > 2\n | .........^"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := fmt.Sprintf("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels:\n  - name: l\n    expr: %q\n", tt.expr)
			_, err := Parse([]byte(y))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "line 5: levels[0] l: expr: ") {
				t.Errorf("Parse(%q) = %v, want an error naming the level and containing %q", tt.expr, err, tt.want)
			}
		})
	}
}

// Names the device view has compile, whatever the syntax that reads them.
func TestCELCompiles(t *testing.T) {
	for _, expr := range []string{
		`has(device.secure_boot.setup_mode)`,
		`device["os"]["name"] == "ubuntu"`,
		`"disk_encryption" in device.checks && "os" in device`,
		`device.checks.exists(c, device.checks[c] == "fail")`,
		`device.evidence_age(device.os.name) < duration("1h")`,
		`device.state == "active" && device.report_age < duration("1h") && device.raw_score >= device.score`,
		`[device.os, device.disk].size() == 2 && {"a": device.score}.a > 0`,
	} {
		t.Run(expr, func(t *testing.T) {
			if _, err := Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: l, expr: '" + expr + "'}]")); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

// Every name the schema accepts is there at run time for a device that
// measured everything: what compiles evaluates.
func TestCELSchemaPathsEvaluate(t *testing.T) {
	p, err := Parse(append(slices.Clip(defaultYAML), "  - {name: cel, expr: device.score >= 0}\n"...))
	if err != nil {
		t.Fatal(err)
	}
	schema := newDeviceSchema(p)
	var paths []string
	var walk func(prefix string, f fieldTree)
	walk = func(prefix string, f fieldTree) {
		for k, sub := range f {
			if sub == nil {
				paths = append(paths, prefix+"."+k)
				continue
			}
			walk(prefix+"."+k, sub)
		}
	}
	walk("device", schema.fields)
	for sec := range schema.sections {
		paths = append(paths, fmt.Sprintf("device.evidence_age(%q)", sec))
	}
	if len(paths) < 20 {
		t.Fatalf("schema has only %v", paths)
	}
	measured := &Measured{SecureBootKnown: true, SecureBoot: true}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			prg, err := compileExpr(path+" == "+path, schema)
			if err != nil {
				t.Fatal(err)
			}
			r := report(func(r *posturev1.PostureReport) { r.CreatedAt = timestamppb.New(t0) })
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.AssessWith(r, t0, measured), ReportAt: t0}
			if ok, why := evalExpr(prg, s, 100, t0, -1); !ok {
				t.Errorf("%s: %s", path, why)
			}
		})
	}
}

// device.secure_boot is what the secure_boot check judges: measured when
// the check uses the TPM's reading, else the agent's report.
func TestCELSecureBoot(t *testing.T) {
	off := &Measured{SecureBootKnown: true, SecureBoot: false}
	on := &Measured{SecureBootKnown: true, SecureBoot: true}
	unknown := &Measured{Reason: "no SecureBoot variable measurement in PCR 7"}
	agentOff := report(func(r *posturev1.PostureReport) { r.SecureBoot.Enabled = false })
	tests := []struct {
		name     string
		measured string // the check's setting; "-" for a policy without the check
		report   *posturev1.PostureReport
		m        *Measured
		expr     string
		allowed  bool
		reason   string
	}{
		{"require, TPM says off, agent says on", "require", report(nil), off, `device.secure_boot.enabled`, false, "expression is false"},
		{"prefer, TPM says off, agent says on", "prefer", report(nil), off, `device.secure_boot.enabled`, false, "expression is false"},
		{"default, TPM says off, agent says on", "", report(nil), off, `device.secure_boot.enabled`, false, "expression is false"},
		{"no check, TPM says off, agent says on", "-", report(nil), off, `device.secure_boot.enabled`, false, "expression is false"},
		{"prefer, TPM says on, agent says off", "prefer", agentOff, on, `device.secure_boot.enabled && !device.secure_boot.setup_mode && !device.secure_boot.legacy_bios`, true, ""},
		{"ignore, TPM says off, agent says on", "ignore", report(nil), off, `device.secure_boot.enabled`, true, ""},
		{"prefer without a measurement uses the report", "prefer", report(nil), unknown, `device.secure_boot.enabled`, true, ""},
		{"require without a measurement denies", "require", report(nil), unknown, `device.secure_boot.enabled`, false, "could not be evaluated"},
		{"measured off does not tell setup mode", "require", report(nil), off, `!device.secure_boot.setup_mode`, false, "could not be evaluated"},
		{"measured evidence is as old as the report", "require", report(nil), on, `device.evidence_age("secure_boot") == duration("0s")`, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := "{name: disk_encryption, weight: 1}"
			if tt.measured != "-" {
				check = "{name: secure_boot, weight: 1, measured: '" + tt.measured + "'}"
				if tt.measured == "" {
					check = "{name: secure_boot, weight: 1}"
				}
			}
			p, err := Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [" + check + "]\nlevels: [{name: l, expr: '" + tt.expr + "'}, {name: check, min_score: 100}]"))
			if err != nil {
				t.Fatal(err)
			}
			tt.report.CreatedAt = timestamppb.New(t0)
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.AssessWith(tt.report, t0, tt.m), ReportAt: t0}
			allowed, _, reasons := p.Decide(s, "l", t0)
			if allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (%v)", allowed, tt.allowed, reasons)
			}
			if !allowed && !strings.Contains(strings.Join(reasons, " "), tt.reason) {
				t.Errorf("reasons %v lack %q", reasons, tt.reason)
			}
			// The check and the view agree on whether secure boot is on.
			if checked, _, _ := p.Decide(s, "check", t0); tt.measured != "-" && tt.expr == `device.secure_boot.enabled` && checked != allowed {
				t.Errorf("secure_boot check passes = %v, device.secure_boot.enabled = %v", checked, allowed)
			}
		})
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
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.Assess(report(nil), t0), ReportAt: t0}
			b.ReportAllocs()
			for b.Loop() {
				if ok, _, _ := p.Decide(s, "l", t0); !ok {
					b.Fatal("denied")
				}
			}
		})
	}
}
