package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// status shows the collector's decision as it came: levels met, warned
// or denied, failing checks with their grace, and device text inert.
func TestPrintDecision(t *testing.T) {
	blocks := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	d := &posturev1.AgentDecision{
		DecidedAt: timestamppb.Now(),
		Score:     42,
		Levels: []*posturev1.LevelResult{
			{Name: "basic", Allowed: true},
			{Name: "office", Allowed: true, Warnings: []string{"disk_encryption failing, blocks soon"}},
			{Name: "trusted", Reasons: []string{"score 42 is below 80"}},
		},
		Failing: []*posturev1.CheckResult{
			{Name: "disk_encryption", Outcome: posturev1.Outcome_OUTCOME_FAIL, Reason: "not encrypted: /\x1b[2J", Remediation: "encrypt it", BlocksAt: timestamppb.New(blocks), InGrace: true},
			{Name: "firewall", Outcome: posturev1.Outcome_OUTCOME_UNKNOWN, Reason: "unknown", BlocksAt: timestamppb.New(blocks.Add(-time.Hour))},
			{Name: "secure_boot", Outcome: posturev1.Outcome_OUTCOME_FAIL, Reason: "off"},
		},
	}
	var out bytes.Buffer
	printDecision(&out, d)
	got := out.String()
	local := func(t time.Time) string { return t.Local().Format(time.RFC3339) }
	for _, want := range []string{
		"decision:  score 42 at ",
		"level basic: allowed\n",
		"level office: allowed, warned: disk_encryption failing, blocks soon\n",
		"level trusted: denied: score 42 is below 80\n",
		"check disk_encryption fail: not encrypted: /\\x1b[2J (in grace: blocks at " + local(blocks) + "); fix: encrypt it\n",
		"check firewall unknown: unknown (grace ended " + local(blocks.Add(-time.Hour)) + "); fix: -\n",
		"check secure_boot fail: off; fix: -\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "\x1b") {
		t.Errorf("a control character reached the terminal:\n%q", got)
	}
	out.Reset()
	printDecision(&out, nil)
	if !strings.Contains(out.String(), "none received yet") {
		t.Errorf("no decision: %q", out.String())
	}
}
