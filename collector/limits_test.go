package collector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// limited is a collector serving over TLS on loopback with shortened
// limits, and its admin socket.
type limited struct {
	t     *testing.T
	c     *Collector
	admin posturev1.AdminServiceClient
}

// serveLimited serves a collector with lim until the test ends; logger nil
// discards its log.
func serveLimited(t *testing.T, lim limits, logger *slog.Logger) *limited {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: logger}
	cfg.limits = lim
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := DialAdmin(c.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &limited{t: t, c: c, admin: posturev1.NewAdminServiceClient(conn)}
}

func (l *limited) token(uses uint32) string {
	l.t.Helper()
	resp, err := l.admin.CreateEnrollmentToken(context.Background(), &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: uses})
	if err != nil {
		l.t.Fatal(err)
	}
	return resp.GetToken()
}

// dialFrom opens a connection to the collector from the loopback address
// src (all of 127.0.0.0/8 reaches the listener), with a client
// certificate when cert is set. grpc.NewClient connects lazily: each
// client is one connection.
func (l *limited) dialFrom(src string, cert *tls.Certificate) *grpc.ClientConn {
	l.t.Helper()
	conn, err := grpc.NewClient(l.c.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(l.clientTLS(cert))),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { conn.Close() })
	return conn
}

func (l *limited) clientTLS(cert *tls.Certificate) *tls.Config {
	roots := x509.NewCertPool()
	roots.AddCert(l.c.CA())
	return pki.ClientTLS(roots, l.c.cfg.TrustDomain, cert)
}

// enrollDevice enrolls a software device with the real agent (from
// 127.0.0.1) and returns its state directory and ID.
func (l *limited) enrollDevice() (string, string) {
	l.t.Helper()
	dir := l.t.TempDir()
	res, err := agent.Enroll(context.Background(), dir, l.token(1))
	if err != nil {
		l.t.Fatalf("enroll: %v", err)
	}
	return dir, res.DeviceID
}

// reports runs the real agent of an enrolled device until the test ends
// and waits until the collector has stored a report of it.
func (l *limited) reports(dir, id string) {
	l.t.Helper()
	a, err := agent.New(agent.Config{StateDir: dir, Interval: time.Hour, Measurer: testMeasurer{}, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	l.t.Cleanup(func() { cancel(); <-done })
	within(l.t, 30*time.Second, "a report of the device", func() bool {
		p, err := l.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
		return err == nil && p.GetDevice().GetLastSeq() >= 1
	})
}

// testMeasurer measures a healthy Linux machine.
type testMeasurer struct{}

func (testMeasurer) Collect(context.Context) *posturev1.PostureReport {
	meta := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	return &posturev1.PostureReport{Os: &posturev1.OSInfo{Meta: meta, Platform: "linux", Name: "debian", Version: "12"}}
}

// deviceCert is the TLS certificate an enrolled state directory holds.
func deviceCert(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "device.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// within polls cond until it holds, failing the test after timeout: a
// bound on a wait that would otherwise hang, never a measurement.
func within(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// enrollBy speaks the enrollment protocol on conn with a fresh software
// identity, as the agent does, and returns the device ID.
func enrollBy(ctx context.Context, conn *grpc.ClientConn, tokenText string) (string, error) {
	secret := tokenText // a wrong token need not parse
	if tok, err := token.Parse(tokenText); err == nil {
		secret = tok.Secret
	}
	st, err := posturev1.NewEnrollmentServiceClient(conn).Enroll(ctx)
	if err != nil {
		return "", err
	}
	idKey, _ := pki.NewKey()
	tlsKey, _ := pki.NewKey()
	idPub, _ := x509.MarshalPKIXPublicKey(idKey.Public())
	tlsPub, _ := x509.MarshalPKIXPublicKey(tlsKey.Public())
	send := func(r *posturev1.EnrollRequest) error {
		if err := st.Send(r); err != nil {
			_, err = st.Recv() // the status says why
			return err
		}
		return nil
	}
	if err := send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
		Token: secret, Hostname: "host", Platform: "linux", TlsPublicKey: tlsPub,
		Identity: &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Software{Software: &posturev1.SoftwareIdentity{PublicKey: idPub}}},
	}}}); err != nil {
		return "", err
	}
	m, err := st.Recv()
	if err != nil {
		return "", err
	}
	sig, _ := ecdsa.SignASN1(rand.Reader, idKey, envelope.EnrollDigest(m.GetChallenge().GetNonce(), tlsPub, idPub))
	if err := send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Answer{Answer: &posturev1.EnrollAnswer{Signature: sig}}}); err != nil {
		return "", err
	}
	if m, err = st.Recv(); err != nil {
		return "", err
	}
	return m.GetResult().GetDeviceId(), nil
}

// An enrollment whose client goes quiet is ended: before its first
// message, after the challenge, and as a whole. Each counts as abandoned.
func TestEnrollmentDeadlines(t *testing.T) {
	tests := []struct {
		name        string
		step, whole time.Duration
		begin       bool // send a good EnrollBegin, then nothing
		want        string
	}{
		{"no first message", time.Second, time.Minute, false, "no first enrollment message (EnrollBegin) within 1s; enroll again"},
		{"no answer to the challenge", time.Second, time.Minute, true, "no answer to the enrollment challenge within 1s; enroll again"},
		{"the whole enrollment", time.Minute, time.Second, false, "enrollment did not finish within 1s; enroll again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := serveLimited(t, limits{enrollStepWait: tt.step, enrollWait: tt.whole}, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a bound on a test that would hang
			defer cancel()
			st, err := posturev1.NewEnrollmentServiceClient(l.dialFrom("127.0.0.1", nil)).Enroll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tt.begin {
				idKey, _ := pki.NewKey()
				idPub, _ := x509.MarshalPKIXPublicKey(idKey.Public())
				tok, err := token.Parse(l.token(1))
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
					Token: tok.Secret, TlsPublicKey: idPub,
					Identity: &posturev1.IdentityClaim{Kind: &posturev1.IdentityClaim_Software{Software: &posturev1.SoftwareIdentity{PublicKey: idPub}}},
				}}}); err != nil {
					t.Fatal(err)
				}
				if m, err := st.Recv(); err != nil || m.GetChallenge() == nil {
					t.Fatalf("challenge: %v, %v", m, err)
				}
			}
			_, err = st.Recv() // returns when the collector ends the call
			if status.Code(err) != codes.DeadlineExceeded || status.Convert(err).Message() != tt.want {
				t.Errorf("quiet enrollment ended with %v; want DeadlineExceeded: %s", err, tt.want)
			}
			within(t, 10*time.Second, "the refusal counted", func() bool { return l.c.stats.snapshot().enrollmentsRejected["abandoned"] == 1 })
			within(t, 10*time.Second, "the call's count released", func() bool { return l.c.anonStreams.count() == 0 })
		})
	}
}

// A client without a certificate holds a bounded number of connections
// and calls per peer address; beyond them it is told why
// (RESOURCE_EXHAUSTED), counted, and other addresses and clients with a
// certificate are not affected. Each connection holds a bounded number
// of calls, clients with a certificate too.
func TestAnonymousLimits(t *testing.T) {
	// A refused connection stays long enough for its call to arrive on a
	// loaded machine.
	lim := limits{anonConnsPerPeer: 4, anonStreamsPerPeer: 6, maxStreamsPerConn: 10, refusedLinger: 10 * time.Second}
	l := serveLimited(t, lim, nil)
	dir, id := l.enrollDevice()
	ctx := context.Background()
	within(t, 10*time.Second, "the enrollment's connection released", func() bool { return l.c.anonConns.count() == 0 })

	// Four connections from 127.0.0.1, each holding a health watch.
	var held []*grpc.ClientConn
	for range lim.anonConnsPerPeer {
		conn := l.dialFrom("127.0.0.1", nil)
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("watch within the limits: %v", err)
		}
		held = append(held, conn)
	}
	if n := l.c.anonConns.count(); n != lim.anonConnsPerPeer {
		t.Fatalf("%d connections without a certificate counted, want %d", n, lim.anonConnsPerPeer)
	}

	t.Run("connections per peer", func(t *testing.T) {
		_, err := healthpb.NewHealthClient(l.dialFrom("127.0.0.1", nil)).Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many connections without a client certificate from 127.0.0.1 (at most 4 at once)") {
			t.Errorf("a fifth connection from 127.0.0.1: %v; want RESOURCE_EXHAUSTED saying why", err)
		}
		if _, err := healthpb.NewHealthClient(l.dialFrom("127.0.0.2", nil)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("a connection from another address: %v", err)
		}
		if n := l.c.stats.snapshot().anonRefused[limitAnonConnsPerPeer]; n < 1 {
			t.Errorf("refused connections counted %d times", n)
		}
	})

	t.Run("a device with a certificate from the same address", func(t *testing.T) {
		l.reports(dir, id)
	})

	t.Run("calls per peer", func(t *testing.T) {
		conn := l.dialFrom("127.0.0.3", nil)
		for range lim.anonStreamsPerPeer {
			st, err := posturev1.NewEnrollmentServiceClient(conn).Enroll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.CloseSend()
		}
		// With the four watches from 127.0.0.1.
		within(t, 10*time.Second, "the idle enrollments counted", func() bool {
			return l.c.anonStreams.count() == lim.anonConnsPerPeer+lim.anonStreamsPerPeer
		})
		bounded, cancel := context.WithTimeout(ctx, 30*time.Second) // a bound on a test that would hang
		defer cancel()
		st, err := posturev1.NewEnrollmentServiceClient(conn).Enroll(bounded)
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many calls without a client certificate from 127.0.0.3 (at most 6 at once)") {
			t.Errorf("a seventh call from 127.0.0.3: %v; want RESOURCE_EXHAUSTED saying why", err)
		}
		if n := l.c.stats.snapshot().anonRefused[limitAnonStreamsPerPeer]; n != 1 {
			t.Errorf("refused calls counted %d times, want 1", n)
		}
	})

	t.Run("calls per connection", func(t *testing.T) {
		cert := deviceCert(t, dir)
		cfg := l.clientTLS(&cert)
		cfg.NextProtos = []string{"h2"}
		conn, err := tls.Dial("tcp", l.c.Addr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		settings, refused := openRawStreams(t, conn, int(lim.maxStreamsPerConn)+3)
		if settings != lim.maxStreamsPerConn {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want %d", settings, lim.maxStreamsPerConn)
		}
		if want := []uint32{21, 23, 25}; fmt.Sprint(refused) != fmt.Sprint(want) {
			t.Errorf("streams refused %v, want %v (those beyond the first 10)", refused, want)
		}
	})

	// Closed connections stop counting.
	for _, conn := range held {
		conn.Close()
	}
	within(t, 10*time.Second, "the closed connections released", func() bool { return l.c.anonConns.count() <= 2 }) // 127.0.0.2 and .3
	if _, err := healthpb.NewHealthClient(l.dialFrom("127.0.0.1", nil)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("a connection from 127.0.0.1 once the others closed: %v", err)
	}
}

// openRawStreams speaks HTTP/2 on conn as a client that ignores the
// server's stream limit: it opens n health watches without sending their
// requests, and returns the server's SETTINGS_MAX_CONCURRENT_STREAMS and
// the streams it refused (RST_STREAM REFUSED_STREAM).
func openRawStreams(t *testing.T, conn net.Conn, n int) (maxStreams uint32, refused []uint32) {
	t.Helper()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := range n {
		block.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", healthpb.Health_Watch_FullMethodName}, {":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Only a bound on a read that would otherwise hang.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	settings := false
	for !settings || len(refused) < n-int(maxStreams) {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's frames (refused so far: %v): %v", refused, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			settings = true
			v, ok := f.Value(http2.SettingMaxConcurrentStreams)
			if !ok || v == 0 || int(v) >= n {
				return v, nil // unbounded, or no more than asked for: none refused
			}
			maxStreams = v
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				refused = append(refused, f.StreamID)
			}
		}
	}
	return maxStreams, refused
}

// A peer that keeps failing to enroll is throttled: after a burst of
// failures, it is refused at once, with when to retry, counted and
// summarized in the log; other peers enroll meanwhile, and the peer
// enrolls once it waited.
func TestEnrollmentThrottle(t *testing.T) {
	const attempts = 120
	logs := &testtools.LogRecorder{}
	lim := limits{throttleBurst: 20, throttleInterval: 5 * time.Second, refusalSummaryInterval: time.Second}
	start := time.Now()
	l := serveLimited(t, lim, slog.New(logs))
	ctx := context.Background()
	flooder := l.dialFrom("127.0.0.1", nil)

	unknown, throttled := 0, 0
	var firstThrottled string
	for i := range attempts {
		_, err := enrollBy(ctx, flooder, fmt.Sprintf("wrong-token-%d", i))
		switch s := status.Convert(err); {
		case s.Code() == codes.Unauthenticated && strings.Contains(s.Message(), "not known to this collector"):
			unknown++
		case s.Code() == codes.ResourceExhausted:
			throttled++
			if firstThrottled == "" {
				firstThrottled = s.Message()
			}
		default:
			t.Fatalf("attempt %d with a wrong token: %v", i+1, err)
		}
	}
	t.Logf("%d attempts: %d refused for the token, %d throttled", attempts, unknown, throttled)
	// The burst, and one more for each interval the attempts took.
	if unknown < lim.throttleBurst || throttled < attempts/2 {
		t.Errorf("%d refused for the token, %d throttled; want the first %d refused for the token and most of the rest throttled", unknown, throttled, lim.throttleBurst)
	}
	if !regexp.MustCompile(`^too many failed enrollment attempts from 127\.0\.0\.1; retry after [0-9]+s$`).MatchString(firstThrottled) {
		t.Errorf("throttled attempts told %q; want who and when to retry", firstThrottled)
	}
	st := l.c.stats.snapshot()
	if st.enrollmentsRejected["throttled"] != uint64(throttled) || st.enrollmentsRejected["token_unknown"] != uint64(unknown) {
		t.Errorf("enrollment rejections counted %v; want throttled %d, token_unknown %d", st.enrollmentsRejected, throttled, unknown)
	}
	families, err := l.c.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var metric float64
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if f.GetName() == "posture_enrollments_rejected_total" && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == "throttled" {
				metric = m.GetCounter().GetValue()
			}
		}
	}
	if metric != float64(throttled) {
		t.Errorf(`posture_enrollments_rejected_total{reason="throttled"} = %v, want %d`, metric, throttled)
	}

	// Another address enrolls meanwhile, with the right token.
	if _, err := enrollBy(ctx, l.dialFrom("127.0.0.2", nil), l.token(1)); err != nil {
		t.Errorf("enrolling from another address while 127.0.0.1 is throttled: %v", err)
	}
	// And 127.0.0.1 once it waited; throttled attempts meanwhile do not
	// make it wait longer.
	good := l.token(1)
	within(t, 30*time.Second, "an enrollment from 127.0.0.1 after the throttle's wait", func() bool {
		_, err := enrollBy(ctx, flooder, good)
		if status.Code(err) != codes.ResourceExhausted && err != nil {
			t.Fatalf("enrolling with the right token: %v", err)
		}
		return err == nil
	})

	// One warning per refused token (the burst and what followed), one
	// when throttling began, and a summary a second at most: far fewer
	// lines than attempts.
	within(t, 10*time.Second, "a summary of the throttled attempts", func() bool {
		return logs.Has(slog.LevelWarn, "limit", limitThrottled) && len(logs.Messages(slog.LevelWarn)) > unknown+1
	})
	warnings := logs.Messages(slog.LevelWarn)
	summaries := int(time.Since(start)/lim.refusalSummaryInterval) + 1
	t.Logf("%d warnings for %d attempts", len(warnings), attempts)
	if len(warnings) > unknown+1+summaries || len(warnings) > attempts/3 {
		t.Errorf("%d warnings for %d attempts (%d refused for the token); want the throttled ones summarized:\n%s", len(warnings), attempts, unknown, strings.Join(warnings, "\n"))
	}
}

// The throttle: a burst of failures, then one per interval; attempts
// admitted at once that all fail make the peer wait them off; successes
// and other peers are not limited; its memory is bounded.
func TestFailThrottle(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	a, b := peerAddr{netip.MustParsePrefix("192.0.2.1/32")}, peerAddr{netip.MustParsePrefix("2001:db8::/64")}
	th := newFailThrottle(3, 10*time.Second, 2)
	for i := range 3 {
		if _, ok := th.admit(a, now); !ok {
			t.Fatalf("attempt %d of the burst refused", i+1)
		}
		th.failed(a, now)
	}
	if wait, ok := th.admit(a, now); ok || wait != 10*time.Second {
		t.Errorf("after the burst: admitted %v, wait %v; want refused for 10s", ok, wait)
	}
	if _, ok := th.admit(b, now); !ok {
		t.Error("another peer refused")
	}
	if _, ok := th.admit(a, now.Add(10*time.Second)); !ok {
		t.Error("refused after waiting the interval")
	}
	// Five admitted at once, all failing: the peer waits them off, and
	// no more than the burst below empty.
	for range 5 {
		th.failed(a, now.Add(10*time.Second))
	}
	if wait, _ := th.admit(a, now.Add(10*time.Second)); wait != 40*time.Second {
		t.Errorf("after failing past empty: wait %v, want 40s (three failures of debt, and one to try)", wait)
	}
	// At most two peers remembered: the least recently failed goes.
	th.failed(b, now)
	c := peerAddr{netip.MustParsePrefix("198.51.100.7/32")}
	th.failed(c, now.Add(time.Second))
	if n := th.tracked(); n != 2 {
		t.Errorf("%d peers tracked, want at most 2", n)
	}
	// A full bucket is forgotten.
	th.forget(now.Add(time.Hour))
	if n := th.tracked(); n != 0 {
		t.Errorf("%d peers tracked an hour later, want none", n)
	}
}

// Peers are IPv4 addresses and IPv6 /64 networks.
func TestPeerOf(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.1:443":                 "192.0.2.1",
		"[::ffff:192.0.2.1]:443":        "192.0.2.1",
		"[2001:db8:1:2:aaaa::1]:5000":   "2001:db8:1:2::/64",
		"[2001:db8:1:2:bbbb::9]:5000":   "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:5000":        "2001:db8:1:3::/64",
		"[::1]:8443":                    "::/64",
		"127.0.0.1:8443":                "127.0.0.1",
		"/var/lib/posture/admin.sock:0": "unknown",
	} {
		ap, _ := net.ResolveTCPAddr("tcp", addr)
		var a net.Addr = ap
		if ap == nil {
			a = &net.UnixAddr{Name: addr, Net: "unix"}
		}
		p, _ := peerOf(a)
		if p.String() != want {
			t.Errorf("peerOf(%s) = %s, want %s", addr, p, want)
		}
	}
}

// The refusal log names a bounded number of peers; a peer refused again
// is summarized rather than logged in full, and logged in full again once
// a summary found nothing new of it.
func TestTally(t *testing.T) {
	tl := newTally(2)
	p := func(s string) peerAddr { return peerAddr{netip.MustParsePrefix(s)} }
	if !tl.add("tls", "throttled", p("192.0.2.1/32")) || tl.add("tls", "throttled", p("192.0.2.1/32")) {
		t.Error("first and second refusal of one peer")
	}
	tl.add("tls", "throttled", p("192.0.2.2/32"))
	if tl.add("tls", "throttled", p("192.0.2.3/32")) {
		t.Error("a third peer logged in full beyond the bound of 2")
	}
	got := map[string]uint64{}
	for _, c := range tl.take() {
		got[fmt.Sprint(c.named, " ", c.peer)] = c.n
	}
	if want := map[string]uint64{"true 192.0.2.1": 1, "false unknown": 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("summary %v, want %v", got, want)
	}
	if len(tl.take()) != 0 || !tl.add("tls", "throttled", p("192.0.2.1/32")) {
		t.Error("a peer refused nothing in a whole summary is not forgotten")
	}
}
