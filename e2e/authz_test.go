package e2e

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The device certificate names the device; an agent certificate cannot
// administer; a client without a certificate can only enroll.
func TestAuthorization(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()

	cert, err := pki.ReadCertificate(filepath.Join(stateDir, "device.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://"+trustDomain+"/device/"+id {
		t.Errorf("device certificate URIs = %v, want spiffe://%s/device/%s", cert.URIs, trustDomain, id)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: rootsOf(e), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device certificate does not verify as a client certificate under the collector CA: %v", err)
	}

	devCert, _ := deviceCreds(t, stateDir)
	asDevice := e.dial(&devCert)
	anonymous := e.dial(nil)
	ctx := context.Background()

	calls := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"device lists devices", func() error {
			_, err := posturev1.NewAdminServiceClient(asDevice).ListDevices(ctx, &posturev1.ListDevicesRequest{})
			return err
		}, codes.PermissionDenied},
		{"device revokes", func() error {
			_, err := posturev1.NewAdminServiceClient(asDevice).RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "x"})
			return err
		}, codes.PermissionDenied},
		{"device creates a token", func() error {
			_, err := posturev1.NewAdminServiceClient(asDevice).CreateEnrollmentToken(ctx, &posturev1.CreateEnrollmentTokenRequest{})
			return err
		}, codes.PermissionDenied},
		{"device asks for a decision", func() error {
			_, err := posturev1.NewGatewayServiceClient(asDevice).CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
			return err
		}, codes.PermissionDenied},
		{"anonymous lists devices", func() error {
			_, err := posturev1.NewAdminServiceClient(anonymous).ListDevices(ctx, &posturev1.ListDevicesRequest{})
			return err
		}, codes.PermissionDenied},
		{"anonymous asks for a decision", func() error {
			_, err := posturev1.NewGatewayServiceClient(anonymous).CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic"})
			return err
		}, codes.PermissionDenied},
		{"anonymous streams reports", func() error {
			st, err := posturev1.NewReportServiceClient(anonymous).StreamReports(ctx)
			if err == nil {
				_, err = st.Recv()
			}
			return err
		}, codes.PermissionDenied},
		{"anonymous checks health (load balancers)", func() error {
			r, err := healthpb.NewHealthClient(anonymous).Check(ctx, &healthpb.HealthCheckRequest{})
			if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return status.Errorf(codes.Unavailable, "status %v", r.GetStatus())
			}
			return err
		}, codes.OK},
		{"anonymous lists services by reflection", func() error {
			st, err := reflectionpb.NewServerReflectionClient(anonymous).ServerReflectionInfo(ctx)
			if err != nil {
				return err
			}
			// A refused stream may end before the request is sent; the
			// status comes with Recv either way.
			_ = st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
			_, err = st.Recv()
			return err
		}, codes.PermissionDenied},
		{"anonymous may enroll (and is refused only for the bad token)", func() error {
			st, err := posturev1.NewEnrollmentServiceClient(anonymous).Enroll(ctx)
			if err == nil {
				err = st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{Token: "nope"}}})
			}
			if err == nil {
				_, err = st.Recv()
			}
			return err
		}, codes.InvalidArgument},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if got := status.Code(err); got != c.want {
				t.Errorf("got %v (%v), want %v", got, err, c.want)
			}
		})
	}
	if denied := e.stats().GetRpcDenied(); len(denied) == 0 {
		t.Error("denied calls were not counted")
	}
}

func rootsOf(e *env) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.c.CA())
	return p
}

// The agent's state directory holds private keys: 0700, keys 0600.
func TestAgentStatePermissions(t *testing.T) {
	e := startCollector(t)
	stateDir, _ := e.enroll()
	want := map[string]os.FileMode{".": 0o700, "identity.key": 0o600, "tls.key": 0o600, "agent.json": 0o600}
	for name, mode := range want {
		st, err := os.Stat(filepath.Join(stateDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	st, err := os.Stat(filepath.Join(e.dataDir, "admin.sock"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v mode %v, want 0600", err, st.Mode().Perm())
	}
}
