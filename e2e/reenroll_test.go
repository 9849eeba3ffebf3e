package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/internal/pki"
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

// Enrolling again replaces the device certificate: the one from before no
// longer opens a report stream, and a gateway that names it in a decision
// is denied.
func TestReEnrollReplacesCertificate(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	oldCert, key := deviceCreds(t, dir)
	if _, err := agent.Enroll(context.Background(), dir, e.token(time.Hour, 1)); err != nil {
		t.Fatalf("enroll again: %v", err)
	}
	newCert, _ := deviceCreds(t, dir)
	if oldCert.Leaf.SerialNumber.Cmp(newCert.Leaf.SerialNumber) == 0 {
		t.Fatal("enrolling again kept the certificate")
	}

	_, err := startReports(e.dial(&oldCert), key, id)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("report stream with the certificate from before: %v; want PermissionDenied, replaced", err)
	}
	a := openReports(t, e, newCert, key, id)
	if m := a.send(a.next()); m.GetAck() == nil {
		t.Fatalf("report with the new certificate: %v", m)
	}

	ctx := context.Background()
	// A gateway names the certificate it saw by serial and key hash.
	check := func(serial string, key []byte) *posturev1.CheckAccessResponse {
		t.Helper()
		r, err := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic", CertificateSerial: serial, CertificateKeySha256: key})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	newKey := pki.KeySHA256(newCert.Leaf)
	if r := check(newCert.Leaf.SerialNumber.Text(16), newKey); !r.GetAllowed() {
		t.Errorf("decision naming the current certificate: %v", r.GetReasons())
	}
	if r := check(oldCert.Leaf.SerialNumber.Text(16), pki.KeySHA256(oldCert.Leaf)); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "replaced") {
		t.Errorf("decision naming the replaced certificate: allowed %v, %v", r.GetAllowed(), r.GetReasons())
	}
	if r := check("", nil); !r.GetAllowed() {
		t.Errorf("decision naming no certificate: %v", r.GetReasons())
	}
	// nginx's $ssl_client_serial: upper case, leading zeros.
	if r := check("00"+strings.ToUpper(newCert.Leaf.SerialNumber.Text(16)), newKey); !r.GetAllowed() {
		t.Errorf("decision naming the current certificate as nginx writes its serial: %v", r.GetReasons())
	}
	// The serial alone no longer tells the certificate: it fails closed.
	if r := check(newCert.Leaf.SerialNumber.Text(16), nil); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "certificate_key_sha256") {
		t.Errorf("decision naming the current certificate by its serial alone: allowed %v, %v; want denied, asking for the key hash", r.GetAllowed(), r.GetReasons())
	}
	if _, err := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic", CertificateSerial: "xyz"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("decision naming a serial that is not hex: %v; want InvalidArgument", err)
	}
}
