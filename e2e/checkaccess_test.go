package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// What a gateway names in CheckAccess is bounded, and level names the
// policy does not define share one metrics label.
func TestCheckAccessBounds(t *testing.T) {
	addr := freeAddr(t)
	e := startCollectorWith(t, func(c *collector.Config) { c.MetricsListen = addr })
	_, id := e.enroll()
	ctx := context.Background()
	for _, req := range []*posturev1.CheckAccessRequest{
		{DeviceId: id, AccessLevel: strings.Repeat("x", 1000)},
		{DeviceId: strings.Repeat("d", 200), AccessLevel: "basic"},
		{SpiffeId: "spiffe://" + trustDomain + "/device/" + strings.Repeat("d", 600), AccessLevel: "basic"},
	} {
		_, err := e.gwLocal.CheckAccess(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most") {
			t.Errorf("CheckAccess with an oversized field: %v; want InvalidArgument naming the limit", err)
		}
	}
	for i := range 10 {
		resp, err := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: fmt.Sprintf("made-up-%d", i)})
		if err != nil || resp.GetAllowed() {
			t.Fatalf("CheckAccess of an undefined level: %v, %v; want a denial", resp, err)
		}
	}
	if _, err := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: "not-enrolled", AccessLevel: "basic"}); err != nil {
		t.Fatal(err)
	}
	body := scrape(t, addr)
	for _, want := range []string{
		`posture_decisions_total{level="undefined",result="deny"} 10`,
		`posture_decisions_total{level="basic",result="deny"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(string(body), "made-up") {
		t.Error("metrics have a series for a level name the policy does not define")
	}
}

// A gateway's certificate is checked at every call, not only when its
// connection opened: once expired, calls on the open connection fail.
func TestExpiredGatewayCertificateOnOpenConnection(t *testing.T) {
	e := startCollector(t)
	_, id := e.enroll()
	gw := e.gateway("edge")
	ctx := context.Background()
	if _, err := gw.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"}); err != nil {
		t.Fatalf("CheckAccess with a valid certificate: %v", err)
	}
	e.clock.Advance(366 * 24 * time.Hour) // gateway certificates last a year
	_, err := gw.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Errorf("CheckAccess on the open connection after the certificate expired: %v; want Unauthenticated, expired", err)
	}
}

// Revoking a gateway cuts it off at its next call, on the connection it
// already has, by name or by serial, and survives a restart; the revoked
// certificates are listed with the reason.
func TestRevokeGateway(t *testing.T) {
	e := startCollector(t)
	_, id := e.enroll()
	ctx := context.Background()
	edge := e.gateway("edge")
	other := e.gateway("other")
	ask := func(gw posturev1.GatewayServiceClient) error {
		_, err := gw.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
		return err
	}
	if err := ask(edge); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	watch, _, _ := watchUntilSnapshotEnd(t, ctx, edge, 0)
	for _, req := range []*posturev1.RevokeGatewayRequest{
		{Name: "edge"}, // no reason
		{Reason: "x"},  // neither name nor serial
		{Name: "edge", Serial: "0a", Reason: "x"},    // both
		{Serial: "not-hex", Reason: "x"},             // not a serial
		{Name: "never-issued", Reason: "key leaked"}, // unknown name
	} {
		if _, err := e.admin.RevokeGateway(ctx, req); err == nil {
			t.Errorf("RevokeGateway(%v) succeeded", req)
		}
	}
	resp, err := e.admin.RevokeGateway(ctx, &posturev1.RevokeGatewayRequest{Name: "edge", Reason: "key leaked"})
	if err != nil || resp.GetRevoked() != 1 {
		t.Fatalf("revoke edge: %v, %v", resp, err)
	}
	if err := ask(edge); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "key leaked") {
		t.Errorf("revoked gateway on its open connection: %v; want Unauthenticated with the reason", err)
	}
	// Its watch, open since before, ends too: it would otherwise go on
	// hearing of every device.
	e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "stolen"})
	for {
		ev, err := watch.Recv()
		if err == nil && ev.GetHeartbeat() != nil {
			continue
		}
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "key leaked") {
			t.Errorf("revoked gateway's open watch: got %v, %v; want it ended, Unauthenticated with the reason", ev, err)
		}
		break
	}
	if err := ask(other); err != nil {
		t.Errorf("another gateway after the revocation: %v", err)
	}
	list, err := e.admin.ListGateways(ctx, &posturev1.ListGatewaysRequest{})
	if err != nil || len(list.GetGateways()) != 2 {
		t.Fatalf("gateway list: %v, %v", list, err)
	}
	var otherSerial string
	for _, g := range list.GetGateways() {
		switch g.GetName() {
		case "edge":
			if g.GetRevokedAt() == nil || g.GetRevokeReason() != "key leaked" {
				t.Errorf("edge listed as %v; want revoked, key leaked", g)
			}
		case "other":
			otherSerial = g.GetSerial()
			if g.GetRevokedAt() != nil || g.GetExpiresAt() == nil {
				t.Errorf("other listed as %v; want valid with an expiry", g)
			}
		}
	}
	// By serial as openssl prints it (upper case, a leading zero), and
	// after a restart.
	if r, err := e.admin.RevokeGateway(ctx, &posturev1.RevokeGatewayRequest{Serial: "0" + strings.ToUpper(otherSerial), Reason: "retired"}); err != nil || r.GetRevoked() != 1 {
		t.Fatalf("revoke by serial: %v, %v", r, err)
	}
	if err := ask(other); status.Code(err) != codes.Unauthenticated {
		t.Errorf("other after its revocation by serial: %v; want Unauthenticated", err)
	}
	if r, err := e.admin.RevokeGateway(ctx, &posturev1.RevokeGatewayRequest{Serial: otherSerial, Reason: "retired"}); err != nil || r.GetRevoked() != 0 {
		t.Errorf("revoking the same serial spelled otherwise: %v, %v; want nothing more revoked", r, err)
	}
	// A serial revoked in another spelling by an earlier collector, which
	// stored it as given.
	legacy := e.gatewayCert("legacy")
	e.stop()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO gateways (serial, name, issued_at, expires_at, revoked_at, revoke_reason) VALUES (?, '', 0, 0, 1, 'old revocation')`,
		"00"+strings.ToUpper(legacy.Leaf.SerialNumber.Text(16))); err != nil {
		t.Fatal(err)
	}
	db.Close()
	e.start()
	legacyGW := posturev1.NewGatewayServiceClient(e.dial(&legacy))
	for name, gw := range map[string]posturev1.GatewayServiceClient{"edge": edge, "other": other, "legacy": legacyGW} {
		if err := ask(gw); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s after a restart: %v; want Unauthenticated", name, err)
		}
	}
}
