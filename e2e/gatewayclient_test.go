package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/posture-project/posture/gatewayclient"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// gatewayConn issues a gateway certificate and dials the collector with it
// as a Go gateway would.
func (e *env) gatewayConn(name string) *grpc.ClientConn {
	e.t.Helper()
	cert := e.gatewayCert(name)
	return e.dial(&cert, gatewayclient.DialOptions()...)
}

// The embedded client answers from its watch-fed cache, learns of a
// revocation at once, rides out a collector restart within its grace
// period, and fails closed after it.
func TestGatewayClient(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	_, other := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "first report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })

	clk := &clock{}
	gc, err := gatewayclient.New(gatewayclient.Config{Conn: e.gatewayConn("go-gw"), Grace: time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gc.Run(ctx)
	eventually(t, "client synced", gc.Synced)

	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Fatalf("healthy device denied: %s", d.Reason)
	}
	if d := gc.CheckSPIFFE(pki.SPIFFEID(trustDomain, pki.RoleDevice, id).String(), "basic"); !d.Allowed {
		t.Errorf("by SPIFFE ID: denied: %s", d.Reason)
	}
	if d := gc.CheckSPIFFE("spiffe://elsewhere/device/"+id, "basic"); d.Allowed {
		t.Error("a SPIFFE ID from another trust domain was allowed")
	}
	if d := gc.Check(other, "basic"); d.Allowed {
		t.Error("a device that never reported was allowed")
	}
	if d := gc.Check("unknown", "basic"); d.Allowed || !strings.Contains(d.Reason, "not enrolled") {
		t.Errorf("unknown device: %+v", d)
	}

	start := time.Now()
	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: other, Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "revocation in the cache", func() bool {
		d := gc.Check(other, "basic")
		return d.Device != nil && d.Device.GetState() == posturev1.DeviceState_DEVICE_STATE_REVOKED
	})
	t.Logf("revocation reached the client cache in %v", time.Since(start))

	// The collector goes away: decisions continue within the grace period...
	e.stop()
	eventually(t, "client notices", func() bool { return !gc.Synced() })
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("within the grace period: denied: %s", d.Reason)
	}
	// ...and fail closed after it.
	clk.Advance(2 * time.Minute)
	if d := gc.Check(id, "trusted"); d.Allowed || !strings.Contains(d.Reason, "failing closed") {
		t.Errorf("after the grace period: %+v, want a fail-closed denial", d)
	}
	// The collector returns: the client resynchronizes (a new revision range means a snapshot).
	e.start()
	eventually(t, "client resynced", gc.Synced)
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("after the collector returned: denied: %s", d.Reason)
	}
}

// A collector that stops answering without closing the connection (a
// stopped process, a partition that drops packets) is noticed by the
// keepalive that gatewayclient.DialOptions sets up; the client then fails
// closed once the grace period has passed, and resynchronizes when the
// collector answers again.
func TestGatewayClientSilentCollector(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "first report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })

	p := startProxy(t, e.addr)
	cert := e.gatewayCert("go-gw")
	clk := &clock{}
	gc, err := gatewayclient.New(gatewayclient.Config{Conn: e.dialAddr(p.addr(), &cert, gatewayclient.DialOptions()...), Grace: time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gc.Run(ctx)
	eventually(t, "client synced", gc.Synced)

	p.pause()
	// Keepalive gives up on the connection 15 s after the collector last
	// spoke; the deadline leaves room for a loaded machine.
	eventuallyWithin(t, time.Minute, "client notices the silent collector", func() bool { return !gc.Synced() })
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("within the grace period: denied: %s", d.Reason)
	}
	clk.Advance(2 * time.Minute)
	if d := gc.Check(id, "trusted"); d.Allowed || !strings.Contains(d.Reason, "failing closed") {
		t.Errorf("after the grace period: %+v, want a fail-closed denial", d)
	}

	p.resume()
	eventuallyWithin(t, time.Minute, "client resynced", gc.Synced)
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("after the collector answered again: denied: %s", d.Reason)
	}
}
