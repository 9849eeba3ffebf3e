package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// newTLSKey makes a TLS key to renew for, with its PKIX DER public key.
func newTLSKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return key, pub
}

// startRenewal opens a renewal and returns it with the collector's nonce.
func startRenewal(conn *grpc.ClientConn) (posturev1.ReportService_RenewCertificateClient, []byte, error) {
	st, err := posturev1.NewReportServiceClient(conn).RenewCertificate(context.Background())
	if err != nil {
		return nil, nil, err
	}
	m, err := st.Recv()
	if err != nil {
		return nil, nil, err
	}
	if m.GetChallenge() == nil {
		return nil, nil, errors.New("renewal did not open with a challenge")
	}
	return st, m.GetChallenge().GetNonce(), nil
}

// finishRenewal sends the answer and returns the new certificate.
func finishRenewal(st posturev1.ReportService_RenewCertificateClient, ans *posturev1.RenewAnswer) (*x509.Certificate, error) {
	if err := st.Send(&posturev1.RenewRequest{Step: &posturev1.RenewRequest_Answer{Answer: ans}}); err != nil && err != io.EOF {
		return nil, err
	}
	m, err := st.Recv()
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(m.GetResult().GetCertificate())
}

// softwareAnswer proves tlsPub with a software identity key over nonce.
func softwareAnswer(t testing.TB, idKey *ecdsa.PrivateKey, nonce, tlsPub []byte) *posturev1.RenewAnswer {
	t.Helper()
	sig, err := ecdsa.SignASN1(rand.Reader, idKey, envelope.RenewDigest(nonce, tlsPub))
	if err != nil {
		t.Fatal(err)
	}
	return &posturev1.RenewAnswer{TlsPublicKey: tlsPub, Signature: sig}
}

// renewSoftware renews by hand over a connection made with cert.
func renewSoftware(t testing.TB, e *env, cert tls.Certificate, idKey *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	st, nonce, err := startRenewal(e.dial(&cert))
	if err != nil {
		t.Fatalf("start renewal: %v", err)
	}
	key, pub := newTLSKey(t)
	c, err := finishRenewal(st, softwareAnswer(t, idKey, nonce, pub))
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}
}

// opensStream says whether cert is let in to stream reports; the error
// says why not.
func opensStream(e *env, cert tls.Certificate) error {
	_, err := startReports(e.dial(&cert), nil, "")
	return err
}

func serialOf(c tls.Certificate) string { return c.Leaf.SerialNumber.Text(16) }

// A software device renews its certificate: the new one names the same
// device, certifies the new key, lasts the configured lifetime, and is the
// only one that counts from then on, also after a restart.
func TestRenewSoftware(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	oldCert, idKey := deviceCreds(t, dir)
	a := openReports(t, e, oldCert, idKey, id)
	if m := a.send(a.next()); m.GetAck() == nil {
		t.Fatalf("report before renewing: %v", m)
	}

	newCert := renewSoftware(t, e, oldCert, idKey)
	if got, err := pki.PeerID(newCert.Leaf); err != nil || got.String() != pki.SPIFFEID(trustDomain, pki.RoleDevice, id).String() {
		t.Errorf("renewed certificate names %v (%v), want device %s", got, err, id)
	}
	if serialOf(newCert) == serialOf(oldCert) {
		t.Fatal("renewal kept the serial")
	}
	if left := time.Until(newCert.Leaf.NotAfter); left < 364*24*time.Hour {
		t.Errorf("renewed certificate is valid for %s more, want a year", left)
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.c.CA())
	if _, err := newCert.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("renewed certificate does not verify against the collector CA: %v", err)
	}
	if s := e.stats(); s.GetCertificatesRenewed() != 1 {
		t.Errorf("certificates renewed = %d, want 1", s.GetCertificatesRenewed())
	}

	check := func(c tls.Certificate) *posturev1.CheckAccessResponse {
		t.Helper()
		r, err := e.gwLocal.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic",
			CertificateSerial: serialOf(c), CertificateKeySha256: pki.KeySHA256(c.Leaf)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, restarted := range []bool{false, true} {
		if restarted {
			e.stop()
			e.start()
		}
		b := openReports(t, e, newCert, idKey, id)
		if m := b.send(b.next()); m.GetAck() == nil || m.GetAck().GetSeq() < 2 {
			t.Errorf("restarted %v: report with the renewed certificate: %v; want it stored, continuing the chain", restarted, m)
		}
		if err := opensStream(e, oldCert); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "replaced") {
			t.Errorf("restarted %v: report stream with the certificate from before renewing: %v; want PermissionDenied, replaced", restarted, err)
		}
		if r := check(newCert); !r.GetAllowed() {
			t.Errorf("restarted %v: decision naming the renewed certificate denied: %v", restarted, r.GetReasons())
		}
		if r := check(oldCert); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "replaced") {
			t.Errorf("restarted %v: decision naming the certificate from before renewing: allowed %v, %v", restarted, r.GetAllowed(), r.GetReasons())
		}
	}
}

// The certificate a renewal replaced may renew again (its answer may have
// been lost on the way) but do nothing else; once the device renews with
// its newest certificate, the older ones are done.
func TestRenewAfterLostResult(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	c1, idKey := deviceCreds(t, dir)
	c2 := renewSoftware(t, e, c1, idKey) // "lost": the device goes on with c1
	if err := opensStream(e, c1); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("report stream with the replaced certificate: %v, want PermissionDenied", err)
	}
	c3 := renewSoftware(t, e, c1, idKey)
	if err := opensStream(e, c3); err != nil {
		t.Fatalf("report stream with the certificate renewed again: %v", err)
	}
	if err := opensStream(e, c2); status.Code(err) != codes.PermissionDenied {
		t.Errorf("report stream with the lost certificate: %v, want PermissionDenied", err)
	}
	c4 := renewSoftware(t, e, c3, idKey)
	for name, old := range map[string]tls.Certificate{"first": c1, "lost": c2} {
		if _, _, err := startRenewal(e.dial(&old)); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "replaced") {
			t.Errorf("renewal with the %s certificate after renewing with the newest: %v; want PermissionDenied, replaced", name, err)
		}
	}
	if err := opensStream(e, c4); err != nil {
		t.Errorf("report stream with the newest certificate: %v", err)
	}
	b := openReports(t, e, c4, idKey, id)
	if m := b.send(b.next()); m.GetAck() == nil {
		t.Errorf("report with the newest certificate: %v", m)
	}
}

// A renewal without a valid proof by the device's identity, bound to this
// stream's nonce and the TLS key asked for, is refused with its reason,
// counted, and changes nothing.
func TestRenewRefusals(t *testing.T) {
	metricsAddr := freeAddr(t)
	e := startCollectorWith(t, func(c *collector.Config) { c.MetricsListen = metricsAddr })
	dir, id := e.enroll()
	c1, idKey := deviceCreds(t, dir)

	// An honest renewal, whose answer is replayed below.
	st, n1, err := startRenewal(e.dial(&c1))
	if err != nil {
		t.Fatal(err)
	}
	key1, pub1 := newTLSKey(t)
	replayed := softwareAnswer(t, idKey, n1, pub1)
	c2, err := finishRenewal(st, replayed)
	if err != nil {
		t.Fatalf("honest renewal: %v", err)
	}
	cur := tls.Certificate{Certificate: [][]byte{c2.Raw}, PrivateKey: key1, Leaf: c2}

	otherKey, _ := pki.NewKey()
	_, otherPub := newTLSKey(t)
	tests := []struct {
		name   string
		answer func(t *testing.T, nonce, pub []byte) *posturev1.RenewAnswer
		code   codes.Code
		reason string
	}{
		{"signed by another key", func(t *testing.T, nonce, pub []byte) *posturev1.RenewAnswer {
			return softwareAnswer(t, otherKey, nonce, pub)
		}, codes.PermissionDenied, "bad_proof"},
		{"signed over another nonce", func(t *testing.T, _, pub []byte) *posturev1.RenewAnswer {
			other := make([]byte, 32)
			rand.Read(other)
			return softwareAnswer(t, idKey, other, pub)
		}, codes.PermissionDenied, "bad_proof"},
		{"signed over the nonce of another open renewal", func(t *testing.T, _, pub []byte) *posturev1.RenewAnswer {
			_, n, err := startRenewal(e.dial(&cur))
			if err != nil {
				t.Fatal(err)
			}
			return softwareAnswer(t, idKey, n, pub)
		}, codes.PermissionDenied, "bad_proof"},
		{"an earlier renewal's answer replayed", func(*testing.T, []byte, []byte) *posturev1.RenewAnswer {
			return replayed
		}, codes.PermissionDenied, "bad_proof"},
		{"signed for another TLS key", func(t *testing.T, nonce, pub []byte) *posturev1.RenewAnswer {
			a := softwareAnswer(t, idKey, nonce, otherPub)
			a.TlsPublicKey = pub
			return a
		}, codes.PermissionDenied, "bad_proof"},
		{"an enrollment signature", func(t *testing.T, nonce, pub []byte) *posturev1.RenewAnswer {
			der, _ := x509.MarshalPKIXPublicKey(idKey.Public())
			sig, _ := ecdsa.SignASN1(rand.Reader, idKey, envelope.EnrollDigest(nonce, pub, der))
			return &posturev1.RenewAnswer{TlsPublicKey: pub, Signature: sig}
		}, codes.PermissionDenied, "bad_proof"},
		{"no proof", func(_ *testing.T, _, pub []byte) *posturev1.RenewAnswer {
			return &posturev1.RenewAnswer{TlsPublicKey: pub}
		}, codes.PermissionDenied, "bad_proof"},
		{"a TLS key that is not P-256", func(t *testing.T, nonce, _ []byte) *posturev1.RenewAnswer {
			return softwareAnswer(t, idKey, nonce, []byte("not a key"))
		}, codes.InvalidArgument, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.stats().GetRenewalsRejected()[tt.reason]
			st, nonce, err := startRenewal(e.dial(&cur))
			if err != nil {
				t.Fatal(err)
			}
			_, pub := newTLSKey(t)
			c, err := finishRenewal(st, tt.answer(t, nonce, pub))
			if status.Code(err) != tt.code {
				t.Fatalf("renewal = %v, %v; want %v", c, err, tt.code)
			}
			if got := e.stats().GetRenewalsRejected()[tt.reason]; got != before+1 {
				t.Errorf("renewals rejected for %s: %d, want %d", tt.reason, got, before+1)
			}
		})
	}

	// Nothing changed: the honest renewal alone is counted, and its
	// certificate is still the device's.
	if n := e.stats().GetCertificatesRenewed(); n != 1 {
		t.Errorf("certificates renewed = %d, want 1", n)
	}
	b := openReports(t, e, cur, idKey, id)
	if m := b.send(b.next()); m.GetAck() == nil {
		t.Errorf("report with the certificate from before the refusals: %v", m)
	}
	body := scrape(t, metricsAddr)
	for _, want := range []string{
		"posture_certificates_renewed_total 1",
		`posture_certificate_renewals_rejected_total{reason="bad_proof"} 7`,
		`posture_certificate_renewals_rejected_total{reason="malformed"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// Revoked and suspect devices cannot renew; nothing is issued.
func TestRenewRevokedOrSuspect(t *testing.T) {
	tests := []struct {
		name  string
		make  func(t *testing.T, e *env, id string, cert tls.Certificate, key *ecdsa.PrivateKey)
		code  codes.Code
		words string
	}{
		{"revoked", func(t *testing.T, e *env, id string, _ tls.Certificate, _ *ecdsa.PrivateKey) {
			if _, err := e.admin.RevokeDevice(context.Background(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "laptop stolen"}); err != nil {
				t.Fatal(err)
			}
		}, codes.PermissionDenied, "revoked"},
		{"suspect", func(t *testing.T, e *env, id string, cert tls.Certificate, key *ecdsa.PrivateKey) {
			a := openReports(t, e, cert, key, id)
			a.digest = []byte("not the stored head")
			if m := a.send(a.next()); m.GetRejected().GetReason() != posturev1.RejectReason_REJECT_REASON_CHAIN_BROKEN {
				t.Fatalf("forked report: %v, want CHAIN_BROKEN", m)
			}
		}, codes.FailedPrecondition, "suspect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startCollector(t)
			dir, id := e.enroll()
			cert, idKey := deviceCreds(t, dir)
			tt.make(t, e, id, cert, idKey)
			st, nonce, err := startRenewal(e.dial(&cert))
			if err == nil {
				_, pub := newTLSKey(t)
				_, err = finishRenewal(st, softwareAnswer(t, idKey, nonce, pub))
			}
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.words) {
				t.Errorf("renewal of a %s device: %v; want %v naming %q", tt.name, err, tt.code, tt.words)
			}
			if n := e.stats().GetCertificatesRenewed(); n != 0 {
				t.Errorf("certificates renewed = %d, want 0", n)
			}
		})
	}
}

// A TPM device renews with a quote by its AK over the renewal digest; a
// pending one cannot until approved, and a quote by another AK or over
// another nonce is refused.
func TestRenewTPM(t *testing.T) {
	_, dev := openSimulator(t, 31)
	e := startCollector(t)
	ctx := context.Background()
	dir := t.TempDir()
	res, err := agent.EnrollWith(ctx, dir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	id := res.DeviceID
	tpm, err := identity.NewTPM(dev, dir, identity.TPMOptions{}) // the enrolled AK
	if err != nil {
		t.Fatal(err)
	}
	otherAK, err := identity.NewTPM(dev, t.TempDir(), identity.TPMOptions{}) // another AK in the same TPM
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "device.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	quoted := func(by *identity.TPM, nonce, pub []byte) *posturev1.RenewAnswer {
		t.Helper()
		q, err := by.Quote(envelope.RenewDigest(nonce, pub))
		if err != nil {
			t.Fatal(err)
		}
		return &posturev1.RenewAnswer{TlsPublicKey: pub, Quote: quoteProto(q)}
	}
	renew := func(answer func(nonce, pub []byte) *posturev1.RenewAnswer) (tls.Certificate, error) {
		t.Helper()
		st, nonce, err := startRenewal(e.dial(&cert))
		if err != nil {
			return tls.Certificate{}, err
		}
		key, pub := newTLSKey(t)
		c, err := finishRenewal(st, answer(nonce, pub))
		if err != nil {
			return tls.Certificate{}, err
		}
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}, nil
	}
	honest := func(nonce, pub []byte) *posturev1.RenewAnswer { return quoted(tpm, nonce, pub) }

	if _, err := renew(honest); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "pending approval") {
		t.Fatalf("renewal of a pending device: %v; want FailedPrecondition naming the approval", err)
	}
	if _, err := e.admin.ApproveDevice(ctx, &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatal(err)
	}
	refused := map[string]func(nonce, pub []byte) *posturev1.RenewAnswer{
		"quoted by another AK": func(nonce, pub []byte) *posturev1.RenewAnswer { return quoted(otherAK, nonce, pub) },
		"quoted over another nonce": func(_, pub []byte) *posturev1.RenewAnswer {
			return quoted(tpm, []byte("another nonce"), pub)
		},
		"a signature instead of a quote": func(nonce, pub []byte) *posturev1.RenewAnswer {
			k, _ := pki.NewKey()
			return softwareAnswer(t, k, nonce, pub)
		},
	}
	for name, answer := range refused {
		if _, err := renew(answer); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, err)
		}
	}
	if n := e.stats().GetRenewalsRejected()["bad_proof"]; n != uint64(len(refused)) {
		t.Errorf("renewals rejected for bad_proof: %d, want %d", n, len(refused))
	}

	renewed, err := renew(honest)
	if err != nil {
		t.Fatalf("renewal with a quote by the enrolled AK: %v", err)
	}
	if err := opensStream(e, renewed); err != nil {
		t.Errorf("report stream with the renewed certificate: %v", err)
	}
	if err := opensStream(e, cert); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("report stream with the certificate from before renewing: %v; want PermissionDenied, replaced", err)
	}
	if n := e.stats().GetCertificatesRenewed(); n != 1 {
		t.Errorf("certificates renewed = %d, want 1", n)
	}
}

// An agent whose certificate has less than a third of its lifetime left
// renews it on its own, writes it with its key, and carries on reporting
// over a new connection that presents it.
func TestAgentRenewsNearExpiry(t *testing.T) {
	for _, kind := range []string{agent.IdentitySoftware, agent.IdentityTPM} {
		t.Run(kind, func(t *testing.T) {
			// A two-minute certificate (backdated five minutes against clock
			// skew) is due for renewal at once; it outlives the test.
			e := startCollectorWith(t, func(c *collector.Config) { c.DeviceCertTTL = 2 * time.Minute })
			dir := t.TempDir()
			var dev transport.TPMCloser
			var id string
			if kind == agent.IdentityTPM {
				_, dev = openSimulator(t, 32)
				res, err := agent.EnrollWith(context.Background(), dir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
				if err != nil {
					t.Fatal(err)
				}
				id = res.DeviceID
				if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
					t.Fatal(err)
				}
			} else {
				res, err := agent.Enroll(context.Background(), dir, e.token(time.Hour, 1))
				if err != nil {
					t.Fatal(err)
				}
				id = res.DeviceID
			}
			enrolled := diskCert(t, dir)
			// The agent reaches the collector through a proxy that counts
			// its connections.
			p := startProxy(t, e.addr)
			pointAgentAt(t, dir, p.addr())

			a, err := agent.New(agent.Config{StateDir: dir, Interval: 50 * time.Millisecond, Measurer: &fixedMeasurer{encrypted: true},
				MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, TPMDevice: dev})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); a.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })

			eventuallyWithin(t, 30*time.Second, "the agent's renewal", func() bool { return e.stats().GetCertificatesRenewed() == 1 })
			eventually(t, "the renewed certificate on disk with its key", func() bool {
				c, err := tls.LoadX509KeyPair(filepath.Join(dir, "device.crt"), filepath.Join(dir, "tls.key"))
				return err == nil && serialOf(c) != serialOf(enrolled)
			})
			d, err := e.device(id)
			if err != nil {
				t.Fatal(err)
			}
			seq := d.GetDevice().GetLastSeq()
			eventuallyWithin(t, 30*time.Second, "reports on a new connection", func() bool {
				d, err := e.device(id)
				return err == nil && d.GetDevice().GetLastSeq() >= seq+3 && p.connections() >= 2
			})
			if err := opensStream(e, enrolled); status.Code(err) != codes.PermissionDenied {
				t.Errorf("report stream with the enrolled certificate: %v, want PermissionDenied", err)
			}
			if n := e.stats().GetCertificatesRenewed(); n != 1 {
				t.Errorf("certificates renewed = %d, want 1 (attempts are RenewRetry apart)", n)
			}
		})
	}
}

// A refused renewal is tried again later, while the certificate keeps
// working: a pending TPM device reports, and renews once approved.
func TestAgentRetriesRefusedRenewal(t *testing.T) {
	_, dev := openSimulator(t, 33)
	e := startCollectorWith(t, func(c *collector.Config) { c.DeviceCertTTL = 2 * time.Minute })
	dir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), dir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	id, enrolled := res.DeviceID, diskCert(t, dir)
	a, err := agent.New(agent.Config{StateDir: dir, Interval: 50 * time.Millisecond, Measurer: &fixedMeasurer{encrypted: true},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, TPMDevice: dev, RenewRetry: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	eventually(t, "renewal refused twice while reports go on", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= 3 && e.stats().GetRenewalsRejected()["device_pending"] >= 2
	})
	if n := e.stats().GetCertificatesRenewed(); n != 0 {
		t.Fatalf("certificates renewed for a pending device: %d", n)
	}
	if serialOf(diskCert(t, dir)) != serialOf(enrolled) {
		t.Fatal("a refused renewal changed the certificate on disk")
	}
	if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "renewal after approval", func() bool {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, "device.crt"), filepath.Join(dir, "tls.key"))
		return e.stats().GetCertificatesRenewed() >= 1 && err == nil && serialOf(c) != serialOf(enrolled)
	})
	d, _ := e.device(id)
	seq := d.GetDevice().GetLastSeq()
	eventually(t, "reports with the renewed certificate", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= seq+3
	})
}

// A running agent presents the certificate of a later posture-agent enroll
// when it reconnects, without a restart.
func TestAgentPicksUpEnrollment(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	runAgent(t, dir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	eventually(t, "reports flowing", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 2 })
	if _, err := agent.Enroll(context.Background(), dir, e.token(time.Hour, 1)); err != nil {
		t.Fatalf("enroll again: %v", err)
	}
	// No restart: the stream of the certificate the enrollment replaced
	// ends at its next report, and the agent must reconnect with the new one.
	d, _ := e.device(id)
	seq := d.GetDevice().GetLastSeq()
	eventually(t, "reports after reconnecting", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= seq+2 })
}

// diskCert reads the device certificate and key in a state directory.
func diskCert(t testing.TB, dir string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, "device.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pointAgentAt makes an enrolled agent dial addr.
func pointAgentAt(t testing.TB, dir, addr string) {
	t.Helper()
	path := filepath.Join(dir, "agent.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["collector"] = addr
	if data, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func scrape(t testing.TB, addr string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// Renewals racing with one certificate (two agents holding one identity)
// leave the collector's memory agreeing with its store: the certificate
// stored last is the one that counts, after a restart too.
func TestConcurrentRenewals(t *testing.T) {
	e := startCollector(t)
	dir, _ := e.enroll()
	cert, idKey := deviceCreds(t, dir)
	const n = 4
	got := make(chan tls.Certificate, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			st, nonce, err := startRenewal(e.dial(&cert))
			if err != nil {
				errs <- err
				return
			}
			key, pub := newTLSKey(t)
			c, err := finishRenewal(st, softwareAnswer(t, idKey, nonce, pub))
			if err != nil {
				errs <- err
				return
			}
			got <- tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}
		}()
	}
	var renewed []tls.Certificate
	for range n {
		select {
		case c := <-got:
			renewed = append(renewed, c)
		case err := <-errs:
			t.Logf("a racing renewal was refused: %v", err)
		}
	}
	check := func(when string) {
		t.Helper()
		open := 0
		for _, c := range renewed {
			if opensStream(e, c) == nil {
				open++
			}
		}
		if open != 1 {
			t.Errorf("%s: %d of %d renewed certificates open a report stream, want exactly 1", when, open, len(renewed))
		}
	}
	if len(renewed) == 0 {
		t.Fatal("no renewal succeeded")
	}
	check("after the race")
	e.stop()
	e.start()
	check("after a restart")
}
