package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// streamEnd waits at most 15 s for recv to fail and returns its error; a
// stream still open then fails the test.
func streamEnd(t testing.TB, recv func() error) error {
	t.Helper()
	ended := make(chan error, 1)
	go func() {
		for {
			if err := recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("the stream is still open")
		return nil
	}
}

// wantEnd fails unless err has code and mentions word.
func wantEnd(t testing.TB, err error, code codes.Code, word string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), word) {
		t.Errorf("stream ended with %v; want %s, %q", err, code, word)
	}
}

// A report stream opened before the device's certificate was replaced
// ends at its next report, which stays unstored; the device carries on
// with the new certificate, its chain intact, and is not marked.
func TestReportStreamEndsWhenCertificateReplaced(t *testing.T) {
	for _, replace := range []string{"renewed", "enrolled again"} {
		t.Run(replace, func(t *testing.T) {
			e := startCollector(t)
			dir, id := e.enroll()
			cert, key := deviceCreds(t, dir)
			old := openReports(t, e, cert, key, id)
			if m := old.send(old.next()); m.GetAck() == nil {
				t.Fatalf("report 1: %v", m)
			}

			var newCert = cert
			switch replace {
			case "renewed":
				newCert = renewSoftware(t, e, cert, key)
			case "enrolled again":
				if _, err := agent.Enroll(context.Background(), dir, e.token(time.Hour, 1)); err != nil {
					t.Fatalf("enroll again: %v", err)
				}
				newCert, _ = deviceCreds(t, dir)
			}
			if serialOf(newCert) == serialOf(cert) {
				t.Fatal("the certificate was not replaced")
			}

			if err := old.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: old.next()}}); err != nil {
				t.Fatal(err)
			}
			err := streamEnd(t, func() error { _, err := old.st.Recv(); return err })
			wantEnd(t, err, codes.Unauthenticated, "replaced")

			cur := openReports(t, e, newCert, key, id)
			if cur.seq != 1 {
				t.Errorf("welcome on the new stream: head %d, want 1 (the report on the old stream was not stored)", cur.seq)
			}
			if m := cur.send(cur.next()); m.GetAck() == nil {
				t.Errorf("report 2 with the new certificate: %v", m)
			}
			e.wantActiveAt(t, id, 2)
			if r := e.stats().GetReportsRejected(); len(r) != 0 {
				t.Errorf("reports rejected: %v", r)
			}
		})
	}
}

// A report stream ends when its certificate expires: an idle one when the
// certificate's lifetime runs out, and one whose next report arrives after
// the collector's clock passed the certificate's end.
func TestReportStreamEndsAtCertificateExpiry(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		// Certificates backdated five minutes, ending three seconds on.
		e := startCollectorWith(t, func(c *collector.Config) { c.DeviceCertTTL = 3 * time.Second })
		dir, id := e.enroll()
		cert, key := deviceCreds(t, dir)
		a := openReports(t, e, cert, key, id)
		if m := a.send(a.next()); m.GetAck() == nil {
			t.Fatalf("report 1: %v", m)
		}
		err := streamEnd(t, func() error { _, err := a.st.Recv(); return err })
		wantEnd(t, err, codes.Unauthenticated, "expired")
		if left := time.Until(cert.Leaf.NotAfter); left > 0 {
			t.Errorf("stream ended %s before the certificate expired", left)
		}
	})
	t.Run("collector clock", func(t *testing.T) {
		e := startCollector(t)
		dir, id := e.enroll()
		cert, key := deviceCreds(t, dir)
		a := openReports(t, e, cert, key, id)
		if m := a.send(a.next()); m.GetAck() == nil {
			t.Fatalf("report 1: %v", m)
		}
		e.clock.Advance(time.Until(cert.Leaf.NotAfter) + time.Hour)
		if err := a.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: a.next()}}); err != nil {
			t.Fatal(err)
		}
		err := streamEnd(t, func() error { _, err := a.st.Recv(); return err })
		wantEnd(t, err, codes.Unauthenticated, "expired")
		if d, err := e.device(id); err != nil || d.GetDevice().GetLastSeq() != 1 {
			t.Errorf("device after the stream expired: %v, %v; want head 1", d, err)
		}
	})
}

// A gateway's watch stream ends when the gateway certificate expires.
func TestWatchStreamEndsAtCertificateExpiry(t *testing.T) {
	e := startCollector(t)
	cert := e.gatewayCert("edge")
	// Leave the certificate two seconds by the collector's clock.
	e.clock.Advance(time.Until(cert.Leaf.NotAfter) - 2*time.Second)
	gw := posturev1.NewGatewayServiceClient(e.dial(&cert))
	st, _, _ := watchUntilSnapshotEnd(t, context.Background(), gw, 0)
	err := streamEnd(t, func() error { _, err := st.Recv(); return err })
	wantEnd(t, err, codes.Unauthenticated, "expired")
}

// A running agent whose device enrolls again moves its report stream onto
// a new connection with the new certificate at its next report, without a
// collector restart or a refusal, and carries on.
func TestAgentFollowsCertificateMidStream(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	// The agent reaches the collector through a proxy that counts its
	// connections.
	p := startProxy(t, e.addr)
	pointAgentAt(t, dir, p.addr())
	runAgent(t, dir, &fixedMeasurer{encrypted: true}, 20*time.Millisecond)
	eventually(t, "reports flowing", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 2 })
	if n := p.connections(); n != 1 {
		t.Fatalf("the agent made %d connections before enrolling again", n)
	}
	if _, err := agent.Enroll(context.Background(), dir, e.token(time.Hour, 1)); err != nil {
		t.Fatalf("enroll again: %v", err)
	}
	d, _ := e.device(id)
	seq := d.GetDevice().GetLastSeq()
	eventually(t, "reports on a new connection", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= seq+5 && p.connections() >= 2
	})
	d, _ = e.device(id)
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device %v: %s", d.GetDevice().GetState(), d.GetDevice().GetStateReason())
	}
	s := e.stats()
	if r := s.GetReportsRejected(); len(r) != 0 {
		t.Errorf("reports rejected: %v", r)
	}
	if n := s.GetRpcDenied()[posturev1.ReportService_StreamReports_FullMethodName]; n > 1 {
		t.Errorf("report streams refused %d times; the agent should present the new certificate", n)
	}
}
