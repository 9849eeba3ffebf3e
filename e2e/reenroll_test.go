package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A reinstalled agent on the same TPM (a new AK, the TPM's counters seen
// through another offset) keeps the device active and its chain going.
func TestTPMReEnrollWithNewAK(t *testing.T) {
	_, dev := openSimulator(t, 21)
	e := startCollector(t)
	ctx := context.Background()
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(ctx, stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	id := res.DeviceID
	if _, err := e.admin.ApproveDevice(ctx, &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatal(err)
	}
	stop := runTPMAgent(t, stateDir, dev)
	eventually(t, "three reports", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 3 })
	stop()

	// Reinstalled: a fresh state directory, so a new AK in the same TPM.
	stateDir2 := t.TempDir()
	res2, err := agent.EnrollWith(ctx, stateDir2, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil || res2.DeviceID != id {
		t.Fatalf("enroll again: %v, device %s (want %s)", err, res2.DeviceID, id)
	}
	d, _ := e.device(id)
	before := d.GetDevice().GetLastSeq()
	runTPMAgent(t, stateDir2, dev)
	eventually(t, "two more reports, or the device marked suspect", func() bool {
		d, err := e.device(id)
		return err == nil && (d.GetDevice().GetLastSeq() >= before+2 || d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE)
	})
	d, _ = e.device(id)
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Fatalf("after enrolling again with a new AK: state %v (%s); rejected %v", d.GetDevice().GetState(), d.GetDevice().GetStateReason(), e.stats().GetReportsRejected())
	}
}
