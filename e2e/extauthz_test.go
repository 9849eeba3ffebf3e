package e2e

import (
	"context"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/gatewayfront"
	"github.com/posture-project/posture/internal/pki"
)

// The Envoy ext_authz server on the collector's TLS listener answers a
// gateway, and is refused to a device.
func TestExtAuthzOnCollectorListener(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	// Restart with the ext_authz server registered between New and Serve,
	// as posture-collector run does.
	e.stop()
	e.startWith(func() {
		x, err := gatewayfront.NewExtAuthz(gatewayfront.ExtAuthzConfig{Decider: e.c, TrustDomain: trustDomain, Roots: e.c.Roots()})
		if err != nil {
			t.Fatal(err)
		}
		e.c.RegisterTLS(x.Register)
	})

	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Principal: pki.SPIFFEID(trustDomain, pki.RoleDevice, id).String()},
		ContextExtensions: map[string]string{gatewayfront.ContextExtensionLevel: "trusted"},
		Request:           &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/", Host: "app"}},
	}}
	resp, err := authv3.NewAuthorizationClient(e.gatewayConn("envoy")).Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check as a gateway: %v", err)
	}
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Errorf("healthy device: status %v (%s), want OK", resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
	}
	devCert, _ := deviceCreds(t, stateDir)
	_, err = authv3.NewAuthorizationClient(e.dial(&devCert)).Check(context.Background(), req)
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("Check as a device: %v, want PermissionDenied", err)
	}
}
