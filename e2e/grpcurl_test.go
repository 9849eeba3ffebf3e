package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// grpcurl, an independent gRPC client, lists the collector's services by
// reflection and asks for a decision with a gateway certificate.
func TestGrpcurl(t *testing.T) {
	grpcurl := testtools.Require(t, "grpcurl")
	e := startCollector(t)
	stateDir, id := e.enroll()
	runAgent(t, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(t, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })

	dir := t.TempDir()
	key, _ := pki.NewKey()
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "grpcurl"}}, key)
	resp, err := e.admin.IssueGatewayCertificate(context.Background(), &posturev1.IssueGatewayCertificateRequest{Name: "grpcurl", Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(resp.GetCertificate())
	if err := pki.WriteCertificates(filepath.Join(dir, "gw.crt"), cert); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(filepath.Join(dir, "gw.key"), key); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(filepath.Join(dir, "ca.crt"), e.c.CA()); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		base := []string{"-cacert", filepath.Join(dir, "ca.crt"), "-cert", filepath.Join(dir, "gw.crt"), "-key", filepath.Join(dir, "gw.key")}
		out, err := exec.Command(grpcurl, append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run(e.addr, "list")
	if err != nil {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	for _, svc := range []string{"posture.v1.GatewayService", "posture.v1.AdminService", "grpc.health.v1.Health"} {
		if !strings.Contains(out, svc) {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, out)
		}
	}
	out, err = run("-d", `{"device_id":"`+id+`","access_level":"trusted"}`, e.addr, "posture.v1.GatewayService/CheckAccess")
	if err != nil {
		t.Fatalf("grpcurl CheckAccess: %v\n%s", err, out)
	}
	if !strings.Contains(out, `"allowed": true`) {
		t.Errorf("CheckAccess through grpcurl:\n%s\nwant allowed", out)
	}
	// Reflection shows the API, but authorization still holds.
	if out, err := run("-d", `{}`, e.addr, "posture.v1.AdminService/ListDevices"); err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("grpcurl ListDevices as a gateway: %v\n%s\nwant PermissionDenied", err, out)
	}
}
