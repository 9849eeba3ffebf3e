package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/webhook"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// pendingPolicy has levels that ask for a score, for nothing at all, and
// for an expression that always holds: none of them may open to a pending
// device.
const pendingPolicy = `
freshness: {stale_after: 15m, expire_after: 24h}
checks:
  - {name: disk_encryption, weight: 1}
levels:
  - {name: scored, min_score: 1}
  - {name: open}
  - {name: expression, expr: 'true'}
`

// A TPM device whose endorsement key is neither verified nor pinned is
// pending until an admin approves it. Meanwhile its quote-signed reports
// are verified and stored, so that the admin can judge the device (its
// checks and raw score) before approving it; but no level opens to it,
// whatever the level asks, at any front (CheckAccess, gatewayclient,
// /check, ext_authz), and every denial says to ask an admin to approve it.
// Approval opens the levels its stored evidence meets, at once. No
// webhook announces a level gained until the approval.
func TestPendingDeviceJudgedNotAllowed(t *testing.T) {
	_, dev := openSimulator(t, 41)
	p, err := policy.Parse([]byte(pendingPolicy))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("e2e-pending-webhook-secret-0123456789")
	hook := &hookReceiver{t: t, secret: secret}
	hookSrv := httptest.NewServer(hook)
	t.Cleanup(hookSrv.Close)
	e := startCollectorWith(t, func(c *collector.Config) {
		c.Policy = p
		c.Events.Webhooks = []webhook.Config{{Name: "pending", URL: hookSrv.URL + "/hook", Secret: secret}}
		c.Events.RetryMin, c.Events.RetryMax = 50*time.Millisecond, 200*time.Millisecond
	})
	f := startCertFronts(t, e)
	dir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), dir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if res.State != posturev1.DeviceState_DEVICE_STATE_PENDING {
		t.Fatalf("state = %v, want pending", res.State)
	}
	id, cert := res.DeviceID, diskCert(t, dir).Leaf
	runTPMAgent(t, dir, dev)

	// Verified and stored, for the admin to judge.
	eventually(t, "reports of the pending device stored", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= 2
	})
	d, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_PENDING || d.GetReport() == nil || len(d.GetChecks()) == 0 ||
		d.GetRawScore() != 100 || d.GetScore() != 0 || d.GetMeasuredBoot() == nil {
		t.Errorf("pending device as an admin sees it: state %v, report %v, checks %v, raw score %d, score %d, measured boot %v; want pending, its report, checks, raw 100, score 0, measured boot",
			d.GetDevice().GetState(), d.GetReport() != nil, d.GetChecks(), d.GetRawScore(), d.GetScore(), d.GetMeasuredBoot())
	}
	if n := e.stats().GetReportsRejected(); len(n) != 0 {
		t.Errorf("reports of the pending device rejected: %v", n)
	}
	for _, l := range d.GetLevels() {
		if l.GetAllowed() {
			t.Errorf("level %s allowed to the pending device", l.GetName())
		}
	}

	// No level opens, anywhere, and each denial says what to do.
	eventually(t, "gatewayclient hearing of the device's report", func() bool {
		return f.gc.Check(id, "open").Device.GetScore() == 0 && f.gc.Check(id, "open").Device.GetState() == posturev1.DeviceState_DEVICE_STATE_PENDING
	})
	const ask = "ask an admin to approve this device"
	for _, level := range p.LevelNames() {
		f.wantLevel(t, "pending device", id, cert, level, false, ask)
	}
	if got := f.gc.Check(id, "open").Device.GetAllowedLevels(); len(got) != 0 {
		t.Errorf("watch events allow the pending device %v", got)
	}

	// The outbox heard of the device (its enrollment), and of no level.
	eventually(t, "the webhook hearing of the enrollment", func() bool { return slices.Contains(hookTypes(hook, id), "device.enrolled") })
	if got := hookTypes(hook, id); slices.Contains(got, "level.gained") {
		t.Errorf("a webhook announced a level gained by the pending device: %v", got)
	}

	if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	eventually(t, "gatewayclient hearing of the approval", func() bool { return f.gc.Check(id, "open").Allowed })
	for _, level := range p.LevelNames() {
		f.wantLevel(t, "approved device", id, cert, level, true, "")
	}
	eventually(t, "the webhook announcing the approval and the levels gained", func() bool {
		got := hookTypes(hook, id)
		return slices.Contains(got, "device.approved") && slices.Contains(got, "level.gained")
	})
	if got := hookTypes(hook, id); slices.Index(got, "level.gained") < slices.Index(got, "device.approved") {
		t.Errorf("a level gained was announced before the approval: %v", got)
	}
	if hook.bad != 0 {
		t.Errorf("%d webhook requests with a bad signature", hook.bad)
	}
}

// hookTypes lists the types of the events h received about device id, in
// the order of their sequence numbers, each once.
func hookTypes(h *hookReceiver, id string) []string {
	byID, _ := h.distinct()
	evs := make([]webhook.Event, 0, len(byID))
	for _, ev := range byID {
		var d struct {
			Device struct{ ID string } `json:"device"`
		}
		if json.Unmarshal(ev.Data, &d) == nil && d.Device.ID == id {
			evs = append(evs, ev)
		}
	}
	slices.SortFunc(evs, func(a, b webhook.Event) int { return cmp.Compare(a.Sequence, b.Sequence) })
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Type)
	}
	return out
}
