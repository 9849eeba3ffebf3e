package gatewayfront

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const testTrustDomain = "gateway.test"

// env is a running collector with its CA, reachable over the admin socket.
type env struct {
	t       testing.TB
	dataDir string
	c       *collector.Collector
	ca      *pki.CA // the collector's own CA, loaded from its data dir
	roots   *x509.CertPool
	admin   posturev1.AdminServiceClient
}

func startCollector(t testing.TB) *env {
	t.Helper()
	return startCollectorWith(t, nil)
}

// startCollectorWith starts a collector judging by pol (nil: the built-in
// policy).
func startCollectorWith(t testing.TB, pol *policy.Policy) *env {
	t.Helper()
	e := &env{t: t, dataDir: t.TempDir()}
	c, err := collector.New(collector.Config{DataDir: e.dataDir, Listen: "127.0.0.1:0", TrustDomain: testTrustDomain, Policy: pol})
	if err != nil {
		t.Fatalf("start collector: %v", err)
	}
	e.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("collector Serve: %v", err)
		}
	})
	conn, err := collector.DialAdmin(e.dataDir)
	if err != nil {
		t.Fatalf("dial admin socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	e.admin = posturev1.NewAdminServiceClient(conn)
	// The CA exists now; loading it lets tests issue server certificates
	// for the gateways they run.
	if e.ca, err = pki.LoadOrCreateCA(e.dataDir, testTrustDomain); err != nil {
		t.Fatal(err)
	}
	e.roots = x509.NewCertPool()
	e.roots.AddCert(c.CA())
	return e
}

// device is an enrolled device with a running agent.
type device struct {
	id       string
	stateDir string
	cert     tls.Certificate
	chain    []*x509.Certificate
}

// enroll enrolls a fresh state directory, runs a real agent on it that
// reports a healthy but unencrypted machine (score 50: basic yes, trusted
// no), and waits until the collector allows it the basic level.
func (e *env) enroll() *device {
	e.t.Helper()
	tok, err := e.admin.CreateEnrollmentToken(context.Background(), &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 1})
	if err != nil {
		e.t.Fatalf("create token: %v", err)
	}
	d := &device{stateDir: e.t.TempDir()}
	res, err := agent.Enroll(context.Background(), d.stateDir, tok.GetToken())
	if err != nil {
		e.t.Fatalf("enroll: %v", err)
	}
	d.id = res.DeviceID
	d.cert, err = tls.LoadX509KeyPair(filepath.Join(d.stateDir, "device.crt"), filepath.Join(d.stateDir, "tls.key"))
	if err != nil {
		e.t.Fatal(err)
	}
	if d.chain, err = pki.ReadCertificates(filepath.Join(d.stateDir, "device.crt")); err != nil {
		e.t.Fatal(err)
	}

	a, err := agent.New(agent.Config{StateDir: d.stateDir, Interval: time.Hour, Measurer: healthy{}, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		e.t.Fatalf("agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.c.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: d.id, AccessLevel: "basic"})
		if err == nil && resp.GetAllowed() {
			return d
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("device %s not allowed basic within 10s: %v %v", d.id, resp.GetReasons(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) revoke(id string) {
	e.t.Helper()
	if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "laptop stolen"}); err != nil {
		e.t.Fatalf("revoke: %v", err)
	}
}

// gatewayCert has the collector issue a gateway certificate, as
// posture-collector gateway add does.
func (e *env) gatewayCert(name string) tls.Certificate {
	return testtools.GatewayCert(e.t, e.admin, name)
}

// serverCert issues a serving certificate from the collector CA for a
// gateway under test.
func (e *env) serverCert() tls.Certificate {
	e.t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := e.ca.IssueServer(key.Public(), []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// foreignDeviceCert is a device certificate with a SPIFFE ID of the right
// trust domain from a CA the collector never heard of.
func foreignDeviceCert(t testing.TB, id string) *x509.Certificate {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir(), testTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueClient(key.Public(), pki.SPIFFEID(testTrustDomain, pki.RoleDevice, id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// healthy measures a healthy, unencrypted Debian 12 machine.
type healthy struct{}

func (healthy) Collect(context.Context) *posturev1.PostureReport {
	meta := func() *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	}
	unavailable := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "not measured"}
	return &posturev1.PostureReport{
		Os:         &posturev1.OSInfo{Meta: meta(), Platform: "linux", Name: "debian", Version: "12", KernelVersion: "6.1.0"},
		Disk:       &posturev1.DiskEncryption{Meta: meta(), Volumes: []*posturev1.Volume{{MountPoint: "/"}}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta(), Enabled: true},
		Updates:    &posturev1.Updates{Meta: meta(), Manager: "apt"},
		Firewall:   &posturev1.Firewall{Meta: unavailable},
		ScreenLock: &posturev1.ScreenLock{Meta: unavailable},
	}
}

// Encodings of a certificate chain as the gateways forward it.
func pemOf(chain ...*x509.Certificate) string {
	var b []byte
	for _, c := range chain {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return string(b)
}

// nginxEscaped is $ssl_client_escaped_cert: every byte outside the URI
// unreserved set percent-encoded.
func nginxEscaped(chain ...*x509.Certificate) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for _, c := range []byte(pemOf(chain...)) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	return string(b)
}

// envoyQueryEscaped is a URL query encoding of the PEM ('+' for spaces).
func envoyQueryEscaped(chain ...*x509.Certificate) string { return url.QueryEscape(pemOf(chain...)) }
