package policy

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const gracePolicy = `
freshness: {stale_after: 100h, expire_after: 200h}
checks:
  - {name: disk_encryption, weight: 50, grace: 72h}
  - {name: firewall, weight: 50}
levels:
  - {name: corp, min_score: 80, require: [disk_encryption]}
  - {name: open, min_score: 0}
  - {name: lab, min_score: 100, enforce: warn}
  - {name: next, min_score: 100, enforce: off}
  - {name: graced, expr: 'device.in_grace("disk_encryption")'}
  - {name: young, expr: 'device.checks.disk_encryption == "pass" || device.failing_since("disk_encryption") > timestamp("2026-11-27T00:00:00Z")'}
`

func mustParse(t *testing.T, yaml string) *Policy {
	t.Helper()
	p, err := Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

// A check failing inside its grace does not deny, counts as passing for
// the score, and every decision says when it blocks; once the grace ends
// it denies. The failing-since time is the recorded one, or the report's
// for a failure not recorded yet.
func TestGrace(t *testing.T) {
	p := mustParse(t, gracePolicy)
	plain := p.Assess(report(func(r *posturev1.PostureReport) {
		r.Disk.SystemEncrypted = false
		r.Disk.Volumes = []*posturev1.Volume{{MountPoint: "/"}}
	}), t0)
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	since := t0.Add(-10 * time.Hour)
	recorded := Subject{State: active, Assessment: plain, ReportAt: t0, Failing: []Failing{{Check: "disk_encryption", Since: since}}}
	unrecorded := Subject{State: active, Assessment: plain, ReportAt: t0}
	tests := []struct {
		name     string
		subject  Subject
		at       time.Time
		met      bool
		score    uint32
		blocksAt time.Time
	}{
		{"recorded, inside grace", recorded, t0, true, 100, since.Add(72 * time.Hour)},
		{"recorded, a second before its end", recorded, since.Add(72*time.Hour - time.Second), true, 100, since.Add(72 * time.Hour)},
		{"recorded, at its end", recorded, since.Add(72 * time.Hour), false, 50, time.Time{}},
		{"not recorded yet: since the report", unrecorded, t0.Add(time.Hour), true, 100, t0.Add(72 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := p.Judge(&tt.subject, "corp", tt.at)
			if v.Met != tt.met || v.Allowed != tt.met || v.Score != tt.score {
				t.Fatalf("Judge = met %v allowed %v score %d (%v), want met %v score %d", v.Met, v.Allowed, v.Score, v.Reasons, tt.met, tt.score)
			}
			if !tt.met {
				if len(v.Grace) != 0 || !strings.Contains(strings.Join(v.Reasons, "; "), "corp requires disk_encryption") {
					t.Errorf("denial: grace %v, reasons %v", v.Grace, v.Reasons)
				}
				return
			}
			if len(v.Grace) != 1 || v.Grace[0].Check != "disk_encryption" || !v.Grace[0].BlocksAt.Equal(tt.blocksAt) {
				t.Fatalf("grace notices = %+v, want disk_encryption blocking at %v", v.Grace, tt.blocksAt)
			}
			w := strings.Join(v.Warnings(), "\n")
			if !strings.Contains(w, "failing since ") || !strings.Contains(w, "blocks at "+tt.blocksAt.UTC().Format(time.RFC3339)) || !strings.Contains(w, "not encrypted: /") {
				t.Errorf("warnings %q do not say since when and until when", w)
			}
			if !v.Warned() {
				t.Error("a decision inside a grace is not warned")
			}
			// A level the failing check does not matter for says nothing.
			if o := p.Judge(&tt.subject, "open", tt.at); !o.Met || len(o.Grace) != 0 {
				t.Errorf("open: %+v, want met without notices", o)
			}
		})
	}
	// A check without a grace denies at once.
	noFirewall := Subject{State: active, ReportAt: t0, Assessment: p.Assess(report(func(r *posturev1.PostureReport) { r.Firewall.Enabled = false }), t0)}
	if v := p.Judge(&noFirewall, "corp", t0); v.Met || v.Score != 50 {
		t.Errorf("firewall off without grace: met %v score %d", v.Met, v.Score)
	}
	// A passing check has no failing-since time, recorded or not.
	healthy := Subject{State: active, ReportAt: t0, Assessment: p.Assess(report(nil), t0), Failing: []Failing{{Check: "disk_encryption", Since: since}}}
	if _, ok := healthy.FailingSince("disk_encryption"); ok {
		t.Error("a passing check has a failing-since time")
	}
	if got, ok := recorded.FailingSince("disk_encryption"); !ok || !got.Equal(since) {
		t.Errorf("FailingSince = %v %v, want %v", got, ok, since)
	}
}

func TestGraceInCEL(t *testing.T) {
	p := mustParse(t, gracePolicy)
	plain := p.Assess(report(func(r *posturev1.PostureReport) { r.Disk.SystemEncrypted = false }), t0)
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	tests := []struct {
		name  string
		since time.Time
		at    time.Time
		level string
		met   bool
	}{
		{"in_grace inside", t0.Add(-time.Hour), t0, "graced", true},
		{"in_grace after", t0.Add(-100 * time.Hour), t0, "graced", false},
		{"failing_since recent", t0.Add(-time.Hour), t0, "young", true},
		{"failing_since old", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), t0, "young", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Subject{State: active, Assessment: plain, ReportAt: t0, Failing: []Failing{{Check: "disk_encryption", Since: tt.since}}}
			if v := p.Judge(&s, tt.level, tt.at); v.Met != tt.met {
				t.Errorf("met = %v, want %v (%v)", v.Met, tt.met, v.Reasons)
			}
		})
	}
	healthy := Subject{State: active, Assessment: p.Assess(report(nil), t0), ReportAt: t0}
	if v := p.Judge(&healthy, "graced", t0); v.Met {
		t.Error("in_grace of a passing check is true")
	}
	if v := p.Judge(&healthy, "young", t0); !v.Met {
		t.Errorf("failing_since guarded by a passing check denies: %v", v.Reasons)
	}
	for _, expr := range []string{`device.in_grace("disk_encrypton")`, `device.failing_since("firewal") > timestamp("2026-01-01T00:00:00Z")`} {
		_, err := Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: l, expr: '" + expr + "'}]"))
		if err == nil || !strings.Contains(err.Error(), "has no check") {
			t.Errorf("%s: Parse = %v, want an unknown-check error", expr, err)
		}
	}
}

// warn allows a device that does not meet the level and says so; off
// allows without a word; neither allows a device whose state denies.
func TestEnforcement(t *testing.T) {
	p := mustParse(t, gracePolicy)
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	failing := p.Assess(report(func(r *posturev1.PostureReport) { r.Firewall.Enabled = false }), t0)
	s := Subject{State: active, Assessment: failing, ReportAt: t0}
	warn := p.Judge(&s, "lab", t0)
	if warn.Met || !warn.Allowed || warn.Enforce != EnforceWarn || !warn.Warned() {
		t.Errorf("warn level: %+v", warn)
	}
	if w := strings.Join(warn.Warnings(), " "); !strings.Contains(w, "enforce: warn") || !strings.Contains(w, "score 50 is below 100") {
		t.Errorf("warn warnings = %q", w)
	}
	off := p.Judge(&s, "next", t0)
	if off.Met || !off.Allowed || off.Warned() || len(off.Warnings()) != 0 || off.Enforce != EnforceOff {
		t.Errorf("off level: %+v", off)
	}
	block := p.Judge(&s, "corp", t0)
	if block.Allowed {
		t.Errorf("block level allows: %+v", block)
	}
	for _, st := range []posturev1.DeviceState{posturev1.DeviceState_DEVICE_STATE_REVOKED, posturev1.DeviceState_DEVICE_STATE_SUSPECT, posturev1.DeviceState_DEVICE_STATE_PENDING} {
		bad := Subject{State: st, Assessment: failing, ReportAt: t0}
		for _, l := range []string{"lab", "next"} {
			if v := p.Judge(&bad, l, t0); v.Allowed {
				t.Errorf("%v allowed at %s", st, l)
			}
		}
	}
	_, met, allowed, warned := p.Sets(&s, t0)
	if got := p.Names(met); !slices.Equal(got, []string{"open", "young"}) {
		t.Errorf("met = %v", got)
	}
	if got := p.Names(allowed); !slices.Equal(got, []string{"open", "lab", "next", "young"}) {
		t.Errorf("allowed = %v", got)
	}
	if got := p.Names(warned); !slices.Equal(got, []string{"lab"}) {
		t.Errorf("warned = %v", got)
	}
	if _, err := Parse([]byte("freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: l, enforce: audit}]")); err == nil || !strings.Contains(err.Error(), `enforce "audit"`) {
		t.Errorf("unknown enforce: %v", err)
	}
	for yaml, want := range map[string]string{
		"freshness: {stale_after: 1h, expire_after: 2h}\nchecks: [{name: disk_encryption, weight: 1, grace: -1h}]\nlevels: [{name: l}]":          "grace -1h0m0s is negative",
		"freshness: {stale_after: 1h, expire_after: 2h}\nnotify: {every: 1m}\nchecks: [{name: disk_encryption, weight: 1}]\nlevels: [{name: l}]": "line 2: notify: every 1m0s",
	} {
		if _, err := Parse([]byte(yaml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse = %v, want %q", err, want)
		}
	}
}

// The policy in docs/grace.md parses, and means what the doc says of it.
func TestGraceDoc(t *testing.T) {
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "grace.md"), "## The policy", "yaml")
	if len(blocks) != 1 {
		t.Fatalf("docs/grace.md's policy section has %d yaml blocks, want 1", len(blocks))
	}
	p := mustParse(t, blocks[0])
	if c, _ := p.Check("disk_encryption"); c.Grace != 72*time.Hour {
		t.Errorf("disk_encryption grace %v", c.Grace)
	}
	if l, _ := p.Level("finance"); l.Enforcement() != EnforceWarn {
		t.Errorf("finance enforcement %v", l.Enforcement())
	}
	if p.NotifyEvery() != 4*time.Hour || p.NotifyBeforeBlock() != 24*time.Hour {
		t.Errorf("notify %v %v", p.NotifyEvery(), p.NotifyBeforeBlock())
	}
}
