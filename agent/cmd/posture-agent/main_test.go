package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/jsonview"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func TestCollectPrintsAReport(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"collect", "-o", "json"}, &out); err != nil {
		t.Fatalf("collect: %v", err)
	}
	var r posturev1.PostureReport
	if err := jsonview.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("collect output is not a PostureReport: %v\n%s", err, out.String())
	}
	for name, meta := range map[string]*posturev1.SignalMeta{
		"os": r.GetOs().GetMeta(), "disk": r.GetDisk().GetMeta(), "secure_boot": r.GetSecureBoot().GetMeta(),
		"updates": r.GetUpdates().GetMeta(), "firewall": r.GetFirewall().GetMeta(), "screen_lock": r.GetScreenLock().GetMeta(),
	} {
		if meta.GetStatus() == posturev1.Status_STATUS_UNSPECIFIED || meta.GetObservedAt() == nil {
			t.Errorf("%s: status %v observed_at %v, want both set", name, meta.GetStatus(), meta.GetObservedAt())
		}
	}
}

func TestCommandErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"enroll", "--state-dir", t.TempDir()}, "--token is required"},
		{[]string{"enroll", "--token", "garbage", "--state-dir", t.TempDir()}, "not a Posture enrollment token"},
		{[]string{"run", "--state-dir", t.TempDir()}, "not enrolled"},
		{[]string{"collect", "-o", "yaml"}, `want json or text`},
		{[]string{"nope"}, `unknown command "nope"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args[:1], " "), func(t *testing.T) {
			err := run(tt.args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}
