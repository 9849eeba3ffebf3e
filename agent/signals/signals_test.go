package signals

import (
	"context"
	"testing"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// testTime is the clock of fixture tests.
var testTime = time.Date(2025, 5, 20, 9, 30, 0, 0, time.UTC)

func fixedNow() time.Time { return testTime }

// TestCollectThisMachine measures the machine the tests run on: whatever it
// is, every section must be present and say how it was obtained.
func TestCollectThisMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now().Add(-time.Second)
	r := New(Options{}).Collect(ctx)

	sections := []struct {
		name string
		meta *posturev1.SignalMeta
	}{
		{"os", r.GetOs().GetMeta()},
		{"disk", r.GetDisk().GetMeta()},
		{"secure_boot", r.GetSecureBoot().GetMeta()},
		{"updates", r.GetUpdates().GetMeta()},
		{"firewall", r.GetFirewall().GetMeta()},
		{"screen_lock", r.GetScreenLock().GetMeta()},
	}
	for _, s := range sections {
		t.Run(s.name, func(t *testing.T) {
			if s.meta == nil {
				t.Fatal("section or its meta is missing")
			}
			if s.meta.GetStatus() == posturev1.Status_STATUS_UNSPECIFIED {
				t.Error("status is STATUS_UNSPECIFIED")
			}
			if s.meta.GetStatus() != posturev1.Status_STATUS_OK && s.meta.GetReason() == "" {
				t.Errorf("status %v without a reason", s.meta.GetStatus())
			}
			if s.meta.GetSource() != posturev1.Source_SOURCE_OS {
				t.Errorf("source = %v, want SOURCE_OS", s.meta.GetSource())
			}
			if s.meta.GetObservedAt() == nil || s.meta.GetObservedAt().AsTime().Before(start) {
				t.Errorf("observed_at = %v, want a time after %v", s.meta.GetObservedAt(), start)
			}
			t.Logf("%v %q", s.meta.GetStatus(), s.meta.GetReason())
		})
	}

	if r.GetOs().GetPlatform() == "" || r.GetOs().GetArch() == "" {
		t.Errorf("os platform/arch not set: %v", r.GetOs())
	}
	if d := r.GetDisk(); d.GetMeta().GetStatus() == posturev1.Status_STATUS_OK && len(d.GetVolumes()) == 0 {
		t.Error("disk status OK without any volume examined")
	}
	for _, v := range r.GetDisk().GetVolumes() {
		t.Logf("volume %s %s encrypted=%v %s", v.GetMountPoint(), v.GetDevice(), v.GetEncrypted(), v.GetDetail())
	}
	t.Logf("os %s %s kernel %s; secure boot %v; updates %s pending=%d security=%d reboot=%v",
		r.GetOs().GetName(), r.GetOs().GetVersion(), r.GetOs().GetKernelVersion(), r.GetSecureBoot(),
		r.GetUpdates().GetManager(), r.GetUpdates().GetPending(), r.GetUpdates().GetSecurityPending(), r.GetUpdates().GetRebootRequired())
}
