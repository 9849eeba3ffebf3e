package console_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/console"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const trustDomain = "console.test"

// hostile is device text meant to break a page: markup, a terminal
// escape and a right-to-left override.
const hostile = "<img src=x id=pwned>\x1b[31m\u202eevil"

// site is a running collector with its console.
type site struct {
	c     *collector.Collector
	dir   string
	admin posturev1.AdminServiceClient
	cons  posturev1.ConsoleServiceClient
	url   string
}

func startSite(t *testing.T, cc *collector.ConsoleConfig) *site {
	t.Helper()
	return startSiteWith(t, cc, nil)
}

// startSiteWith starts a collector with its console under a policy (nil:
// the built-in one).
func startSiteWith(t *testing.T, cc *collector.ConsoleConfig, pol *policy.Policy) *site {
	t.Helper()
	return startSiteEvents(t, cc, pol, collector.EventsConfig{})
}

// startSiteEvents starts a collector with its console and the receivers
// of events.
func startSiteEvents(t *testing.T, cc *collector.ConsoleConfig, pol *policy.Policy, events collector.EventsConfig) *site {
	t.Helper()
	s := &site{dir: t.TempDir()}
	cc.Listen = "127.0.0.1:0"
	c, err := collector.New(collector.Config{DataDir: s.dir, Listen: "127.0.0.1:0", TrustDomain: trustDomain, Console: cc, Policy: pol, Events: events})
	if err != nil {
		t.Fatalf("start collector: %v", err)
	}
	s.c, s.url = c, c.ConsoleURL()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("collector Serve: %v", err)
		}
	})
	conn, err := collector.DialAdmin(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.admin, s.cons = posturev1.NewAdminServiceClient(conn), posturev1.NewConsoleServiceClient(conn)
	return s
}

// measurer reports what a test sets: a machine whose OS name and firewall
// reason are device text, with the disk encrypted or not.
type measurer struct {
	osName    string
	encrypted bool
}

func (m measurer) Collect(context.Context) *posturev1.PostureReport {
	meta := func() *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	}
	return &posturev1.PostureReport{
		Os:         &posturev1.OSInfo{Meta: meta(), Platform: "linux", Name: m.osName, Version: "12", KernelVersion: "6.1.0"},
		Disk:       &posturev1.DiskEncryption{Meta: meta(), SystemEncrypted: m.encrypted, Volumes: []*posturev1.Volume{{MountPoint: "/", Encrypted: m.encrypted}}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta(), Enabled: true},
		Updates:    &posturev1.Updates{Meta: meta(), Manager: "apt"},
		Firewall:   &posturev1.Firewall{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_ERROR, Reason: "nft: " + hostile}},
		ScreenLock: &posturev1.ScreenLock{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "not measured"}},
	}
}

// enroll enrolls a device named host whose agent reports every interval,
// and waits for its first report.
func (s *site) enroll(t *testing.T, host string, m measurer, interval time.Duration) string {
	t.Helper()
	id, _ := s.enrollIn(t, host, m, interval)
	return id
}

// enrollIn is enroll, and says the agent's state directory too.
func (s *site) enrollIn(t *testing.T, host string, m measurer, interval time.Duration) (string, string) {
	t.Helper()
	tok, err := s.admin.CreateEnrollmentToken(context.Background(), &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), dir, tok.GetToken(), agent.EnrollOptions{Identity: agent.IdentitySoftware, Hostname: host})
	if err != nil {
		t.Fatalf("enroll %q: %v", host, err)
	}
	a, err := agent.New(agent.Config{StateDir: dir, Interval: interval, Measurer: m, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p, err := s.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: res.DeviceID})
		if err == nil && p.GetDevice().GetLastSeq() >= 1 {
			return res.DeviceID, dir
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %q sent no report within 10s: %v", host, err)
		}
	}
}

// client is an HTTP client of a console that trusts the collector's CA
// and follows no redirect.
func (s *site) client() *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(s.c.CA())
	return &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
}

// linkSession signs in with a one-time link, as a browser would, and
// returns the session cookie.
func (s *site) linkSession(t testing.TB) *http.Cookie {
	t.Helper()
	l, err := s.cons.CreateSignInLink(context.Background(), &posturev1.CreateSignInLinkRequest{Name: "first admin"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(l.GetUrl())
	req, _ := http.NewRequest("POST", s.url+"/signin/link", strings.NewReader(url.Values{"t": {u.Query().Get("t")}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", s.url)
	resp, err := s.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == "__Host-posture-console" {
			return ck
		}
	}
	t.Fatalf("sign-in link: %s, no session cookie", resp.Status)
	return nil
}

// do sends a request to the console with a cookie, from the console's
// own origin, and returns the status, where it redirects to, and the body.
func (s *site) do(t *testing.T, method, path string, ck *http.Cookie, form url.Values) (int, string, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, s.url+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("Origin", s.url)
	if ck != nil {
		req.AddCookie(ck)
	}
	resp, err := s.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

// checkAccess asks the collector as a gateway does: over gRPC with a
// gateway certificate.
func (s *site) checkAccess(t *testing.T, id, level string) *posturev1.CheckAccessResponse {
	t.Helper()
	cert := testtools.GatewayCert(t, s.admin, "edge-1")
	roots := x509.NewCertPool()
	roots.AddCert(s.c.CA())
	conn, err := grpc.NewClient(s.c.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, trustDomain, &cert))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := posturev1.NewGatewayServiceClient(conn).CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: level})
	if err != nil {
		t.Fatalf("CheckAccess: %v", err)
	}
	return resp
}

// artifact is where a test keeps a file for people to look at:
// $POSTURE_ARTIFACTS when set, else the test's temporary directory.
func artifact(t *testing.T, name string) string {
	dir := os.Getenv("POSTURE_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// TestConsoleInBrowser signs in to the console through a real OpenID
// provider in headless Chromium: a viewer cannot revoke; an admin filters
// the device list, opens a device, sees its score chart, and revokes it
// with confirmation; the revocation is in the audit log and gateways are
// denied. Requests without a session, with a forged CSRF token, or with
// another collector's session cookie are refused, and device text is
// inert on every page, in the DOM.
func TestConsoleInBrowser(t *testing.T) {
	chrome := testtools.Require(t, "chromium")

	opListener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	issuer := "http://" + opListener.Addr().String()
	s := startSite(t, &collector.ConsoleConfig{OIDC: &console.OIDC{Issuer: issuer, ClientID: "posture-console", ClientSecret: "console-secret-0123456789",
		AdminValues: []string{"posture-admins"}, ViewerValues: []string{"posture-viewers"}}})
	startProvider(t, opListener, "posture-console", "console-secret-0123456789", s.url+"/auth/callback", people{
		"u-ada": {id: "u-ada", username: "ada", password: "ada-password", email: "ada@example.com", groups: []string{"staff", "posture-admins"}},
		"u-vic": {id: "u-vic", username: "vic", password: "vic-password", email: "vic@example.com", groups: []string{"posture-viewers"}},
		"u-eve": {id: "u-eve", username: "eve", password: "eve-password", email: "eve@example.com", groups: []string{"staff"}},
	})

	target := s.enroll(t, "laptop-"+hostile, measurer{osName: "debian"}, 50*time.Millisecond)
	other := s.enroll(t, "laptop-spare", measurer{osName: "debian", encrypted: true}, time.Hour)
	s.enroll(t, "build-server", measurer{osName: "debian", encrypted: true}, time.Hour)
	if r := s.checkAccess(t, target, "basic"); !r.GetAllowed() {
		t.Fatalf("before revocation: basic denied: %v", r.GetReasons())
	}
	// A few reports for the chart.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		p, _ := s.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: target})
		if p.GetDevice().GetLastSeq() >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fewer than 5 reports within 10s")
		}
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1280, 1600))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	// The first action starts the browser, on a context without a deadline
	// (a deadline would stop the browser); the rest are bounded.
	if err := chromedp.Do(browser, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	signIn := func(user, password string) {
		t.Helper()
		run("sign in as "+user,
			chromedp.Navigate(s.url+"/devices"),
			chromedp.WaitVisible(css("#signin")),
			chromedp.Click(css("#signin")),
			chromedp.WaitVisible(css("#username")),
			chromedp.SendKeys(css("#username"), user),
			chromedp.SendKeys(css("#password"), password),
			chromedp.Click(css("#submit")),
		)
	}
	signOut := func() {
		t.Helper()
		run("sign out", chromedp.Click(css(".who button")), chromedp.WaitVisible(css("#signin")))
	}

	// Someone the provider knows but who holds no role is refused.
	signIn("eve", "eve-password")
	run("eve refused", chromedp.WaitVisible(css("#problem")))
	if text := value(t, ctx, chromedp.Text(css("#problem"))); !strings.Contains(text, "has no role") {
		t.Errorf("eve's sign-in: %q; want a refusal naming no role", text)
	}

	// A viewer reads, and cannot revoke.
	signIn("vic", "vic-password")
	run("viewer signed in", chromedp.WaitVisible(css("#who")))
	if text := value(t, ctx, chromedp.Text(css("#who"))); !strings.Contains(text, "vic@example.com (viewer)") {
		t.Errorf("signed in as %q; want vic@example.com (viewer)", text)
	}
	run("viewer opens the device", chromedp.Navigate(s.url+"/devices/"+target), chromedp.WaitVisible(css("#checks")))
	if n := value(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll('#revoke').length`)); n != 0 {
		t.Error("a viewer is offered a revoke button")
	}
	viewer := browserCookie(t, ctx, s.url)
	csrf := value(t, ctx, chromedp.Evaluate[string](`document.querySelector('input[name=csrf]').value`))
	if code, _, body := s.do(t, "POST", "/devices/"+target+"/revoke", viewer, url.Values{"csrf": {csrf}, "reason": {"viewer tries"}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("viewer's revoke: %d %s; want 403", code, body)
	}
	// Enrollment tokens are admins' alone: a viewer sees none of them and
	// cannot revoke one.
	toks, err := s.admin.ListEnrollmentTokens(context.Background(), &posturev1.ListEnrollmentTokensRequest{})
	if err != nil || len(toks.GetTokens()) == 0 {
		t.Fatalf("ListEnrollmentTokens: %v, %v; want the tokens the devices enrolled with", toks, err)
	}
	tokenID := toks.GetTokens()[0].GetId()
	run("viewer opens the tokens page", chromedp.Navigate(s.url+"/tokens"), chromedp.WaitVisible(css(".hint")))
	if n := value(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll('#tokens, #create-token').length`)); n != 0 {
		t.Error("a viewer is shown the tokens or the form to create one")
	}
	if code, _, body := s.do(t, "POST", "/tokens/"+tokenID+"/revoke", viewer, url.Values{"csrf": {csrf}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("viewer's token revoke: %d %s; want 403", code, body)
	}
	signOut()
	if code, loc, _ := s.do(t, "GET", "/", viewer, nil); code != http.StatusSeeOther || !strings.HasSuffix(loc, "/login") {
		t.Errorf("the viewer's cookie after signing out: %d → %q; want a redirect to /login", code, loc)
	}

	// An admin filters the list, opens the device, sees its chart and
	// revokes it, confirming.
	signIn("ada", "ada-password")
	run("admin signed in", chromedp.WaitVisible(css("#who")))
	if text := value(t, ctx, chromedp.Text(css("#who"))); !strings.Contains(text, "ada@example.com (admin)") {
		t.Errorf("signed in as %q; want ada@example.com (admin)", text)
	}
	run("filter devices",
		chromedp.Navigate(s.url+"/devices"),
		chromedp.WaitVisible(css("#q")),
		chromedp.SendKeys(css("#q"), "laptop"),
		chromedp.SetValue(css("#failing"), "disk_encryption"),
		chromedp.Click(css("#filter")),
	)
	waitURL(t, ctx, "failing=disk_encryption")
	run("filtered", chromedp.WaitVisible(css("#matches")))
	text := value(t, ctx, chromedp.Text(css("#matches")))
	if rows := value(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll('#devices tbody tr').length`)); rows != 1 || !strings.HasPrefix(text, "1 of 3") {
		t.Fatalf("laptops failing disk_encryption: %d rows, %q; want the one unencrypted laptop of 3", rows, text)
	}
	run("open the device", chromedp.Click(css("#devices tbody tr a")), chromedp.WaitVisible(css("#chart")))
	if points := value(t, ctx, chromedp.Evaluate[int](`document.querySelector('#chart svg polyline').getAttribute('points').split(' ').length`)); points < 5 {
		t.Errorf("score chart has %d points; want one per report (at least 5)", points)
	}
	png := value(t, ctx, chromedp.FullScreenshot(100))
	path := artifact(t, "console-device.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the device page: %s", path)
	admin := browserCookie(t, ctx, s.url)
	adminCSRF := value(t, ctx, chromedp.Evaluate[string](`document.querySelector('input[name=csrf]').value`))
	run("revoke, confirming",
		chromedp.SendKeys(css("#reason"), "stolen <b>laptop</b>"),
		chromedp.Click(css("#revoke")),
		chromedp.WaitVisible(css("#confirm")),
		chromedp.Click(css("#confirm")),
		chromedp.WaitVisible(css("#notice")),
	)
	if text := value(t, ctx, chromedp.Text(css("#state"))); !strings.HasPrefix(text, "revoked") {
		t.Errorf("state after revoking: %q; want revoked", text)
	}
	if r := s.checkAccess(t, target, "basic"); r.GetAllowed() || !strings.Contains(strings.Join(r.GetReasons(), "; "), "revoked") {
		t.Errorf("gateway's CheckAccess after the revocation: allowed %v, %v; want denied as revoked", r.GetAllowed(), r.GetReasons())
	}
	run("audit log", chromedp.Navigate(s.url+"/audit"), chromedp.WaitVisible(css("#audit")))
	text = value(t, ctx, chromedp.Text(css("#audit")))
	for _, want := range []string{"ada@example.com", "devices revoke", target, "reason: stolen <b>laptop</b>", "vic@example.com", "may not call"} {
		if !strings.Contains(text, want) {
			t.Errorf("audit log page lacks %q:\n%s", want, text)
		}
	}
	recs, err := s.cons.ListAudit(context.Background(), &posturev1.ListAuditRequest{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.GetRecords()) != 2 || recs.GetRecords()[0].GetActor() != "ada@example.com" || recs.GetRecords()[0].GetOutcome() != "" ||
		recs.GetRecords()[1].GetActor() != "vic@example.com" || recs.GetRecords()[1].GetOutcome() == "" {
		t.Errorf("audit records of the device: %v; want ada's revocation after vic's refused attempt", recs.GetRecords())
	}

	// Refused: no session, a forged CSRF token, another collector's
	// session cookie.
	if code, loc, _ := s.do(t, "GET", "/devices/"+other, nil, nil); code != http.StatusSeeOther || !strings.HasSuffix(loc, "/login") {
		t.Errorf("device page without a session: %d → %q; want a redirect to /login", code, loc)
	}
	if code, _, _ := s.do(t, "POST", "/devices/"+other+"/revoke", nil, url.Values{"reason": {"x"}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("revoke without a session: %d; want 403", code)
	}
	if code, _, _ := s.do(t, "POST", "/devices/"+other+"/revoke", admin, url.Values{"csrf": {"forged" + adminCSRF[6:]}, "reason": {"x"}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("revoke with a forged CSRF token: %d; want 403", code)
	}
	foreign := startSite(t, &collector.ConsoleConfig{}).linkSession(t)
	if code, loc, _ := s.do(t, "GET", "/", foreign, nil); code != http.StatusSeeOther || !strings.HasSuffix(loc, "/login") {
		t.Errorf("another collector's session cookie: %d → %q; want a redirect to /login", code, loc)
	}
	if code, _, _ := s.do(t, "POST", "/devices/"+other+"/revoke", foreign, url.Values{"csrf": {"x"}, "reason": {"x"}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("revoke with another collector's session cookie: %d; want 403", code)
	}
	if r := s.checkAccess(t, other, "basic"); !r.GetAllowed() {
		t.Errorf("the device no refused request may revoke is denied: %v", r.GetReasons())
	}

	// Device text is inert on every page, in the DOM.
	if _, err := s.admin.ListDecisions(context.Background(), &posturev1.ListDecisionsRequest{}); err != nil {
		t.Fatal(err)
	}
	type inertness struct {
		Injected int  `json:"injected"`
		Raw      bool `json:"raw"`
		Shown    bool `json:"shown"`
	}
	const probe = `({injected: document.querySelectorAll('#pwned, main b').length,
		raw: /[\u001b\u202e]/.test(document.body.innerText) || /[\u001b\u202e]/.test(document.title),
		shown: document.body.innerText.includes('\\u202e')})`
	for _, page := range []string{"/", "/devices", "/devices?q=laptop", "/devices/" + target, "/decisions?device=" + target, "/audit", "/policy", "/gateways", "/tokens"} {
		run("open "+page, chromedp.Navigate(s.url+page), chromedp.WaitReady(css("main")))
		got := value(t, ctx, chromedp.Evaluate[inertness](probe))
		if got.Injected != 0 || got.Raw {
			t.Errorf("%s: %d injected elements, raw control characters %v; want device text inert", page, got.Injected, got.Raw)
		}
		if (page == "/devices/"+target || page == "/devices?q=laptop") && !got.Shown {
			t.Errorf("%s does not show the hostname's right-to-left override as an escape", page)
		}
	}
	// The policy preview names the devices that would change, by their
	// hostnames: inert too.
	run("policy preview", chromedp.Navigate(s.url+"/policy"), chromedp.WaitVisible(css("#candidate")),
		chromedp.SetValue(css("#candidate"), "freshness: {stale_after: 15m, expire_after: 24h}\nchecks:\n  - name: firewall\n    weight: 10\nlevels:\n  - name: basic\n    min_score: 100\n"),
		chromedp.Click(css("#diff")), chromedp.WaitVisible(css("#diff-summary")))
	if text := value(t, ctx, chromedp.Text(css("#diff-summary"))); !strings.Contains(text, "3 devices evaluated") {
		t.Errorf("policy preview: %q; want 3 devices evaluated", text)
	}
	if got := value(t, ctx, chromedp.Evaluate[inertness](probe)); got.Injected != 0 || got.Raw {
		t.Errorf("policy preview: %+v; want device text shown inert", got)
	}
}

// waitURL waits until the browser shows a page whose address holds part.
func waitURL(t *testing.T, ctx context.Context, part string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		loc := value(t, ctx, chromedp.Evaluate[string](`document.readyState == 'complete' ? location.href : ''`))
		if strings.Contains(loc, part) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the browser did not reach a page with %q in its address (at %q)", part, loc)
		}
	}
}

// value runs a browser action that returns a value.
func value[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// browserCookie is the console's session cookie in the browser, which
// must be HttpOnly, Secure and SameSite=Strict.
func browserCookie(t *testing.T, ctx context.Context, consoleURL string) *http.Cookie {
	t.Helper()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{consoleURL}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Cookies {
		if c.Name == "__Host-posture-console" {
			if !c.HTTPOnly || !c.Secure || c.SameSite != network.CookieSameSiteStrict {
				t.Errorf("session cookie HttpOnly %v, Secure %v, SameSite %v; want HttpOnly, Secure, Strict", c.HTTPOnly, c.Secure, c.SameSite)
			}
			return &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	t.Fatal("no session cookie in the browser")
	return nil
}
