package policy

import (
	"slices"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/internal/testtools/fuzzseed"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// fuzzReports are the reports a fuzzed policy judges: healthy, nothing
// measured, every section unknown. judgeSubjects judges each in every
// state, with a software and a TPM identity, at several ages.
func fuzzReports() []*posturev1.PostureReport {
	unknown := func() *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_ERROR, Reason: "failed", ObservedAt: timestamppb.New(t0)}
	}
	return []*posturev1.PostureReport{
		report(nil),
		{},
		{
			Os: &posturev1.OSInfo{Meta: unknown()}, Disk: &posturev1.DiskEncryption{Meta: unknown()}, SecureBoot: &posturev1.SecureBoot{Meta: unknown()},
			Updates: &posturev1.Updates{Meta: unknown()}, Firewall: &posturev1.Firewall{Meta: unknown()}, ScreenLock: &posturev1.ScreenLock{Meta: unknown()},
			EndpointProtection: &posturev1.EndpointProtection{Meta: unknown()}, AutoUpdate: &posturev1.AutoUpdate{Meta: unknown()},
		},
	}
}

var fuzzStates = []posturev1.DeviceState{
	posturev1.DeviceState_DEVICE_STATE_ACTIVE, posturev1.DeviceState_DEVICE_STATE_SUSPECT, posturev1.DeviceState_DEVICE_STATE_REVOKED,
	posturev1.DeviceState_DEVICE_STATE_PENDING, posturev1.DeviceState_DEVICE_STATE_UNSPECIFIED,
}

// judgeAll decides every level of p for s at now by each of the ways the
// collector asks (Decide for gateways, AllowedSet for watchers, Explain for
// admins) and fails when they disagree, when a level is allowed to a
// device that is not active, or when an allowed level gives reasons or is
// below its score.
func judgeAll(t *testing.T, p *Policy, s *Subject, now time.Time) {
	t.Helper()
	score, set := p.AllowedSet(s, now)
	checks, levels, explained := p.Explain(s, now)
	if score > 100 || explained != score {
		t.Fatalf("score %d (explained %d)", score, explained)
	}
	if len(levels) != len(p.Levels) || (s.Assessment != nil && len(checks) != len(p.Checks)) {
		t.Fatalf("Explain gave %d levels and %d checks, the policy has %d and %d", len(levels), len(checks), len(p.Levels), len(p.Checks))
	}
	for i, l := range p.Levels {
		allowed, sc, reasons := p.Decide(s, l.Name, now)
		if sc != score {
			t.Fatalf("level %q: Decide scored %d, AllowedSet %d", l.Name, sc, score)
		}
		if allowed != (set&(1<<i) != 0) || allowed != levels[i].GetAllowed() {
			t.Fatalf("level %q: Decide says %v (%v), AllowedSet %v, Explain %v", l.Name, allowed, reasons, set&(1<<i) != 0, levels[i].GetAllowed())
		}
		if allowed && (len(reasons) > 0 || s.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE || s.Assessment == nil || score < l.MinScore) {
			t.Fatalf("level %q allowed to a %v device with score %d (min %d), reasons %v", l.Name, s.State, score, l.MinScore, reasons)
		}
		if !allowed && len(reasons) == 0 {
			t.Fatalf("level %q denied without a reason", l.Name)
		}
		if allowed {
			for _, r := range l.Require {
				for j, c := range s.Assessment.checks {
					if s.Assessment.name(j) == r && c.result != posturev1.Outcome_OUTCOME_PASS {
						t.Fatalf("level %q allowed though its required check %s did not pass", l.Name, r)
					}
				}
			}
		}
	}
	if allowed, _, _ := p.Decide(s, "no such level \x00", now); allowed {
		t.Fatal("an undefined level was allowed")
	}
}

// judgeSubjects judges every fuzz report and state under p.
func judgeSubjects(t *testing.T, p *Policy) {
	t.Helper()
	for _, r := range fuzzReports() {
		a := p.Assess(r, t0)
		for _, st := range fuzzStates {
			for _, as := range []posturev1.IdentityAssurance{posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE, posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED} {
				for _, age := range []time.Duration{0, p.Freshness.StaleAfter + time.Second, p.Freshness.ExpireAfter} {
					judgeAll(t, p, &Subject{State: st, StateReason: "fuzz", Assurance: as, Assessment: a, ReportAt: t0}, t0.Add(age))
				}
			}
		}
	}
	judgeAll(t, p, &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE}, t0)
}

// FuzzParse parses arbitrary bytes as a policy file. Parse must never
// panic; what it accepts holds everything validation promises (known,
// weighted, distinct checks; named, distinct levels that require only
// defined checks; a freshness window), parses again to the same policy,
// and judges every kind of device the same way through each of the
// collector's questions, allowing no level to a device that is not active.
func FuzzParse(f *testing.F) {
	fuzzseed.Add(f, defaultYAML)
	for _, y := range []string{
		"freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}, {name: firewall, weight: 1000}]\nlevels: [{name: a}]",
		"freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - {name: security_updates, weight: 1, max_security_pending: 0}\n  - {name: secure_boot, weight: 1, measured: require}\n  - {name: os_version, weight: 1, min_versions: {debian: \"12\", windows: \"10.0.19045\"}}\n  - {name: screen_lock, weight: 1, max_timeout: 0s}\nlevels: [{name: a, min_score: 50, min_assurance: tpm_ek_pinned, require: [secure_boot]}]",
		"freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - &updates {name: security_updates, weight: 1, max_security_pending: 0}\n  - {<<: *updates, name: firewall}\nlevels: [{name: a}]",
		"freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1}]\nlevels: [{name: top, min_score: 0}]\n---\nlevels: [{name: top, min_score: 100}]\n",
		"freshness: {stale_after: 15m, expire_after: 24h}\nchecks: [{name: disk_encryption, weight: 30}, {name: endpoint_protection, weight: 5}, {name: auto_update, weight: 5}]\nlevels:\n  - name: cel\n    expr: 'device.score >= 80 && device.identity.assurance == \"tpm_ek_verified\" && device.disk.system_encrypted && device.evidence_age(\"os\") < duration(\"24h\")'\n",
		"freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: a, expr: 'device.checks.all(c, device.checks[c] == \"pass\")'}, {name: b, expr: 'has(device.firewal)'}]",
		"# nothing yet\n",
		"levels: &a [*a]",
	} {
		fuzzseed.Add(f, []byte(y))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		if p.Freshness.StaleAfter <= 0 || p.Freshness.ExpireAfter <= p.Freshness.StaleAfter {
			t.Fatalf("accepted freshness %+v", p.Freshness)
		}
		if len(p.Checks) == 0 || len(p.Levels) == 0 || len(p.Levels) > maxLevels {
			t.Fatalf("accepted %d checks and %d levels", len(p.Checks), len(p.Levels))
		}
		var names []string
		for _, c := range p.Checks {
			if _, ok := checkKinds[c.Name]; !ok || c.Weight < 1 || c.Weight > maxWeight || slices.Contains(names, c.Name) {
				t.Fatalf("accepted check %q of weight %d (checks so far %v)", c.Name, c.Weight, names)
			}
			names = append(names, c.Name)
		}
		var levels []string
		for _, l := range p.Levels {
			if l.Name == "" || slices.Contains(levels, l.Name) || l.MinScore > 100 || (l.Expr != "") != (l.program != nil) {
				t.Fatalf("accepted level %+v", l)
			}
			if _, ok := assuranceNames[l.MinAssurance]; l.MinAssurance != "" && !ok {
				t.Fatalf("accepted min_assurance %q", l.MinAssurance)
			}
			for _, r := range l.Require {
				if !slices.Contains(names, r) {
					t.Fatalf("level %q requires undefined check %q", l.Name, r)
				}
			}
			levels = append(levels, l.Name)
		}
		again, err := Parse(data)
		if err != nil || !slices.Equal(again.LevelNames(), p.LevelNames()) || len(again.Checks) != len(p.Checks) {
			t.Fatalf("the same policy parsed differently the second time: %v", err)
		}
		judgeSubjects(t, p)
	})
}

// celPolicyYAML is a policy whose one level holds expr, written by the
// YAML encoder so that any text is one YAML string.
func celPolicyYAML(t testing.TB, expr string) []byte {
	doc := map[string]any{
		"freshness": map[string]string{"stale_after": "1h", "expire_after": "2h"},
		"checks": []map[string]any{
			{"name": "disk_encryption", "weight": 30}, {"name": "secure_boot", "weight": 10, "measured": "prefer"},
			{"name": "os_version", "weight": 10, "min_versions": map[string]string{"ubuntu": "22.04"}},
			{"name": "firewall", "weight": 10}, {"name": "screen_lock", "weight": 10},
		},
		"levels": []map[string]any{{"name": "l", "expr": expr}, {"name": "plain", "min_score": 50}},
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzCELExpr compiles arbitrary text as a level's CEL expression. Parse
// must never panic (a compile error is an error), and a policy with an
// expression that compiles judges every kind of device without panicking,
// the same way through each of the collector's questions, allowing
// nothing to a device that is not active.
func FuzzCELExpr(f *testing.F) {
	for _, e := range []string{
		`device.score >= 80 && device.identity.assurance == "tpm_ek_verified" && device.disk.system_encrypted && device.evidence_age("os") < duration("24h")`,
		`device.updates.security_pending == 0 && !device.updates.reboot_required`,
		`device.os.name == "ubuntu" && device.os.version in ["22.04", "24.04"]`,
		`!has(device.firewall) || device.firewall.enabled`,
		`device.checks.all(c, device.checks[c] == "pass")`,
		`device.secure_boot.enabled && !device.secure_boot.setup_mode`,
		`device.report_age < duration("1h") && device.raw_score > 10 && device.state == "active"`,
		`device.evidence_age("firewal") < duration("1h")`,
		`device.screen_lock.timeout_seconds / 0 > 1`,
		`[1, 2, 3].map(x, x * 9223372036854775807).size() > 0`,
		`device.os.kernel_version.matches("^6\\.[0-9]+")`,
		`"a" + `,
	} {
		fuzzseed.Add(f, e)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		p, err := Parse(celPolicyYAML(t, expr))
		if err != nil {
			return
		}
		judgeSubjects(t, p)
	})
}

// evalPolicy is the policy FuzzEvaluate judges reports with: every check,
// and levels whose expressions read every field devices report.
var evalPolicy = func() *Policy {
	p, err := Parse([]byte(`
freshness: {stale_after: 15m, expire_after: 24h}
checks:
  - {name: disk_encryption, weight: 30}
  - {name: security_updates, weight: 20, max_security_pending: 1}
  - {name: secure_boot, weight: 15, measured: prefer}
  - {name: os_version, weight: 15, min_versions: {debian: "12", ubuntu: "22.04", windows: "10.0.19045", darwin: "14"}}
  - {name: firewall, weight: 10}
  - {name: screen_lock, weight: 10, max_timeout: 15m}
  - {name: endpoint_protection, weight: 5}
  - {name: auto_update, weight: 5}
levels:
  - {name: basic, min_score: 40}
  - {name: trusted, min_score: 80, require: [disk_encryption, secure_boot], min_assurance: tpm_ek_pinned}
  - name: os
    expr: 'device.os.platform == "linux" && device.os.name.startsWith("deb") && device.os.version != "" && device.os.kernel_version.size() > 0 && device.evidence_age("os") < duration("1h")'
  - name: disk
    expr: 'device.disk.system_encrypted && device.checks.disk_encryption == "pass" && device.report_age < duration("30m")'
  - name: updates
    expr: 'device.updates.pending < 10u && device.updates.security_pending == 0u && !device.updates.reboot_required && device.updates.manager != ""'
  - name: boot
    expr: 'device.secure_boot.enabled && !device.secure_boot.legacy_bios && (!has(device.secure_boot.setup_mode) || !device.secure_boot.setup_mode)'
  - name: rest
    expr: 'device.firewall.enabled && device.firewall.product != "" && device.screen_lock.enabled && device.screen_lock.timeout_seconds <= 900u && device.raw_score >= device.score && device.identity.assurance != "" && device.state == "active"'
  - name: all
    expr: 'device.checks.all(c, device.checks[c] != "fail") && device.evidence_age("firewall") >= duration("0s")'
`))
	if err != nil {
		panic(err)
	}
	return p
}()

// FuzzEvaluate judges arbitrary reports (protobuf bytes, as the collector
// stores them once verified) under a policy with every check and levels
// whose expressions read every field: assessing and deciding must never
// panic, whatever a device reports (times of year 1 or 9999, missing
// sections, huge counts), and every question the collector asks about the
// device must give the same answer. measured is the collector's own
// reading of secure boot (bit 0 known, bit 1 enabled; 0 without one).
func FuzzEvaluate(f *testing.F) {
	seed := func(r *posturev1.PostureReport, state, assurance, measured byte, age int64) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		fuzzseed.Add(f, b, state, assurance, measured, age)
	}
	seed(report(nil), 0, 3, 3, 0)
	seed(report(nil), 0, 1, 3, 0) // healthy, but a software identity: not trusted
	seed(report(func(r *posturev1.PostureReport) {
		r.Os.Name, r.Os.Platform, r.Os.Version, r.Os.KernelVersion = "debian", "linux", "12", "6.1.0-18-amd64"
		r.Updates.Pending, r.Updates.SecurityPending, r.Updates.RebootRequired = 12, 2, true
		r.EndpointProtection = &posturev1.EndpointProtection{Meta: ok(), Product: "clamav", Enabled: true}
		r.AutoUpdate = &posturev1.AutoUpdate{Meta: ok(), Enabled: true, Mechanism: "unattended-upgrades"}
	}), 0, 2, 1, int64(20*time.Minute))
	seed(report(func(r *posturev1.PostureReport) {
		r.Os.Meta.ObservedAt = &timestamppb.Timestamp{Seconds: 253402300799} // 9999-12-31
		r.Disk.Meta.ObservedAt = &timestamppb.Timestamp{Seconds: -62135596800}
		r.Firewall.Meta.ObservedAt = &timestamppb.Timestamp{Seconds: 1, Nanos: 1e9}
		r.ScreenLock.Meta.Status = posturev1.Status_STATUS_NOT_APPLICABLE
	}), 0, 1, 0, int64(48*time.Hour))
	seed(&posturev1.PostureReport{}, 1, 0, 0, 0)
	seed(report(func(r *posturev1.PostureReport) {
		r.Os.Platform, r.Os.Name, r.Os.Version = "windows", "windows", "10.0.22631.3447"
	}), 3, 3, 2, -1)

	f.Fuzz(func(t *testing.T, data []byte, state, assurance, measured byte, age int64) {
		var r posturev1.PostureReport
		if err := proto.Unmarshal(data, &r); err != nil {
			return
		}
		var m *Measured
		if measured != 0 {
			m = &Measured{SecureBootKnown: measured&1 != 0, SecureBoot: measured&2 != 0, Reason: "fuzz"}
		}
		received := t0
		a := evalPolicy.AssessWith(&r, received, m)
		if a.RawScore() > 100 {
			t.Fatalf("raw score %d", a.RawScore())
		}
		s := &Subject{
			State:      fuzzStates[int(state)%len(fuzzStates)],
			Assurance:  posturev1.IdentityAssurance(assurance % 4),
			Assessment: a,
			ReportAt:   received,
		}
		judgeAll(t, evalPolicy, s, received.Add(time.Duration(age)))
	})
}
