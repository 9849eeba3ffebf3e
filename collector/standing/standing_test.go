package standing

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

const testPolicy = `
freshness: {stale_after: 100h, expire_after: 200h}
notify: {before_block: 24h}
checks:
  - {name: disk_encryption, weight: 50, grace: 72h}
  - {name: firewall, weight: 50}
levels:
  - {name: open, min_score: 0}
  - {name: corp, min_score: 100, require: [disk_encryption]}
  - {name: pilot, min_score: 0, enforce: off}
  - {name: lab, min_score: 100, enforce: warn}
`

func report(encrypted, firewall bool) *posturev1.PostureReport {
	meta := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(t0)}
	return &posturev1.PostureReport{
		Disk:     &posturev1.DiskEncryption{Meta: meta, SystemEncrypted: encrypted},
		Firewall: &posturev1.Firewall{Meta: meta, Enabled: firewall},
	}
}

// Desired keeps a recorded failing-since time, dates a new failure from
// the report that showed it, announces a grace's end once within
// notify.before_block of it, and records the enforced levels met.
func TestDesired(t *testing.T) {
	pol, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	active := posturev1.DeviceState_DEVICE_STATE_ACTIVE
	plain := pol.Assess(report(false, true), t0)
	earlier := t0.Add(-10 * time.Hour)
	tests := []struct {
		name     string
		subject  policy.Subject
		recorded store.Standing
		at       time.Time
		want     store.Standing
	}{
		{"healthy", policy.Subject{State: active, Assessment: pol.Assess(report(true, true), t0), ReportAt: t0}, store.Standing{}, t0,
			store.Standing{Levels: []string{"corp", "lab", "open"}}},
		{"a new failure fails since its report", policy.Subject{State: active, Assessment: plain, ReportAt: t0}, store.Standing{}, t0.Add(time.Hour),
			store.Standing{Levels: []string{"corp", "lab", "open"}, Failing: []store.FailingCheck{{Check: "disk_encryption", Since: t0, BlocksAt: t0.Add(72 * time.Hour)}}}},
		{"a recorded failure keeps its time", policy.Subject{State: active, Assessment: plain, ReportAt: t0, Failing: []policy.Failing{{Check: "disk_encryption", Since: earlier}}},
			store.Standing{Failing: []store.FailingCheck{{Check: "disk_encryption", Since: earlier, BlocksAt: earlier.Add(72 * time.Hour)}}}, t0,
			store.Standing{Levels: []string{"corp", "lab", "open"}, Failing: []store.FailingCheck{{Check: "disk_encryption", Since: earlier, BlocksAt: earlier.Add(72 * time.Hour)}}}},
		{"within before_block of the end: announced", policy.Subject{State: active, Assessment: plain, ReportAt: t0, Failing: []policy.Failing{{Check: "disk_encryption", Since: earlier}}},
			store.Standing{}, earlier.Add(50 * time.Hour),
			store.Standing{Levels: []string{"corp", "lab", "open"}, Failing: []store.FailingCheck{{Check: "disk_encryption", Since: earlier, BlocksAt: earlier.Add(72 * time.Hour), Warned: true}}}},
		{"past the end: the level is lost, not announced", policy.Subject{State: active, Assessment: plain, ReportAt: t0, Failing: []policy.Failing{{Check: "disk_encryption", Since: earlier}}},
			store.Standing{}, earlier.Add(73 * time.Hour),
			store.Standing{Levels: []string{"open"}, Failing: []store.FailingCheck{{Check: "disk_encryption", Since: earlier, BlocksAt: earlier.Add(72 * time.Hour)}}}},
		{"an announcement stays", policy.Subject{State: active, Assessment: plain, ReportAt: t0, Failing: []policy.Failing{{Check: "disk_encryption", Since: earlier}}},
			store.Standing{Failing: []store.FailingCheck{{Check: "disk_encryption", Since: earlier, Warned: true}}}, earlier.Add(73 * time.Hour),
			store.Standing{Levels: []string{"open"}, Failing: []store.FailingCheck{{Check: "disk_encryption", Since: earlier, BlocksAt: earlier.Add(72 * time.Hour), Warned: true}}}},
		{"no grace: failing and the level lost at once", policy.Subject{State: active, Assessment: pol.Assess(report(true, false), t0), ReportAt: t0}, store.Standing{}, t0,
			store.Standing{Levels: []string{"open"}, Failing: []store.FailingCheck{{Check: "firewall", Since: t0}}}},
		{"revoked: no level", policy.Subject{State: posturev1.DeviceState_DEVICE_STATE_REVOKED, Assessment: pol.Assess(report(true, true), t0), ReportAt: t0}, store.Standing{}, t0,
			store.Standing{}},
		{"pending: no level", policy.Subject{State: posturev1.DeviceState_DEVICE_STATE_PENDING, Assessment: pol.Assess(report(true, true), t0), ReportAt: t0}, store.Standing{}, t0,
			store.Standing{}},
		{"pending, a level recorded: lost", policy.Subject{State: posturev1.DeviceState_DEVICE_STATE_PENDING, Assessment: pol.Assess(report(true, true), t0), ReportAt: t0},
			store.Standing{Levels: []string{"corp", "lab", "open"}}, t0, store.Standing{}},
		{"no report yet: nothing", policy.Subject{State: active}, store.Standing{}, t0, store.Standing{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reasons := Desired(&tt.subject, pol, tt.recorded, tt.at)
			if !got.Equal(tt.want) {
				t.Fatalf("Desired = %+v\nwant %+v", got, tt.want)
			}
			for _, f := range got.Failing {
				if reasons[f.Check] == "" {
					t.Errorf("no reason for failing %s", f.Check)
				}
			}
			if slices.Contains(got.Levels, "pilot") {
				t.Error("a level in off mode is recorded")
			}
		})
	}
}
