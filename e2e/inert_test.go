package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/posture-project/posture/internal/jsonview"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Text a device controls, as an attacker would write it: clear the screen
// and home the cursor, set the window title (OSC 0, ended by BEL), write
// the clipboard (OSC 52, ended by ST), move the cursor up with an 8-bit
// CSI, reverse what follows with a right-to-left override, isolate a part,
// and break a table with a tab and a DEL. It fits a hostname (256 bytes).
const (
	hostileHost   = "\x1b[2J\x1b[Hlaptop\x1b]0;owned\x07\x1b]52;c;Y3VybCBldmlsLnNo\x1b\\\u009b1A\u202eevitca\u2066x\u2069\tcol\x7f"
	hostileReason = "fw\x1b[1;1H\x1b[32mPASS\x1b[0m\u009d0;t\u009c\u202ehidden\u200e"
	hostileLevel  = "basic\x1b[2K\u2067"
)

// visibleEscapes are what hostileHost shows in its inert form (the ST
// that ends OSC 52 is ESC and a backslash, which is doubled).
var visibleEscapes = []string{`\x1b[2J`, `\x1b]0;owned\a`, `\x1b]52;c;`, `\x1b\\\u009b1A`, `\u202eevitca`, `\u2066x\u2069`, `\tcol\x7f`}

// TestHostileTextIsInert enrolls a device whose hostname carries escape
// sequences and bidirectional overrides and whose report's reason does
// too, with the real posture-collector binary, and reads what its admin
// commands print and what it logs: nothing may reach the terminal raw,
// the escapes must be visible, and the JSON outputs must escape them and
// still decode to the strings the device sent.
func TestHostileTextIsInert(t *testing.T) {
	bin := buildCollector(t)
	p := startCollectorProcess(t, bin, "text")
	tok, code := p.cli("token", "create", "--ttl", "1h")
	if code != 0 {
		t.Fatalf("token create: exit %d: %q", code, tok)
	}
	// slog quotes a value holding any other control, but writes a DEL
	// that comes alone raw.
	d := enrollAs(t, tok, hostileHost, "linux\x7f")

	// A report whose firewall could not be read, for a hostile reason, from
	// an OS with a hostile name.
	c, err := startReports(d.dial(t), d.key, d.id)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	if m := c.send(c.nextWith(time.Now(), func(r *posturev1.PostureReport) {
		r.Firewall.Meta.Status, r.Firewall.Meta.Reason = posturev1.Status_STATUS_UNAVAILABLE, hostileReason
		r.Os.Name = "deb\u202eian"
	})); m.GetAck() == nil {
		t.Fatalf("report: %v", m)
	}

	// An answer that holds the device's text, for check and decisions.
	if out, code := p.cli("check", d.id, "--level", "trusted"); code != 1 {
		t.Fatalf("check: exit %d, want 1 (denied): %q", code, out)
	}
	// A request naming a device and a level no one has: their text comes
	// from the request and is echoed in the answer and the decision log.
	if out, code := p.cli("check", hostileHost, "--level", hostileLevel); code != 1 {
		t.Fatalf("check of an unknown device: exit %d, want 1: %q", code, out)
	}
	gwDir := t.TempDir()
	if out, code := p.cli("gateway", "add", "edge-1", "--out", gwDir); code != 0 {
		t.Fatalf("gateway add: exit %d: %q", code, out)
	}
	if out, code := p.cli("gateway", "revoke", "edge-1", "--reason", hostileReason); code != 0 {
		t.Fatalf("gateway revoke: exit %d: %q", code, out)
	}
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	pol, err := os.ReadFile("../collector/policy/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policyFile, bytes.Replace(pol, []byte("min_score: 40"), []byte("min_score: 95"), 1), 0o600); err != nil {
		t.Fatal(err)
	}

	texts := []struct {
		name string
		args []string
		code int
		want []string // visible escapes the output must hold
	}{
		{"devices list", []string{"devices", "list"}, 0, visibleEscapes},
		{"devices show", []string{"devices", "show", d.id}, 0, append([]string{`fw\x1b[1;1H`, `\u009d0;t\u009c\u202ehidden\u200e`, `deb\u202eian 12 (linux\x7f)`}, visibleEscapes...)},
		{"check", []string{"check", d.id, "--level", "trusted"}, 1, []string{`fw\x1b[1;1H\x1b[32mPASS`, `\u202ehidden\u200e`}},
		{"check of a hostile request", []string{"check", hostileHost, "--level", hostileLevel}, 1, append([]string{`basic\x1b[2K\u2067`}, visibleEscapes...)},
		{"decisions", []string{"decisions"}, 0, append([]string{`fw\x1b[1;1H`, `basic\x1b[2K\u2067`}, visibleEscapes...)},
		{"decisions of the device", []string{"decisions", d.id}, 0, []string{`fw\x1b[1;1H\x1b[32mPASS`}},
		{"gateway list", []string{"gateway", "list"}, 0, []string{`fw\x1b[1;1H\x1b[32mPASS`}},
		{"policy diff", []string{"policy", "diff", policyFile}, 0, visibleEscapes},
		{"devices revoke", []string{"devices", "revoke", d.id, "--reason", hostileReason}, 0, []string{`\u202ehidden\u200e`}},
		{"devices show revoked", []string{"devices", "show", d.id}, 0, []string{`revoked (fw\x1b[1;1H`}},
		{"devices show unknown", []string{"devices", "show", hostileHost}, 1, visibleEscapes},
	}
	// The tab in the hostname must not open a column of its own.
	list, _ := p.cli("devices", "list")
	if rows := strings.Split(strings.TrimSpace(list), "\n"); len(rows) != 2 || len(regexp.MustCompile(`  +`).Split(rows[1], -1)) != 8 {
		t.Errorf("devices list does not have 8 columns in its row:\n%q", list)
	}
	for _, tt := range texts {
		t.Run(tt.name, func(t *testing.T) {
			out, code := p.cli(tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d:\n%q", code, tt.code, out)
			}
			if bad := live(out); bad != "" {
				t.Errorf("output holds %s raw:\n%q", bad, out)
			}
			var missing []string
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					missing = append(missing, w)
				}
			}
			if missing != nil {
				// Quoted: the output may hold what it must not.
				t.Errorf("output lacks %s:\n%q", strings.Join(missing, " "), out)
			}
		})
	}

	jsons := []struct {
		name string
		args []string
		code int
		msg  proto.Message
		got  func(proto.Message) []string // the strings that must come back as sent
		want []string
	}{
		{"devices list", []string{"devices", "list", "-o", "json"}, 0, &posturev1.ListDevicesResponse{},
			func(m proto.Message) (hosts []string) {
				for _, d := range m.(*posturev1.ListDevicesResponse).GetDevices() {
					hosts = append(hosts, d.GetDevice().GetHostname())
				}
				return hosts
			},
			[]string{hostileHost}},
		{"devices show", []string{"devices", "show", d.id, "-o", "json"}, 0, &posturev1.DevicePosture{},
			func(m proto.Message) []string {
				dp := m.(*posturev1.DevicePosture)
				return []string{dp.GetDevice().GetHostname(), dp.GetDevice().GetStateReason(), dp.GetDevice().GetOs()}
			},
			[]string{hostileHost, hostileReason, "deb\u202eian 12"}},
		{"check", []string{"check", hostileHost, "--level", hostileLevel, "-o", "json"}, 1, &posturev1.CheckAccessResponse{},
			func(m proto.Message) []string {
				r := m.(*posturev1.CheckAccessResponse)
				return []string{r.GetDeviceId(), r.GetAccessLevel()}
			},
			[]string{hostileHost, hostileLevel}},
		{"decisions", []string{"decisions", d.id, "-o", "json"}, 0, &posturev1.ListDecisionsResponse{},
			func(m proto.Message) []string {
				for _, dec := range m.(*posturev1.ListDecisionsResponse).GetDecisions() {
					for _, c := range dec.GetFailedChecks() {
						if c.GetName() == "firewall" {
							return []string{c.GetReason()}
						}
					}
				}
				return nil
			},
			[]string{"firewall is unknown (unavailable: " + hostileReason + "); unknown counts as failing"}},
		{"gateway list", []string{"gateway", "list", "-o", "json"}, 0, &posturev1.ListGatewaysResponse{},
			func(m proto.Message) (reasons []string) {
				for _, g := range m.(*posturev1.ListGatewaysResponse).GetGateways() {
					reasons = append(reasons, g.GetRevokeReason())
				}
				return reasons
			},
			[]string{hostileReason}},
	}
	for _, tt := range jsons {
		t.Run(tt.name+" json", func(t *testing.T) {
			out, code := p.cli(tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d:\n%q", code, tt.code, out)
			}
			if bad := live(out); bad != "" {
				t.Errorf("JSON holds %s raw:\n%q", bad, out)
			}
			if !strings.Contains(out, `\u202e`) {
				t.Errorf("JSON lacks the escape \\u202e:\n%q", out)
			}
			if err := jsonview.Unmarshal([]byte(out), tt.msg); err != nil {
				t.Fatalf("JSON does not decode: %v\n%q", err, out)
			}
			got := tt.got(tt.msg)
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("JSON decodes to %q, want %q", got, tt.want)
			}
		})
	}

	// The collector logged the enrollment and the revocations.
	for _, msg := range []string{`msg="device enrolled"`, `msg="device revoked"`, `msg="gateway certificates revoked"`} {
		line := p.logLine(msg)
		if line == "" {
			t.Errorf("no %s in the log:\n%q", msg, p.logs.String())
			continue
		}
		if bad := live(line); bad != "" {
			t.Errorf("log line holds %s raw:\n%q", bad, line)
		}
	}
	if line := p.logLine(`msg="device enrolled"`); !strings.Contains(line, `hostname="\x1b[2J\x1b[Hlaptop\x1b]0;owned\a\x1b]52;c;Y3VybCBldmlsLnNo\x1b\\\u009b1A\u202eevitca\u2066x\u2069\tcol\x7f"`) ||
		!strings.Contains(line, `platform=linux\x7f`) {
		t.Errorf("enrollment log line does not show the hostname and platform escaped:\n%q", line)
	}
}

// TestHostileTextInJSONLogs enrolls a device with a hostile hostname on a
// collector logging JSON: the record escapes every control and format
// character and decodes to the hostname the device sent.
func TestHostileTextInJSONLogs(t *testing.T) {
	p := startCollectorProcess(t, buildCollector(t), "json")
	tok, code := p.cli("token", "create", "--ttl", "1h")
	if code != 0 {
		t.Fatalf("token create: exit %d: %q", code, tok)
	}
	enrollAs(t, tok, hostileHost, "linux\u202e")
	line := p.logLine(`"msg":"device enrolled"`)
	if line == "" {
		t.Fatalf("no enrollment in the log:\n%q", p.logs.String())
	}
	if bad := live(line); bad != "" {
		t.Errorf("log line holds %s raw:\n%q", bad, line)
	}
	var rec struct{ Hostname, Platform string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	if rec.Hostname != hostileHost || rec.Platform != "linux\u202e" {
		t.Errorf("log line decodes to hostname %q, platform %q; want %q, %q", rec.Hostname, rec.Platform, hostileHost, "linux\u202e")
	}
}

// TestAgentShowsRejectionsInert revokes a device with a hostile reason
// and has the real posture-agent enroll it again: the collector's refusal
// quotes the reason, and the agent prints it inert.
func TestAgentShowsRejectionsInert(t *testing.T) {
	p := startCollectorProcess(t, buildCollector(t), "text")
	agentBin := filepath.Join(t.TempDir(), "posture-agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, "github.com/posture-project/posture/agent/cmd/posture-agent").CombinedOutput(); err != nil {
		t.Fatalf("build posture-agent: %v\n%s", err, out)
	}
	stateDir := t.TempDir()
	enroll := func() (string, error) {
		tok, code := p.cli("token", "create", "--ttl", "1h")
		if code != 0 {
			t.Fatalf("token create: exit %d: %q", code, tok)
		}
		out, err := exec.Command(agentBin, "enroll", "--token", strings.TrimSpace(tok), "--state-dir", stateDir, "--identity", "software").CombinedOutput()
		return string(out), err
	}
	if out, err := enroll(); err != nil {
		t.Fatalf("posture-agent enroll: %v\n%q", err, out)
	}
	list, code := p.cli("devices", "list", "-o", "json")
	var devices posturev1.ListDevicesResponse
	if err := jsonview.Unmarshal([]byte(list), &devices); code != 0 || err != nil || len(devices.GetDevices()) != 1 {
		t.Fatalf("devices list: exit %d, %v:\n%q", code, err, list)
	}
	id := devices.GetDevices()[0].GetDevice().GetId()
	if out, code := p.cli("devices", "revoke", id, "--reason", hostileReason); code != 0 {
		t.Fatalf("devices revoke: exit %d: %q", code, out)
	}

	out, err := enroll()
	if err == nil || !strings.Contains(out, "was revoked (") {
		t.Fatalf("posture-agent enroll of a revoked device: %v, want a refusal saying why:\n%q", err, out)
	}
	if bad := live(out); bad != "" {
		t.Errorf("posture-agent prints %s raw:\n%q", bad, out)
	}
	if want := `revoked (fw\x1b[1;1H\x1b[32mPASS\x1b[0m\u009d0;t\u009c\u202ehidden\u200e)`; !strings.Contains(out, want) {
		t.Errorf("posture-agent does not show the reason escaped (%s):\n%q", want, out)
	}
}

// live names the first character in s that acts on a terminal or
// reorders or hides text (a C0 control other than newline, DEL, a C1
// control, a format character such as a bidirectional override, a line or
// paragraph separator), or returns "".
func live(s string) string {
	for _, r := range s {
		switch {
		case r == '\n':
		case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0, r == '\u2028', r == '\u2029', unicode.Is(unicode.Cf, r):
			return strconv.QuoteRuneToASCII(r)
		}
	}
	return ""
}

// collectorProcess is a posture-collector run process and its log.
type collectorProcess struct {
	t       *testing.T
	bin     string
	dataDir string
	logs    *syncBuffer
}

// startCollectorProcess runs bin on a fresh data directory with the log
// format given until the test ends, and waits until it serves.
func startCollectorProcess(t *testing.T, bin, logFormat string) *collectorProcess {
	t.Helper()
	p := &collectorProcess{t: t, bin: bin, dataDir: t.TempDir(), logs: &syncBuffer{}}
	cmd := exec.Command(bin, "run", "--data-dir", p.dataDir, "--listen", "127.0.0.1:0", "--log-format", logFormat)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		lines := bufio.NewReader(stderr)
		for announced := false; ; {
			line, err := lines.ReadString('\n')
			p.logs.Write([]byte(line))
			if !announced && strings.Contains(line, "collector serving") {
				announced = true
				close(serving)
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		<-copied
		cmd.Wait()
	})
	select {
	case <-serving:
	case <-copied:
		t.Fatalf("collector exited before serving:\n%q", p.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("collector not serving after 30 s:\n%q", p.logs.String())
	}
	return p
}

// cli runs an admin command against the collector and returns its
// standard output and error, and its exit code.
func (p *collectorProcess) cli(args ...string) (string, int) {
	p.t.Helper()
	cmd := exec.Command(p.bin, append(args, "--data-dir", p.dataDir)...)
	out, err := cmd.Output()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return string(out) + string(exit.Stderr), exit.ExitCode()
	case err != nil:
		p.t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

// logLine returns the first line of the collector's log holding s, or "".
func (p *collectorProcess) logLine(s string) string {
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}

// syncBuffer is a buffer written and read by different goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// handDevice is a device enrolled by hand, under a hostname and platform
// no agent would send.
type handDevice struct {
	id          string
	cert        tls.Certificate
	key         *ecdsa.PrivateKey
	roots       *x509.CertPool
	trustDomain string
	addr        string
}

// enrollAs enrolls a software identity with tok, the way the agent does,
// but under the hostname and platform given.
func enrollAs(t *testing.T, tok, hostname, platform string) *handDevice {
	t.Helper()
	parsed, err := token.Parse(strings.TrimSpace(tok))
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "identity.key")
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(keyPath, key); err != nil {
		t.Fatal(err)
	}
	id, err := identity.LoadOrCreateSoftware(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	tlsKey, err := pki.NewKey()
	if err != nil {
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
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := posturev1.NewEnrollmentServiceClient(conn).Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Begin{Begin: &posturev1.EnrollBegin{
		Token: parsed.Secret, Hostname: hostname, Platform: platform, TlsPublicKey: tlsPub, Identity: id.Claim(),
	}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("enrollment challenge: %v", err)
	}
	ans, err := id.Answer(resp.GetChallenge(), tlsPub)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&posturev1.EnrollRequest{Step: &posturev1.EnrollRequest_Answer{Answer: ans}}); err != nil {
		t.Fatal(err)
	}
	if resp, err = st.Recv(); err != nil {
		t.Fatalf("enrollment result: %v", err)
	}
	res := resp.GetResult()
	roots := x509.NewCertPool()
	for _, der := range res.GetCaCertificates() {
		ca, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(ca)
	}
	st.CloseSend()
	return &handDevice{id: res.GetDeviceId(), key: key, roots: roots, trustDomain: res.GetTrustDomain(), addr: parsed.Addr,
		cert: tls.Certificate{Certificate: [][]byte{res.GetCertificate()}, PrivateKey: tlsKey}}
}

// dial connects to the collector with the device's certificate.
func (d *handDevice) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(d.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(d.roots, d.trustDomain, &d.cert))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
