package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/browsercert"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// memStore is a certificate store in memory, for tests of what the
// collector accepts (the NSS database has tests of its own).
type memStore struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func (m *memStore) Install(k *ecdsa.PrivateKey, c *x509.Certificate) error {
	m.key, m.cert = k, c
	return nil
}

func (m *memStore) Certificate(nick string) (*x509.Certificate, error) {
	if m.cert == nil || m.cert.Subject.CommonName != nick {
		return nil, errNoDevice
	}
	return m.cert, nil
}

func (m *memStore) Nicknames() ([]string, error) {
	if m.cert == nil {
		return nil, nil
	}
	return []string{m.cert.Subject.CommonName}, nil
}

func (m *memStore) Remove(string) error { m.key, m.cert = nil, nil; return nil }

// TestBrowserCertificates: a browser certificate counts as its device at
// CheckAccess only with its key hash, only while it is its user's newest,
// and never for the device's own RPCs; the RPC refuses bad users and keys.
func TestBrowserCertificates(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	socket := filepath.Join(t.TempDir(), "agent.sock")
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: time.Hour, Measurer: &fixedMeasurer{encrypted: true}, LocalSocket: socket,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the first report", func() bool { seq, _ := e.c.ReportSeq(id); return seq >= 1 })

	store := &memStore{}
	opts := browsercert.Options{Socket: socket, Store: store, StateFile: filepath.Join(t.TempDir(), "state.json")}
	first, err := browsercert.Ensure(opts)
	if err != nil {
		t.Fatal(err)
	}
	firstKey := store.key
	check := func(c *x509.Certificate, withKey bool) *posturev1.CheckAccessResponse {
		t.Helper()
		req := &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic", CertificateSerial: pki.SerialHex(c)}
		if withKey {
			req.CertificateKeySha256 = pki.KeySHA256(c)
		}
		resp, err := e.gwLocal.CheckAccess(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := check(first.Cert, true); !r.GetAllowed() {
		t.Fatalf("browser certificate with its key: denied %v", r.GetReasons())
	}
	if r := check(first.Cert, false); r.GetAllowed() {
		t.Error("browser certificate by serial alone: allowed")
	}
	if life := first.Cert.NotAfter.Sub(first.Cert.NotBefore); life > 24*time.Hour+6*time.Minute {
		t.Errorf("browser certificate lasts %v, want a day", life)
	}

	// The agent's own RPCs refuse it.
	conn := e.dial(&tls.Certificate{Certificate: [][]byte{first.Cert.Raw}, PrivateKey: firstKey, Leaf: first.Cert})
	_, err = posturev1.NewReportServiceClient(conn).IssueBrowserCertificate(context.Background(), &posturev1.IssueBrowserCertificateRequest{User: "x"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a browser certificate calling a device RPC: %v, want PermissionDenied", err)
	}

	// A new one for the same user replaces it.
	time.Sleep(10 * time.Second) // the agent's pace: one per user every 10 s
	if err := opts.Store.Remove(""); err != nil {
		t.Fatal(err)
	}
	second, err := browsercert.Ensure(opts)
	if err != nil || !second.Renewed {
		t.Fatalf("second Ensure = %+v, %v", second, err)
	}
	if r := check(second.Cert, true); !r.GetAllowed() {
		t.Errorf("the new browser certificate: denied %v", r.GetReasons())
	}
	if r := check(first.Cert, true); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "replaced") {
		t.Errorf("the replaced browser certificate: allowed %v, reasons %v", r.GetAllowed(), r.GetReasons())
	}

	// The RPC itself, with the device's certificate.
	devCert, _ := deviceCreds(t, stateDir)
	dc := posturev1.NewReportServiceClient(e.dial(&devCert))
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	k256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p256, _ := x509.MarshalPKIXPublicKey(&k256.PublicKey)
	for _, tc := range []struct {
		name string
		req  *posturev1.IssueBrowserCertificateRequest
	}{
		{"no user", &posturev1.IssueBrowserCertificateRequest{PublicKey: p256}},
		{"user with markup", &posturev1.IssueBrowserCertificateRequest{PublicKey: p256, User: "<b>alice"}},
		{"P-384 key", &posturev1.IssueBrowserCertificateRequest{PublicKey: p384, User: "alice"}},
		{"garbage key", &posturev1.IssueBrowserCertificateRequest{PublicKey: []byte("key"), User: "alice"}},
	} {
		if _, err := dc.IssueBrowserCertificate(context.Background(), tc.req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
		}
	}
}

// issueBrowserCert asks for a browser certificate for user with the
// device certificate cert, for a fresh P-256 key.
func issueBrowserCert(t *testing.T, e *env, cert tls.Certificate, user string) (*x509.Certificate, error) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := posturev1.NewReportServiceClient(e.dial(&cert)).IssueBrowserCertificate(context.Background(),
		&posturev1.IssueBrowserCertificateRequest{PublicKey: pub, User: user})
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(resp.GetCertificate())
}

// A browser certificate counts with the device certificate it was issued
// under, by serial and key, across a collector restart (it is loaded from
// the database); once the device renews its certificate it no longer
// counts, and the denial says to run browser-cert again.
func TestBrowserCertificateFollowsDeviceCertificate(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	devCert, idKey := deviceCreds(t, dir)
	a := openReports(t, e, devCert, idKey, id)
	if m := a.send(a.next()); m.GetAck() == nil {
		t.Fatalf("report: %v", m)
	}
	bc, err := issueBrowserCert(t, e, devCert, "alice")
	if err != nil {
		t.Fatal(err)
	}
	check := func(c *x509.Certificate) *posturev1.CheckAccessResponse {
		t.Helper()
		r, err := e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic",
			CertificateSerial: pki.SerialHex(c), CertificateKeySha256: pki.KeySHA256(c)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := check(bc); !r.GetAllowed() {
		t.Fatalf("browser certificate: denied %v", r.GetReasons())
	}
	e.stop()
	e.start()
	if r := check(bc); !r.GetAllowed() {
		t.Fatalf("browser certificate after a restart: denied %v", r.GetReasons())
	}
	newCert := renewSoftware(t, e, devCert, idKey)
	if r := check(newCert.Leaf); !r.GetAllowed() {
		t.Fatalf("renewed device certificate: denied %v", r.GetReasons())
	}
	if r := check(bc); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "browser-cert") {
		t.Errorf("browser certificate issued under the replaced device certificate: allowed %v, reasons %v; want denied, saying to run browser-cert again", r.GetAllowed(), r.GetReasons())
	}
	if _, err := issueBrowserCert(t, e, devCert, "alice"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("browser certificate asked with the replaced device certificate: %v, want PermissionDenied", err)
	}
	fresh, err := issueBrowserCert(t, e, newCert, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if r := check(fresh); !r.GetAllowed() {
		t.Errorf("browser certificate issued under the renewed device certificate: denied %v", r.GetReasons())
	}
}

// A pending device (its TPM endorsement key neither verified nor pinned)
// gets no browser certificate: it would open nothing, and the refusal
// says why. Once approved, it gets one.
func TestBrowserCertificatePendingDevice(t *testing.T) {
	_, dev := openSimulator(t, 43)
	metrics := freeAddr(t)
	e := startCollectorWith(t, func(c *collector.Config) { c.MetricsListen = metrics })
	dir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), dir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if res.State != posturev1.DeviceState_DEVICE_STATE_PENDING {
		t.Fatalf("state = %v, want pending", res.State)
	}
	cert := diskCert(t, dir)
	if _, err := issueBrowserCert(t, e, cert, "alice"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "pending approval") {
		t.Errorf("browser certificate for a pending device: %v; want FailedPrecondition, pending approval", err)
	}
	if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: res.DeviceID}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	if _, err := issueBrowserCert(t, e, cert, "alice"); err != nil {
		t.Errorf("browser certificate for the approved device: %v", err)
	}
	body := scrape(t, metrics)
	for _, want := range []string{`posture_browser_certificates_refused_total{reason="device_state"} 1`, "posture_browser_certificates_issued_total 1"} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
