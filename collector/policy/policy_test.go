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

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func ok() *posturev1.SignalMeta {
	return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(t0), Source: posturev1.Source_SOURCE_OS}
}

func report(mod func(*posturev1.PostureReport)) *posturev1.PostureReport {
	r := &posturev1.PostureReport{
		Os:         &posturev1.OSInfo{Meta: ok(), Platform: "linux", Name: "ubuntu", Version: "24.04"},
		Disk:       &posturev1.DiskEncryption{Meta: ok(), SystemEncrypted: true},
		SecureBoot: &posturev1.SecureBoot{Meta: ok(), Enabled: true},
		Updates:    &posturev1.Updates{Meta: ok(), Manager: "apt"},
		Firewall:   &posturev1.Firewall{Meta: ok(), Enabled: true, Product: "nftables"},
		ScreenLock: &posturev1.ScreenLock{Meta: ok(), Enabled: true, TimeoutSeconds: 300},
	}
	if mod != nil {
		mod(r)
	}
	return r
}

func TestAssess(t *testing.T) {
	p := Default()
	tests := []struct {
		name    string
		report  *posturev1.PostureReport
		want    uint32
		check   string
		outcome posturev1.Outcome
		reason  string
	}{
		{"healthy", report(nil), 100, "disk_encryption", posturev1.Outcome_OUTCOME_PASS, "encrypted"},
		{"disk not encrypted", report(func(r *posturev1.PostureReport) {
			r.Disk.SystemEncrypted = false
			r.Disk.Volumes = []*posturev1.Volume{{MountPoint: "/"}}
		}), 70, "disk_encryption", posturev1.Outcome_OUTCOME_FAIL, "not encrypted: /"},
		{"many volumes not encrypted: the first five named", report(func(r *posturev1.PostureReport) {
			r.Disk.SystemEncrypted = false
			r.Disk.Volumes = nil
			for i := range 200 {
				r.Disk.Volumes = append(r.Disk.Volumes, &posturev1.Volume{MountPoint: fmt.Sprintf("/srv/%d", i)})
			}
		}), 70, "disk_encryption", posturev1.Outcome_OUTCOME_FAIL, "not encrypted: /srv/0, /srv/1, /srv/2, /srv/3, /srv/4, and 195 more"},
		{"disk unknown counts as failing", report(func(r *posturev1.PostureReport) {
			r.Disk = &posturev1.DiskEncryption{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "/ is on overlay"}, SystemEncrypted: true}
		}), 70, "disk_encryption", posturev1.Outcome_OUTCOME_UNKNOWN, "/ is on overlay"},
		{"section missing", report(func(r *posturev1.PostureReport) { r.SecureBoot = nil }), 85, "secure_boot", posturev1.Outcome_OUTCOME_UNKNOWN, "unknown"},
		{"security updates pending", report(func(r *posturev1.PostureReport) { r.Updates.SecurityPending = 3 }), 80, "security_updates", posturev1.Outcome_OUTCOME_FAIL, "3 pending security updates"},
		{"legacy BIOS", report(func(r *posturev1.PostureReport) { r.SecureBoot = &posturev1.SecureBoot{Meta: ok(), LegacyBios: true} }), 85, "secure_boot", posturev1.Outcome_OUTCOME_FAIL, "legacy BIOS"},
		{"setup mode", report(func(r *posturev1.PostureReport) { r.SecureBoot.SetupMode = true }), 85, "secure_boot", posturev1.Outcome_OUTCOME_FAIL, "setup mode"},
		{"old OS", report(func(r *posturev1.PostureReport) { r.Os.Version = "20.04" }), 85, "os_version", posturev1.Outcome_OUTCOME_FAIL, "older than the minimum 22.04"},
		{"OS without a minimum", report(func(r *posturev1.PostureReport) { r.Os.Name = "gentoo" }), 85, "os_version", posturev1.Outcome_OUTCOME_UNKNOWN, "no minimum version"},
		{"errored signal", report(func(r *posturev1.PostureReport) {
			r.Updates.Meta = &posturev1.SignalMeta{Status: posturev1.Status_STATUS_ERROR, Reason: "apt-get failed"}
		}), 80, "security_updates", posturev1.Outcome_OUTCOME_UNKNOWN, "apt-get failed"},
		{"firewall off", report(func(r *posturev1.PostureReport) {
			r.Firewall = &posturev1.Firewall{Meta: ok(), Detail: "ufw is installed but disabled (ufw enable)"}
		}), 90, "firewall", posturev1.Outcome_OUTCOME_FAIL, "ufw is installed but disabled"},
		{"screen lock too slow", report(func(r *posturev1.PostureReport) { r.ScreenLock.TimeoutSeconds = 1800 }), 90, "screen_lock", posturev1.Outcome_OUTCOME_FAIL, "more than the 15m0s allowed"},
		{"screen lock never", report(func(r *posturev1.PostureReport) { r.ScreenLock.TimeoutSeconds = 0 }), 90, "screen_lock", posturev1.Outcome_OUTCOME_FAIL, "more than the 15m0s allowed"},
		{"no graphical session: screen lock leaves the total", report(func(r *posturev1.PostureReport) {
			r.ScreenLock = &posturev1.ScreenLock{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_NOT_APPLICABLE, Reason: "no graphical session"}}
			r.Disk.SystemEncrypted = false
		}), 66, "screen_lock", posturev1.Outcome_OUTCOME_NOT_APPLICABLE, "no graphical session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := p.Assess(tt.report, t0)
			if a.RawScore() != tt.want {
				t.Errorf("raw score = %d, want %d", a.RawScore(), tt.want)
			}
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: a, ReportAt: t0}
			checks, _, _ := p.Explain(s, t0)
			var found bool
			for _, c := range checks {
				if c.GetName() != tt.check {
					continue
				}
				found = true
				if c.GetOutcome() != tt.outcome || !strings.Contains(c.GetReason(), tt.reason) {
					t.Errorf("%s = %v %q, want %v containing %q", tt.check, c.GetOutcome(), c.GetReason(), tt.outcome, tt.reason)
				}
				if (c.GetOutcome() == posturev1.Outcome_OUTCOME_FAIL || c.GetOutcome() == posturev1.Outcome_OUTCOME_UNKNOWN) && c.GetRemediation() == "" {
					t.Errorf("%s does not pass but has no remediation", tt.check)
				}
			}
			if !found {
				t.Errorf("check %s missing from %v", tt.check, checks)
			}
		})
	}
}

func TestFreshnessDecay(t *testing.T) {
	p := Default() // stale after 15m, expire after 24h
	s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.Assess(report(nil), t0), ReportAt: t0}
	tests := []struct {
		age  time.Duration
		want uint32
	}{
		{0, 100},
		{15 * time.Minute, 100},
		{15*time.Minute + (24*time.Hour-15*time.Minute)/2, 50},
		{24 * time.Hour, 0},
		{48 * time.Hour, 0},
	}
	for _, tt := range tests {
		if got := p.Score(s, t0.Add(tt.age)); got != tt.want {
			t.Errorf("score after %s = %d, want %d", tt.age, got, tt.want)
		}
	}
}

func TestDecide(t *testing.T) {
	p := Default()
	healthy := p.Assess(report(nil), t0)
	plain := p.Assess(report(func(r *posturev1.PostureReport) { r.Disk.SystemEncrypted = false }), t0)
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	tests := []struct {
		name    string
		subject Subject
		level   string
		at      time.Duration
		allowed bool
		reason  string
	}{
		{"healthy trusted", Subject{State: active, Assessment: healthy, ReportAt: t0}, "trusted", 0, true, ""},
		{"plain disk basic", Subject{State: active, Assessment: plain, ReportAt: t0}, "basic", 0, true, ""},
		{"plain disk trusted", Subject{State: active, Assessment: plain, ReportAt: t0}, "trusted", 0, false, "trusted requires disk_encryption"},
		{"never reported", Subject{State: active}, "basic", 0, false, "no verified posture report yet"},
		{"revoked", Subject{State: posturev1.DeviceState_DEVICE_STATE_REVOKED, StateReason: "stolen", Assessment: healthy, ReportAt: t0}, "basic", 0, false, "revoked: stolen"},
		{"suspect", Subject{State: posturev1.DeviceState_DEVICE_STATE_SUSPECT, StateReason: "chain broken", Assessment: healthy, ReportAt: t0}, "basic", 0, false, "suspect: chain broken"},
		{"pending", Subject{State: posturev1.DeviceState_DEVICE_STATE_PENDING, StateReason: "EK not verified", Assessment: healthy, ReportAt: t0}, "basic", 0, false,
			"pending approval: every level is denied until an admin approves it; ask an admin to approve this device (EK not verified)"},
		{"silent too long", Subject{State: active, Assessment: healthy, ReportAt: t0}, "trusted", 12 * time.Hour, false, "trust decays after 15m"},
		{"unknown level", Subject{State: active, Assessment: healthy, ReportAt: t0}, "gold", 0, false, `access level "gold" is not defined`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			allowed, _, reasons := p.Decide(&tt.subject, tt.level, t0.Add(tt.at))
			if allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (reasons %v)", allowed, tt.allowed, reasons)
			}
			if allowed && len(reasons) > 0 {
				t.Errorf("allowed with reasons %v", reasons)
			}
			if !allowed && !strings.Contains(strings.Join(reasons, "; "), tt.reason) {
				t.Errorf("reasons %v lack %q", reasons, tt.reason)
			}
			// AllowedSet, which watchers get, must agree with Decide.
			_, set := p.AllowedSet(&tt.subject, t0.Add(tt.at))
			levels := p.Names(set)
			if slices.Contains(levels, tt.level) != tt.allowed {
				t.Errorf("AllowedSet = %v, disagrees with Decide (%v) on %s", levels, tt.allowed, tt.level)
			}
		})
	}
}

// A pending device meets no level, whatever the level asks (nothing at
// all, an expression that holds, a score its healthy report earns), and
// every denial says to ask an admin to approve it; its score is 0, while
// its assessment, which an admin judges it by, is kept.
func TestPendingMeetsNoLevel(t *testing.T) {
	p, err := Parse([]byte(`
freshness: {stale_after: 1h, expire_after: 2h}
checks: [{name: disk_encryption, weight: 1}]
levels:
  - {name: scored, min_score: 1}
  - {name: open}
  - {name: expression, expr: 'true'}
  - {name: warned, min_score: 1, enforce: warn}
  - {name: unenforced, min_score: 1, enforce: off}
`))
	if err != nil {
		t.Fatal(err)
	}
	healthy := p.Assess(report(nil), t0)
	s := Subject{State: posturev1.DeviceState_DEVICE_STATE_PENDING, Assessment: healthy, ReportAt: t0}
	for _, l := range p.LevelNames() {
		allowed, score, reasons := p.Decide(&s, l, t0)
		if allowed || score != 0 || len(reasons) != 1 || !strings.Contains(reasons[0], "ask an admin to approve this device") {
			t.Errorf("level %s: allowed=%v score=%d reasons=%v; want denied, 0, asking for an approval", l, allowed, score, reasons)
		}
		// No enforcement mode lets a pending device through: its state
		// is its identity, not its posture.
		if v := p.Judge(&s, l, t0); v.Allowed || v.Met {
			t.Errorf("level %s (enforce %s): Judge allowed=%v met=%v; want neither", l, v.Enforce, v.Allowed, v.Met)
		}
	}
	if _, set := p.AllowedSet(&s, t0); set != 0 {
		t.Errorf("AllowedSet of a pending device = %v, want none", p.Names(set))
	}
	if _, met, allowed, warned := p.Sets(&s, t0); met != 0 || allowed != 0 || warned != 0 {
		t.Errorf("Sets of a pending device: met %v allowed %v warned %v, want none", p.Names(met), p.Names(allowed), p.Names(warned))
	}
	checks, levels, score := p.Explain(&s, t0)
	if len(checks) != 1 || checks[0].GetOutcome() != posturev1.Outcome_OUTCOME_PASS || score != 0 || healthy.RawScore() != 100 {
		t.Errorf("Explain: checks %v score %d raw %d; want the passing check shown, score 0, raw 100", checks, score, healthy.RawScore())
	}
	for _, l := range levels {
		if l.GetAllowed() {
			t.Errorf("Explain allows level %s", l.GetName())
		}
	}
	// The same device approved meets them all.
	s.State = posturev1.DeviceState_DEVICE_STATE_ACTIVE
	for _, l := range p.LevelNames() {
		if allowed, _, reasons := p.Decide(&s, l, t0); !allowed {
			t.Errorf("level %s once active: denied (%v)", l, reasons)
		}
	}
}

func TestMinAssurance(t *testing.T) {
	p, err := Parse([]byte(`
freshness: {stale_after: 1h, expire_after: 2h}
checks: [{name: disk_encryption, weight: 1}]
levels: [{name: hw, min_score: 0, min_assurance: tpm_ek_pinned}]
`))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Assess(report(nil), t0)
	for _, tt := range []struct {
		assurance posturev1.IdentityAssurance
		allowed   bool
	}{
		{posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE, false},
		{posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED, true},
		{posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED, true},
	} {
		s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assurance: tt.assurance, Assessment: a, ReportAt: t0}
		if allowed, _, reasons := p.Decide(s, "hw", t0); allowed != tt.allowed {
			t.Errorf("%v: allowed = %v, want %v (%v)", tt.assurance, allowed, tt.allowed, reasons)
		}
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1, wieght: 2}]\nlevels: [{name: a}]", "wieght"},
		{"unknown check", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encrypton, weight: 1}]\nlevels: [{name: a}]", `unknown check "disk_encrypton"`},
		{"freshness order", "freshness: {stale_after: 2h, expire_after: 1h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: a}]", "stale_after < expire_after"},
		{"zero weight", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 0}]\nlevels: [{name: a}]", "line 2: checks[0] disk_encryption: weight 0: a check must weigh 1 to 1000"},
		{"missing weight", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - {name: firewall, weight: 10}\n  - {name: disk_encryption}\nlevels: [{name: a}]", "line 4: checks[1] disk_encryption: weight is missing"},
		{"weight that would overflow a sum", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - {name: disk_encryption, weight: 2}\n  - name: firewall\n    weight: 4294967295\nlevels: [{name: a, min_score: 100}]", "line 5: checks[1] firewall: weight 4294967295 is above 1000"},
		{"weight above the cap", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1001}]\nlevels: [{name: a}]", "weight 1001 is above 1000"},
		{"negative max_timeout", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: screen_lock, weight: 1, max_timeout: -15m}]\nlevels: [{name: a}]", "max_timeout -15m0s is negative"},
		{"empty min version", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: os_version, weight: 1, min_versions: {ubuntu: \"\"}}]\nlevels: [{name: a}]", `min_versions ubuntu: "" is not a version`},
		{"unparsable min version", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: os_version, weight: 1, min_versions: {debian: \"12\", ubuntu: \"22.04 LTS\"}}]\nlevels: [{name: a}]", `min_versions ubuntu: "22.04 LTS" is not a version`},
		{"capitalised OS name", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: os_version, weight: 1, min_versions: {Ubuntu: \"22.04\"}}]\nlevels: [{name: a}]", `OS name "Ubuntu": write it in lower case`},
		{"option of another check", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - name: firewall\n    weight: 1\n    max_security_pending: 0\nlevels: [{name: a}]", "line 5: checks[0] firewall: max_security_pending is not an option of firewall, which would ignore it (it is an option of security_updates)"},
		{"measured on a check that does not measure", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1, measured: require}]\nlevels: [{name: a}]", "measured is not an option of firewall"},
		{"min_versions on firewall", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1, min_versions: {debian: \"12\"}}]\nlevels: [{name: a}]", "min_versions is not an option of firewall"},
		{"max_timeout on disk_encryption", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1, max_timeout: 5m}]\nlevels: [{name: a}]", "max_timeout is not an option of disk_encryption"},
		{"option merged from another check", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - &updates {name: security_updates, weight: 1, max_security_pending: 0}\n  - {<<: *updates, name: firewall}\nlevels: [{name: a}]", "checks[1] firewall: max_security_pending is not an option of firewall"},
		{"second document", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1}]\nlevels: [{name: top, min_score: 0}]\n---\nlevels: [{name: top, min_score: 100}]\n", "line 5: a second YAML document"},
		{"second document after an empty one", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1}]\nlevels: [{name: top}]\n---\n---\nlevels: [{name: top, min_score: 100}]\n", "line 6: a second YAML document"},
		{"empty file", "# nothing yet\n", "the policy is empty"},
		{"no levels", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]", "at least one access level"},
		{"requires undefined check", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: a, require: [firewall]}]", `requires check "firewall"`},
		{"bad assurance", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: a, min_assurance: tpm}]", `min_assurance "tpm"`},
		{"duplicate level", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: a}, {name: a}]", "defined twice"},
		{"score above 100", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: a, min_score: 101}]", "above 100"},
		{"control character in a level name", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: \"a\\0b\"}]", "contains a control character"},
		{"too many levels", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [" + manyLevels(65) + "]", "65 defined, at most 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct{ name, yaml string }{
		{"weights at the bounds", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}, {name: firewall, weight: 1000}]\nlevels: [{name: a}]"},
		{"each check with its own options", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks:\n  - {name: security_updates, weight: 1, max_security_pending: 0}\n  - {name: secure_boot, weight: 1, measured: require}\n  - {name: os_version, weight: 1, min_versions: {debian: \"12\", windows: \"10.0.19045\"}}\n  - {name: screen_lock, weight: 1, max_timeout: 0s}\nlevels: [{name: a}]"},
		{"an empty document after the policy", "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1}]\nlevels: [{name: a}]\n---\n# nothing here\n"},
		{"a document marker before the policy", "---\nfreshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: firewall, weight: 1}]\nlevels: [{name: a}]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.yaml)); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

// Scores are computed in 64 bits from weights of at most 1000, so the
// heaviest check decides as much as its weight says.
func TestRawScoreWeights(t *testing.T) {
	firewallOff := report(func(r *posturev1.PostureReport) { r.Firewall.Enabled = false })
	tests := []struct {
		name           string
		disk, firewall uint32
		report         *posturev1.PostureReport
		want           uint32
	}{
		{"heavy check fails", 2, 1000, firewallOff, 0},
		{"light check fails: below 100 however light", 1000, 1, firewallOff, 99},
		{"even weights, one fails", 1000, 1000, firewallOff, 50},
		{"all pass", 1000, 1000, report(nil), 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(fmt.Appendf(nil, "freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: %d}, {name: firewall, weight: %d}]\nlevels: [{name: a}]", tt.disk, tt.firewall))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Assess(tt.report, t0).RawScore(); got != tt.want {
				t.Errorf("raw score = %d, want %d", got, tt.want)
			}
		})
	}
}

func manyLevels(n int) string {
	l := make([]string, n)
	for i := range l {
		l[i] = fmt.Sprintf("{name: l%d}", i)
	}
	return strings.Join(l, ", ")
}

func TestLevelSets(t *testing.T) {
	p, err := Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [" + manyLevels(64) + "]"))
	if err != nil {
		t.Fatalf("64 levels: %v", err)
	}
	set := LevelSet(1<<0 | 1<<5 | 1<<63)
	if got, want := p.Names(set), []string{"l0", "l5", "l63"}; !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	if k1, k2 := p.SetKey(set), p.SetKey(set); k1 != "l0\x00l5\x00l63" || k1 != k2 {
		t.Errorf("SetKey = %q then %q", k1, k2)
	}
	if p.SetKey(0) != "" || p.SetKey(1) == p.SetKey(2) {
		t.Errorf("SetKey does not tell sets apart: %q %q %q", p.SetKey(0), p.SetKey(1), p.SetKey(2))
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		sign int
	}{
		{"22.04", "22.04", 0},
		{"24.04", "22.04", 1},
		{"9", "12", -1},
		{"10.0.19045", "10.0.22631", -1},
		{"12", "12.0", 0},
		{"14.5", "14", 1},
	}
	for _, tt := range tests {
		got := compareVersions(tt.a, tt.b)
		if (got > 0) != (tt.sign > 0) || (got < 0) != (tt.sign < 0) {
			t.Errorf("compareVersions(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.sign)
		}
	}
}
