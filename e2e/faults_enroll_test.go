package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// agentEnroll runs posture-agent enroll on stateDir and returns its output.
func agentEnroll(t *testing.T, tok, stateDir string) (string, error) {
	t.Helper()
	_, bin := builtBinaries(t)
	out, err := exec.Command(bin, "enroll", "--token", tok, "--state-dir", stateDir, "--identity", "software").CombinedOutput()
	return string(out), err
}

// handEnrollment is an enrollment driven step by step with the keys of an
// agent's state directory, so that the agent can take over after any step.
type handEnrollment struct {
	st     posturev1.EnrollmentService_EnrollClient
	id     *identity.Software
	tlsPub []byte
	close  func()
}

// beginEnrollment creates the keys in stateDir as posture-agent enroll
// does, sends EnrollBegin and waits for the challenge.
func beginEnrollment(t *testing.T, tok, stateDir string) (*handEnrollment, *posturev1.EnrollChallenge) {
	t.Helper()
	parsed, err := token.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.LoadOrCreateSoftware(filepath.Join(stateDir, "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	tlsKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(filepath.Join(stateDir, "tls.key"), tlsKey); err != nil {
		t.Fatal(err)
	}
	tlsPub, err := x509.MarshalPKIXPublicKey(tlsKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	var pinned *x509.Certificate
	conn, err := grpc.NewClient(parsed.Addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.PinnedTLS(parsed.Fingerprint, &pinned))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	st, err := posturev1.NewEnrollmentServiceClient(conn).Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := &handEnrollment{st: st, id: id, tlsPub: tlsPub, close: func() { cancel(); conn.Close() }}
	t.Cleanup(h.close)
	if err := st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
		Token: parsed.Secret, Hostname: "cut-off", Platform: "linux", TlsPublicKey: tlsPub, Identity: id.Claim(),
	}}}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil || m.GetChallenge() == nil {
		t.Fatalf("enrollment challenge: %v, %v", m, err)
	}
	return h, m.GetChallenge()
}

// answer sends the answer to the challenge and does not read the result.
func (h *handEnrollment) answer(t *testing.T, ch *posturev1.EnrollChallenge) {
	t.Helper()
	ans, err := h.id.Answer(ch, h.tlsPub)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Answer{Answer: ans}}); err != nil {
		t.Fatal(err)
	}
}

// tokenUses reads how often each enrollment token was used.
func tokenUses(t *testing.T, c *faultCollector) []int {
	t.Helper()
	rows, err := openDBFile(t, c.dbPath(), false).Query(`SELECT used FROM tokens ORDER BY created_at`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

// The collector SIGKILLed in the middle of enrollments. Cut off before the
// collector stored anything (the challenge outstanding, or at a random
// moment), an enrollment leaves nothing behind: the agent enrolls with the
// same token. Cut off after the collector stored it but before the agent
// had the answer, the token is used (docs/faults.md): a token with uses
// left enrolls the device again, else a new one does, under the same
// device ID, and the device reports.
func TestCollectorKilledMidEnrollment(t *testing.T) {
	t.Parallel()
	c := startSQLiteCollector(t, "")
	db := openDBFile(t, c.dbPath(), false)

	t.Run("challenge outstanding", func(t *testing.T) {
		tok, dir := c.token(1), t.TempDir()
		h, _ := beginEnrollment(t, tok, dir)
		c.kill()
		h.close()
		c.start()
		if out, err := agentEnroll(t, tok, dir); err != nil {
			t.Fatalf("enrolling again with the same token: %v: %s", err, out)
		}
	})

	t.Run("stored, answer lost", func(t *testing.T) {
		tok, dir := c.token(1), t.TempDir()
		h, ch := beginEnrollment(t, tok, dir)
		before := len(heads(t, db))
		h.answer(t, ch)
		eventually(t, "the enrollment stored", func() bool { return len(heads(t, db)) > before })
		c.kill()
		h.close()
		c.start()
		out, err := agentEnroll(t, tok, dir)
		if err == nil || !strings.Contains(out, "already used") {
			t.Fatalf("enrolling again with the used token: %v: %s; want it refused as used, as docs/faults.md says", err, out)
		}
		if out, err := agentEnroll(t, c.token(1), dir); err != nil {
			t.Fatalf("enrolling with a new token: %v: %s", err, out)
		}
		if n := len(heads(t, db)); n != before+1 {
			t.Errorf("%d devices after enrolling one device twice, want %d", n, before+1)
		}
		p := runProcess(t, dir, 100*time.Millisecond)
		id := deviceOf(t, dir)
		eventuallyWithin(t, time.Minute, "the device reporting", func() bool { return heads(t, db)[id] >= 2 })
		p.stop()
	})

	t.Run("random moment", func(t *testing.T) {
		for round := range 3 {
			const n = 6
			tok := c.token(2 * n) // a use to spare for each
			dirs := make([]string, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				dirs[i] = t.TempDir()
				wg.Go(func() { _, errs[i] = agentEnroll(t, tok, dirs[i]) })
			}
			time.Sleep(time.Duration(mathrand.IntN(150)) * time.Millisecond)
			c.kill()
			wg.Wait()
			c.start()
			cut := 0
			for i, dir := range dirs {
				if errs[i] == nil {
					continue
				}
				cut++
				if out, err := agentEnroll(t, tok, dir); err != nil {
					t.Fatalf("round %d: enrolling again after the collector was killed: %v: %s", round, err, out)
				}
			}
			t.Logf("round %d: %d of %d enrollments cut off, each enrolled again", round, cut, n)
			h := heads(t, db)
			for _, dir := range dirs {
				if _, ok := h[deviceOf(t, dir)]; !ok {
					t.Errorf("round %d: device of %s not stored", round, dir)
				}
			}
		}
	})
	t.Logf("token uses: %v", tokenUses(t, c))
}

// deviceOf is the device ID an enrolled state directory holds.
func deviceOf(t *testing.T, stateDir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(stateDir, "agent.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		DeviceID string `json:"device_id"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.DeviceID
}

// certSerial reads the serial of the certificate a device was last issued.
func certSerial(t *testing.T, c *faultCollector, id string) string {
	t.Helper()
	var serial string
	if err := openDBFile(t, c.dbPath(), false).QueryRow(`SELECT cert_serial FROM devices WHERE id = ?`, id).Scan(&serial); err != nil {
		t.Fatal(err)
	}
	return serial
}

// handDeviceConn connects with an enrolled state directory's certificate,
// or cert when given.
func handDeviceConn(t *testing.T, c *faultCollector, stateDir string, cert tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cas, err := pki.ReadCertificates(filepath.Join(stateDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cas[0])
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", &cert))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// writeDeviceCert puts a renewed certificate and its key in the state
// directory, as the agent does when it has the answer.
func writeDeviceCert(stateDir string, cert *x509.Certificate, key crypto.Signer) error {
	if err := pki.WriteCertificates(filepath.Join(stateDir, "device.crt"), cert); err != nil {
		return err
	}
	return pki.WritePrivateKey(filepath.Join(stateDir, "tls.key"), key)
}

// renew renews the certificate of an enrolled state directory with the
// certificate it holds, and keeps the new one there, as the agent does.
func renew(c *faultCollector, stateDir string) error {
	cert, idKey, err := loadDeviceCreds(stateDir)
	if err != nil {
		return err
	}
	cas, err := pki.ReadCertificates(filepath.Join(stateDir, "ca.crt"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(cas[0])
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", &cert))))
	if err != nil {
		return err
	}
	defer conn.Close()
	st, nonce, err := startRenewal(conn)
	if err != nil {
		return err
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	sig, err := ecdsa.SignASN1(rand.Reader, idKey, envelope.RenewDigest(nonce, pub))
	if err != nil {
		return err
	}
	renewed, err := finishRenewal(st, &posturev1.RenewAnswer{TlsPublicKey: pub, Signature: sig})
	if err != nil {
		return err
	}
	return writeDeviceCert(stateDir, renewed, key)
}

// The collector SIGKILLed in the middle of certificate renewals. Cut off
// before it stored the new certificate, the device's certificate still
// counts and the agent reports on. Cut off after, the device holds the
// certificate the renewal replaced: it may not report with it
// (docs/faults.md), but renews with it again, and its reports continue the
// chain. At random moments, every device renews again with whatever
// certificate it holds.
func TestCollectorKilledMidRenewal(t *testing.T) {
	t.Parallel()
	c := startSQLiteCollector(t, "")
	db := openDBFile(t, c.dbPath(), false)
	dir, id := enrollProcess(t, c.token(1))
	report := func(what string) {
		t.Helper()
		from := heads(t, db)[id]
		p := runProcess(t, dir, 100*time.Millisecond)
		eventuallyWithin(t, time.Minute, what, func() bool { return heads(t, db)[id] >= from+2 })
		p.stop()
	}
	report("reports before any renewal")

	t.Run("challenge outstanding", func(t *testing.T) {
		cert, _ := deviceCreds(t, dir)
		if _, _, err := startRenewal(handDeviceConn(t, c, dir, cert)); err != nil {
			t.Fatal(err)
		}
		c.kill()
		c.start()
		report("reports with the certificate a cut-off renewal was to replace")
	})

	t.Run("stored, answer lost", func(t *testing.T) {
		cert, idKey := deviceCreds(t, dir)
		old := certSerial(t, c, id)
		st, nonce, err := startRenewal(handDeviceConn(t, c, dir, cert))
		if err != nil {
			t.Fatal(err)
		}
		_, pub := newTLSKey(t)
		if err := st.Send(&posturev1.RenewRequest{Step: &posturev1.RenewRequest_Answer{Answer: softwareAnswer(t, idKey, nonce, pub)}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the renewal stored", func() bool { return certSerial(t, c, id) != old })
		c.kill()
		c.start()
		conn := handDeviceConn(t, c, dir, cert)
		if _, err := startReports(conn, nil, ""); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "replaced") {
			t.Errorf("report stream with the certificate the stored renewal replaced: %v; want PermissionDenied, replaced (docs/faults.md)", err)
		}
		if err := renew(c, dir); err != nil {
			t.Fatalf("renewing again with the replaced certificate: %v", err)
		}
		report("reports with the certificate renewed again")
	})

	t.Run("random moment", func(t *testing.T) {
		const n = 4
		dirs := []string{dir}
		for range n - 1 {
			d, _ := enrollProcess(t, c.token(1))
			dirs = append(dirs, d)
		}
		for round := range 3 {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for _, d := range dirs {
				wg.Go(func() { renewUntil(c, d, stop) })
			}
			time.Sleep(200*time.Millisecond + time.Duration(mathrand.IntN(300))*time.Millisecond)
			c.kill()
			close(stop)
			wg.Wait()
			c.start()
			for _, d := range dirs {
				if err := renew(c, d); err != nil {
					t.Fatalf("round %d: renewing after the collector was killed: %v", round, err)
				}
			}
		}
		var procs []*agentProcess
		from := heads(t, db)
		for _, d := range dirs {
			procs = append(procs, runProcess(t, d, 100*time.Millisecond))
		}
		for _, d := range dirs {
			id := deviceOf(t, d)
			eventuallyWithin(t, time.Minute, "reports of "+id, func() bool { return heads(t, db)[id] >= from[id]+2 })
		}
		for _, p := range procs {
			p.stop()
		}
	})

	c.stop()
	st := openStore(t, c.dbPath())
	checkChain(t, st, id, (&runningAgent{stateDir: dir}).ackedHead(t))
}

// renewUntil renews a device's certificate again and again until stop is
// closed or the collector goes away.
func renewUntil(c *faultCollector, dir string, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if renew(c, dir) != nil {
			return
		}
	}
}
