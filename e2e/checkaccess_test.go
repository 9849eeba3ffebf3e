package e2e

import (
	"context"
	"fmt"
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
