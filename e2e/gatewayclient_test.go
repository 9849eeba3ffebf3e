package e2e

import (
	"bytes"
	"context"
	"crypto"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/gatewayclient"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// gatewayConn issues a gateway certificate and dials the collector with it
// as a Go gateway would.
func (e *env) gatewayConn(name string) *grpc.ClientConn {
	e.t.Helper()
	cert := e.gatewayCert(name)
	return e.dial(&cert, gatewayclient.DialOptions()...)
}

// wantGraceThenClosed checks a client that lost its collector: it still
// allows a healthy device within its one-minute grace period, and fails
// closed once clk has passed it.
func wantGraceThenClosed(t *testing.T, gc *gatewayclient.Client, clk *clock, id string) {
	t.Helper()
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("within the grace period: denied: %s", d.Reason)
	}
	clk.Advance(2 * time.Minute)
	if d := gc.Check(id, "trusted"); d.Allowed || !strings.Contains(d.Reason, "failing closed") {
		t.Errorf("after the grace period: %+v, want a fail-closed denial", d)
	}
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

	// The collector goes away: decisions continue within the grace period,
	// and fail closed after it.
	e.stop()
	eventually(t, "client notices", func() bool { return !gc.Synced() })
	wantGraceThenClosed(t, gc, clk, id)
	// The collector returns: the client resynchronizes (a new revision range means a snapshot).
	e.start()
	eventually(t, "client resynced", gc.Synced)
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("after the collector returned: denied: %s", d.Reason)
	}
}

// A collector that stops answering without closing the connection (a
// stopped process, a partition that drops packets), with nothing between
// it and the client, is noticed by the keepalive that
// gatewayclient.DialOptions sets up, within DetectionBound (the watch
// heartbeat would take three of the collector's default 10 s intervals);
// the client then fails closed once the grace period has passed, and
// resynchronizes when the collector answers again.
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
	wantGraceThenClosed(t, gc, clk, id)

	p.resume()
	eventuallyWithin(t, time.Minute, "client resynced", gc.Synced)
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("after the collector answered again: denied: %s", d.Reason)
	}
}

// startNginxGRPC runs nginx with testdata/nginx-grpc.conf.tmpl: it listens
// for h2c on loopback and passes the gateway API to upstream (the collector,
// or a proxy in front of it) over TLS, authenticating with a gateway
// certificate the collector issues. It returns nginx's address.
func startNginxGRPC(t *testing.T, e *env, bin, upstream string) string {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "nginx-grpc.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gw := e.gatewayCert("nginx-1")
	if err := pki.WriteCertificates(filepath.Join(dir, "gateway.crt"), gw.Leaf); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(filepath.Join(dir, "gateway.key"), gw.PrivateKey.(crypto.Signer)); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(filepath.Join(dir, "ca.crt"), e.c.CA()); err != nil {
		t.Fatal(err)
	}
	addrs := testtools.StartNginx(t, bin, dir, 1, func(addrs []string) []byte {
		var conf bytes.Buffer
		if err := tmpl.Execute(&conf, struct{ Dir, Listen, Upstream string }{dir, addrs[0], upstream}); err != nil {
			t.Fatal(err)
		}
		return conf.Bytes()
	})
	return addrs[0]
}

// Behind an L7 proxy the client's keepalive pings reach only the proxy,
// which answers them itself, so they never notice a collector that stopped
// answering behind it. The watch heartbeat does: with nginx grpc_pass
// between them and the collector silent (a paused TCP proxy between nginx
// and the collector: connections open, nothing forwarded), the client
// abandons its stream within a few heartbeat intervals, fails closed after
// its grace period, and resynchronizes, missing nothing, once the
// collector is heard again.
func TestGatewayClientBehindNginx(t *testing.T) {
	bin := testtools.Nginx(t)
	const heartbeat = 300 * time.Millisecond
	e := startCollectorWith(t, func(c *collector.Config) { c.WatchHeartbeat = heartbeat })
	stateDir, id := e.enroll()
	_, other := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "first report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })

	// gateway → nginx (h2c) → test proxy → collector (TLS, nginx's gateway certificate)
	p := startProxy(t, e.addr)
	nginx := startNginxGRPC(t, e, bin, p.addr())
	conn, err := grpc.NewClient(nginx, append(gatewayclient.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	clk := &clock{}
	gc, err := gatewayclient.New(gatewayclient.Config{Conn: conn, Grace: time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gc.Run(ctx)
	eventually(t, "client synced through nginx", gc.Synced)
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Fatalf("healthy device denied through nginx: %s", d.Reason)
	}

	// A second watch on the same connection that, unlike the client, never
	// gives up on a quiet stream: it ends only if the connection does,
	// which is what keepalive would do on noticing a silent peer.
	raw, err := posturev1.NewGatewayServiceClient(conn).WatchPosture(ctx, &posturev1.WatchPostureRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var rawHeartbeats atomic.Int64
	rawErr := make(chan error, 1)
	go func() {
		for {
			ev, err := raw.Recv()
			if err != nil {
				rawErr <- err
				return
			}
			if ev.GetHeartbeat() != nil {
				rawHeartbeats.Add(1)
			}
		}
	}()
	eventually(t, "heartbeats through nginx", func() bool { return rawHeartbeats.Load() >= 2 })

	p.pause()
	paused := time.Now()
	// Revoked while the gateway cannot hear the collector.
	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: other, Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	// Three intervals are 0.9 s; the bound leaves room for a loaded
	// machine and stays well below what keepalive could ever take.
	eventuallyWithin(t, gatewayclient.DetectionBound/2, "client notices the silent collector", func() bool { return !gc.Synced() })
	t.Logf("the client noticed the silent collector after %v", time.Since(paused).Round(time.Millisecond))
	wantGraceThenClosed(t, gc, clk, id)

	// Keepalive alone would never have noticed: past DetectionBound, the
	// connection to nginx is up and the raw watch is still open.
	time.Sleep(time.Until(paused.Add(gatewayclient.DetectionBound + 5*time.Second)))
	select {
	case err := <-rawErr:
		t.Fatalf("the watch on the connection to nginx ended (%v): keepalive is not expected to notice anything behind nginx", err)
	default:
	}
	if s := conn.GetState(); s != connectivity.Ready {
		t.Errorf("connection to nginx is %v after %v of silence, want READY: nginx answers keepalive pings", s, time.Since(paused).Round(time.Second))
	}
	if d := gc.Check(id, "trusted"); d.Allowed {
		t.Errorf("still allowed while the collector is silent: %+v", d)
	}

	p.resume()
	eventuallyWithin(t, time.Minute, "client resynced", gc.Synced)
	if d := gc.Check(id, "trusted"); !d.Allowed {
		t.Errorf("after the collector answered again: denied: %s", d.Reason)
	}
	if d := gc.Check(other, "basic"); d.Device.GetState() != posturev1.DeviceState_DEVICE_STATE_REVOKED {
		t.Errorf("the revocation made while the collector was silent is missing: %+v", d)
	}
	// The raw watch lived through it all and hears the collector again.
	heard := rawHeartbeats.Load()
	eventually(t, "heartbeats on the raw watch after the silence", func() bool { return rawHeartbeats.Load() > heard+1 })
	select {
	case err := <-rawErr:
		t.Errorf("raw watch ended: %v", err)
	default:
	}
}

// The embedded client tells a device's current certificate from one the
// device replaced: once the device renews, its old certificate (still
// valid, and perhaps copied) is refused, also after a restart of the
// collector, and the new one is allowed.
func TestGatewayClientReplacedCertificate(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	oldCert, idKey := deviceCreds(t, dir)
	r := openReports(t, e, oldCert, idKey, id)
	if m := r.send(r.next()); m.GetAck() == nil {
		t.Fatalf("report: %v", m)
	}
	gc, err := gatewayclient.New(gatewayclient.Config{Conn: e.gatewayConn("go-gw"), Grace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gc.Run(ctx)
	eventually(t, "client synced", gc.Synced)
	if d := gc.CheckCertificate(oldCert.Leaf, "basic"); !d.Allowed {
		t.Fatalf("the device's certificate before renewing: denied: %s", d.Reason)
	}

	newCert := renewSoftware(t, e, oldCert, idKey)
	eventually(t, "the renewal reaching the client", func() bool { return !gc.CheckCertificate(oldCert.Leaf, "basic").Allowed })
	if d := gc.CheckCertificate(oldCert.Leaf, "basic"); !strings.Contains(d.Reason, "was replaced") {
		t.Errorf("the replaced certificate: %s; want it refused as replaced", d.Reason)
	}
	if d := gc.CheckCertificate(newCert.Leaf, "basic"); !d.Allowed {
		t.Errorf("the renewed certificate: denied: %s", d.Reason)
	}
	// A restarted collector's snapshot names the current certificate too.
	e.stop()
	e.start()
	eventually(t, "client synced with the restarted collector", func() bool {
		return gc.Synced() && gc.CheckCertificate(newCert.Leaf, "basic").Allowed
	})
	if d := gc.CheckCertificate(oldCert.Leaf, "basic"); d.Allowed {
		t.Error("after a restart the replaced certificate was allowed")
	}
}
