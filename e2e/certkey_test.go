package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jackc/pgx/v5"
	_ "github.com/mattn/go-sqlite3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector/gatewayfront"
	"github.com/posture-project/posture/gatewayclient"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// certFronts are the ways a device certificate reaches the collector
// besides the device's own calls: CheckAccess naming it, gatewayclient's
// CheckCertificate, /check (forward-auth) and Envoy ext_authz on the
// collector's listener.
type certFronts struct {
	e      *env
	gw     posturev1.GatewayServiceClient
	gc     *gatewayclient.Client
	check  *httptest.Server
	extz   authv3.AuthorizationClient
	secret string
}

// startCertFronts restarts e's collector with ext_authz on its listener, as
// posture-collector run does, and opens every front on it.
func startCertFronts(t *testing.T, e *env) *certFronts {
	t.Helper()
	e.stop()
	e.startWith(func() {
		x, err := gatewayfront.NewExtAuthz(gatewayfront.ExtAuthzConfig{Decider: e.c, TrustDomain: trustDomain, Roots: e.c.Roots()})
		if err != nil {
			t.Fatal(err)
		}
		e.c.RegisterTLS(x.Register)
	})
	f := &certFronts{e: e, gw: e.gateway("edge"), secret: "0123456789abcdef-gateway-secret"}
	fa, err := gatewayfront.NewForwardAuth(gatewayfront.ForwardAuthConfig{Decider: e.c, TrustDomain: trustDomain, Roots: e.c.Roots(), BearerSecrets: []string{f.secret}})
	if err != nil {
		t.Fatal(err)
	}
	f.check = httptest.NewServer(fa)
	t.Cleanup(f.check.Close)
	f.extz = authv3.NewAuthorizationClient(e.gatewayConn("envoy"))
	if f.gc, err = gatewayclient.New(gatewayclient.Config{Conn: e.gatewayConn("go-gw"), Grace: time.Minute}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go f.gc.Run(ctx)
	eventually(t, "gatewayclient synced", f.gc.Synced)
	return f
}

// verdict is what one front answered for a certificate: allowed, or the
// reason it gave.
type verdict struct {
	allowed bool
	reason  string
}

// ask asks every front whether cert may have level, and returns their
// answers by front.
func (f *certFronts) ask(t *testing.T, id string, cert *x509.Certificate, level string) map[string]verdict {
	t.Helper()
	out := map[string]verdict{}
	r, err := f.gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: level,
		CertificateSerial: pki.SerialHex(cert), CertificateKeySha256: pki.KeySHA256(cert)})
	if err != nil {
		t.Fatalf("CheckAccess: %v", err)
	}
	out["CheckAccess"] = verdict{r.GetAllowed(), strings.Join(r.GetReasons(), "; ")}
	d := f.gc.CheckCertificate(cert, level)
	out["gatewayclient"] = verdict{d.Allowed, d.Reason}

	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	req, _ := http.NewRequest(http.MethodGet, f.check.URL+"/check?level="+url.QueryEscape(level), nil)
	req.Header.Set("Authorization", "Bearer "+f.secret)
	req.Header.Set("X-Client-Cert", url.PathEscape(pemText))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("/check: %v", err)
	}
	resp.Body.Close()
	out["/check"] = verdict{resp.StatusCode == http.StatusOK, resp.Header.Get("X-Posture-Reason")}

	xr, err := f.extz.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Certificate: url.QueryEscape(pemText)},
		ContextExtensions: map[string]string{gatewayfront.ContextExtensionLevel: level},
		Request:           &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/", Host: "app"}},
	}})
	if err != nil {
		t.Fatalf("ext_authz: %v", err)
	}
	out["ext_authz"] = verdict{codes.Code(xr.GetStatus().GetCode()) == codes.OK, xr.GetStatus().GetMessage()}
	return out
}

// wantAll checks that every front allowed cert level basic, or that every
// one refused it with a reason containing why.
func (f *certFronts) wantAll(t *testing.T, what, id string, cert *x509.Certificate, allowed bool, why string) {
	t.Helper()
	f.wantLevel(t, what, id, cert, "basic", allowed, why)
}

// wantLevel is wantAll for level.
func (f *certFronts) wantLevel(t *testing.T, what, id string, cert *x509.Certificate, level string, allowed bool, why string) {
	t.Helper()
	for front, v := range f.ask(t, id, cert, level) {
		switch {
		case allowed && !v.allowed:
			t.Errorf("%s, %s: denied (%s); want allowed", what, front, v.reason)
		case !allowed && v.allowed:
			t.Errorf("%s, %s: allowed; want denied", what, front)
		case !allowed && !strings.Contains(v.reason, why):
			t.Errorf("%s, %s: denied with %q; want a reason containing %q", what, front, v.reason, why)
		}
	}
}

// refusedToDevice checks that a device's own calls with cert (a report
// stream and a renewal) are refused, saying why.
func refusedToDevice(t *testing.T, e *env, what string, cert tls.Certificate, why string) {
	t.Helper()
	if err := opensStream(e, cert); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), why) {
		t.Errorf("%s: report stream: %v; want PermissionDenied saying %q", what, err, why)
	}
	if _, _, err := startRenewal(e.dial(&cert)); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), why) {
		t.Errorf("%s: renewal: %v; want PermissionDenied saying %q", what, err, why)
	}
}

// What whoever holds the collector CA's key can make — a certificate with
// a device's SPIFFE ID and the serial of its current certificate (or of
// the one its renewal replaced), for another key — verifies against the
// CA but is refused everywhere a device certificate counts: the report
// stream, renewal, CheckAccess with the certificate, gatewayclient's
// CheckCertificate, /check and ext_authz. The genuine certificates work.
func TestMintedCertificateRefused(t *testing.T) {
	e := startCollector(t)
	f := startCertFronts(t, e)
	dir, id := e.enroll()
	genuine, idKey := deviceCreds(t, dir)
	r := openReports(t, e, genuine, idKey, id)
	if m := r.send(r.next()); m.GetAck() == nil {
		t.Fatalf("report: %v", m)
	}
	eventually(t, "the report reaching gatewayclient", func() bool { return f.gc.Check(id, "basic").Allowed })

	minted := testtools.MintLike(t, e.dataDir, genuine.Leaf)
	if _, err := minted.Leaf.Verify(x509.VerifyOptions{Roots: e.c.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the minted certificate does not verify against the collector CA: %v", err)
	}
	const forged = "did not issue it"
	f.wantAll(t, "genuine certificate", id, genuine.Leaf, true, "")
	f.wantAll(t, "minted certificate", id, minted.Leaf, false, forged)
	refusedToDevice(t, e, "minted certificate", minted, forged)

	// After a renewal, neither serial opens anything with another key: the
	// replaced certificate's serial may still renew, but only with its key.
	renewed := renewSoftware(t, e, genuine, idKey)
	eventually(t, "the renewal reaching gatewayclient", func() bool { return f.gc.CheckCertificate(renewed.Leaf, "basic").Allowed })
	mintedRenewed := testtools.MintLike(t, e.dataDir, renewed.Leaf)
	f.wantAll(t, "renewed certificate", id, renewed.Leaf, true, "")
	f.wantAll(t, "minted with the renewed serial", id, mintedRenewed.Leaf, false, forged)
	refusedToDevice(t, e, "minted with the renewed serial", mintedRenewed, forged)
	refusedToDevice(t, e, "minted with the replaced serial", minted, forged)
	if _, _, err := startRenewal(e.dial(&genuine)); err != nil {
		t.Errorf("the replaced certificate asking for a renewal: %v", err)
	}

	// Also after a restart, which rebuilds the fleet from the database.
	e.stop()
	e.start()
	refusedToDevice(t, e, "minted certificate after a restart", mintedRenewed, forged)
	if err := opensStream(e, renewed); err != nil {
		t.Errorf("the renewed certificate after a restart: %v", err)
	}
	if s := e.stats(); s.GetRpcDenied()[posturev1.ReportService_StreamReports_FullMethodName] == 0 {
		t.Errorf("denials not counted: %v", s.GetRpcDenied())
	}
}

// forgetCertKeys stops e's collector and removes every recorded
// certificate key from its database, as a database migrated from before
// keys were recorded holds its devices, then starts it again.
func forgetCertKeys(t *testing.T, e *env, restart func()) {
	t.Helper()
	e.stop()
	db, err := sql.Open("sqlite3", filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE devices SET cert_key_sha256 = NULL, prev_cert_key_sha256 = NULL`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	restart()
}

// A device enrolled before the collector recorded certificate keys is
// recognised by its serial alone until its first call, which records its
// certificate's key: from then on a certificate minted with its serial and
// another key is refused everywhere, and a gateway that names the
// certificate by its serial alone is denied (failing closed), as is a
// gatewayclient from before, whose tag covers the serial alone. Should the
// minted certificate call first, it is the genuine one that is refused,
// saying why: an admin hears of the stolen CA key.
func TestCertKeyRecordedAtFirstCall(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	genuine, idKey := deviceCreds(t, dir)
	dirB, _ := e.enroll()
	genuineB, _ := deviceCreds(t, dirB)
	var f *certFronts
	forgetCertKeys(t, e, func() { f = startCertFronts(t, e) })

	serialOnly := func(id string, cert *x509.Certificate) *posturev1.CheckAccessResponse {
		r, err := f.gw.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "basic", CertificateSerial: pki.SerialHex(cert)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	tagOf := func(id string) uint64 { return f.gc.Check(id, "basic").Device.GetCertificateTag() }
	if tag := tagOf(id); tag != pki.CertTag(pki.SerialHex(genuine.Leaf), nil) {
		t.Fatalf("certificate_tag of a device without a recorded key: %x, want the serial's", tag)
	}

	// The device's first call records its key.
	r := openReports(t, e, genuine, idKey, id)
	if m := r.send(r.next()); m.GetAck() == nil {
		t.Fatalf("report: %v", m)
	}
	eventually(t, "the recorded key reaching gatewayclient", func() bool { return tagOf(id) == gatewayclient.CertificateTag(genuine.Leaf) })
	minted := testtools.MintLike(t, e.dataDir, genuine.Leaf)
	const forged = "did not issue it"
	f.wantAll(t, "genuine certificate", id, genuine.Leaf, true, "")
	f.wantAll(t, "minted certificate", id, minted.Leaf, false, forged)
	refusedToDevice(t, e, "minted certificate", minted, forged)
	if r := serialOnly(id, genuine.Leaf); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), " "), "certificate_key_sha256") {
		t.Errorf("CheckAccess with the serial alone: allowed=%v %v; want denied, asking for certificate_key_sha256", r.GetAllowed(), r.GetReasons())
	}
	if tagOf(id) == pki.CertTag(pki.SerialHex(genuine.Leaf), nil) {
		t.Error("certificate_tag still covers the serial alone: a gatewayclient from before would accept any key")
	}
	// Recorded in the database: a restart keeps it.
	e.stop()
	e.start()
	refusedToDevice(t, e, "minted certificate after a restart", minted, forged)

	// Device B's certificate is minted and presented before B calls: the
	// minted key is recorded, and B's own certificate is refused, saying
	// so, from then on.
	mintedB := testtools.MintLike(t, e.dataDir, genuineB.Leaf)
	if err := opensStream(e, mintedB); err != nil {
		t.Fatalf("the minted certificate of a device without a recorded key, first: %v", err)
	}
	refusedToDevice(t, e, "device B's genuine certificate after a minted one called first", genuineB, forged)
}

// Collectors sharing a PostgreSQL database agree on a certificate's key:
// one learns it from the event another committed (at enrollment, and when
// a device enrolled before keys were recorded first calls), and from the
// database when it starts. A certificate minted with the device's serial
// and another key is refused on each.
func TestCertKeyAcrossReplicas(t *testing.T) {
	s := startReplicas(t, 2)
	a, b := s.reps[0], s.reps[1]
	caDir := a.dataDir
	roots, err := readRoots(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	opens := func(r *replica, cert tls.Certificate) error {
		conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", &cert))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = startReports(conn, nil, "")
		return err
	}
	const forged = "did not issue it"
	refused := func(what string, r *replica, cert tls.Certificate) {
		t.Helper()
		if err := opens(r, cert); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), forged) {
			t.Errorf("%s on %s: %v; want PermissionDenied saying %q", what, r.name, err, forged)
		}
	}

	dir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), dir, a.token(1), agent.EnrollOptions{Identity: agent.IdentitySoftware})
	if err != nil {
		t.Fatal(err)
	}
	genuine, _ := deviceCreds(t, dir)
	minted := testtools.MintLike(t, caDir, genuine.Leaf)
	// b knows the key from a's enrollment event...
	eventually(t, "the enrollment on b", func() bool { _, err := b.device(res.DeviceID); return err == nil })
	refused("minted certificate", b, minted)
	if err := opens(b, genuine); err != nil {
		t.Errorf("genuine certificate on b: %v", err)
	}
	// ...and from the database after a restart.
	b.stop()
	b.start()
	refused("minted certificate after a restart", b, minted)

	// A device whose key neither knows (as after the upgrade) is bound on
	// a by its first call; b hears of it.
	a.stop()
	b.stop()
	conn, err := pgx.Connect(context.Background(), s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), `UPDATE devices SET cert_key_sha256 = NULL, prev_cert_key_sha256 = NULL`); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	a.start()
	b.start()
	if err := opens(a, genuine); err != nil {
		t.Fatalf("genuine certificate on a, recording its key: %v", err)
	}
	eventually(t, "b refusing the minted certificate", func() bool {
		err := opens(b, minted)
		return status.Code(err) == codes.PermissionDenied && strings.Contains(err.Error(), forged)
	})
	if err := opens(b, genuine); err != nil {
		t.Errorf("genuine certificate on b after a recorded its key: %v", err)
	}
}
