package e2e

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/browsercert"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// nginxHarness is the frame around a server block of the docs, as
// collector/gatewayfront's nginx test uses it.
var nginxHarness = template.Must(template.New("nginx").Parse(`daemon off;
master_process off;
worker_processes 1;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log info;
events { worker_connections 64; }
http {
    access_log {{.Dir}}/access.log;
    client_body_temp_path {{.Dir}}/client_body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;
{{.Server}}
}
`))

// chromiumPolicyDir is where Debian's Chromium reads managed policies, as
// an MDM or configuration management puts them.
const chromiumPolicyDir = "/etc/chromium/policies/managed"

// artifactPath is where a test keeps a file for people to look at:
// $POSTURE_ARTIFACTS when set, else the system's temporary directory.
func artifactPath(t *testing.T, name string) string {
	dir := os.Getenv("POSTURE_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// TestBrowserPath is the end user's path in a real browser: an enrolled
// device's agent (TPM simulator) gets the user a browser certificate over
// its local socket, which the per-user step puts in an NSS database;
// headless Chromium using that database, with AutoSelectCertificateForUrls
// set as an MDM would, opens an application behind Debian's nginx
// (ssl_verify_client, auth_request, configured as docs/gateways/deny-page.md
// says) and gets it. The device then fails a check: Chromium gets the deny
// page naming the check and its fix. After the fix, Check again has the
// agent report at once and the application loads.
func TestBrowserPath(t *testing.T) {
	chrome := testtools.Require(t, "chromium")
	nginxBin := testtools.Nginx(t)
	testtools.Require(t, "certutil")
	testtools.Require(t, "pk12util")
	if err := os.MkdirAll(chromiumPolicyDir, 0o755); err != nil {
		if os.Getenv(testtools.RequireEnv) == "1" {
			t.Fatalf("Chromium's managed policy directory: %v (the test runs as root)", err)
		}
		t.Skipf("SKIP: cannot write Chromium's managed policies in %s: %v", chromiumPolicyDir, err)
	}

	// The device, enrolled with its TPM, its agent listening on its
	// local socket.
	_, dev := openSimulator(t, 16)
	e := startCollector(t)
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, e.token(time.Hour, 1), agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	id := res.DeviceID
	if _, err := e.admin.ApproveDevice(context.Background(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	m := &switchMeasurer{}
	m.encrypted.Store(true)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: time.Hour, Measurer: m, TPMDevice: dev, LocalSocket: socket,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the first report", func() bool { seq, _ := e.c.ReportSeq(id); return seq >= 1 })

	// The per-user step, as posture-agent browser-cert runs it at login.
	home := t.TempDir()
	db := browsercert.NSSDB{Dir: filepath.Join(home, ".pki", "nssdb")}
	got, err := browsercert.Ensure(browsercert.Options{Socket: socket, Store: db, StateFile: filepath.Join(home, "browser-cert.json")})
	if err != nil {
		t.Fatalf("browser-cert: %v", err)
	}
	if !got.Renewed || got.DeviceID != id || !db.Has(got.Nickname) {
		t.Fatalf("browser-cert = %+v, want a new certificate for %s in %s", got, id, db.Dir)
	}
	if again, err := browsercert.Ensure(browsercert.Options{Socket: socket, Store: db, StateFile: filepath.Join(home, "browser-cert.json")}); err != nil || again.Renewed {
		t.Fatalf("browser-cert again = %+v, %v; want the current one kept", again, err)
	}
	// It names the device as the agent's own certificate does, with
	// another key.
	devCert, err := pki.ReadCertificate(filepath.Join(stateDir, "device.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Cert.URIs[0].String() != devCert.URIs[0].String() || string(got.Cert.RawSubjectPublicKeyInfo) == string(devCert.RawSubjectPublicKeyInfo) {
		t.Fatalf("browser certificate names %v with the device's key: want %v with a key of its own", got.Cert.URIs, devCert.URIs)
	}
	// Chromium trusts the collector CA for the application's server
	// certificate, as a managed machine would.
	caPath := filepath.Join(home, "ca.crt")
	if err := pki.WriteCertificates(caPath, e.c.CA()); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("certutil", "-A", "-d", "sql:"+db.Dir, "-n", "Posture CA", "-t", "C,,", "-i", caPath).CombinedOutput(); err != nil {
		t.Fatalf("certutil -A: %v: %s", err, out)
	}

	// The application, /check, and nginx as the deny-page guide says.
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "<!doctype html><title>app</title><p id=app>hello from the application, device %s</p>", r.Header.Get("X-Posture-Device"))
	}))
	t.Cleanup(app.Close)
	front := startFront(t, e.c)
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(e.dataDir, trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	serverKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.IssueServer(serverKey.Public(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{"app.crt": filepath.Join(dir, "app.crt"), "app.key": filepath.Join(dir, "app.key")}
	if err := pki.WriteCertificates(paths["app.crt"], serverCert); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(paths["app.key"], crypto.Signer(serverKey)); err != nil {
		t.Fatal(err)
	}
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "docs", "gateways", "deny-page.md"), "## nginx", "nginx")
	server := blocks[0]
	for _, r := range [][2]string{
		{"/etc/nginx/app.crt", paths["app.crt"]},
		{"/etc/nginx/app.key", paths["app.key"]},
		{"/etc/posture/ca.crt", caPath},
		{"http://app_backend", strings.TrimSuffix(app.URL, "/")},
		{"http://127.0.0.1:8444/", front.URL + "/"},
		{"Bearer SECRET", "Bearer " + testBearer},
	} {
		if !strings.Contains(server, r[0]) {
			t.Fatalf("docs/gateways/deny-page.md's nginx configuration no longer has %q", r[0])
		}
		server = strings.ReplaceAll(server, r[0], r[1])
	}
	addrs := testtools.StartNginx(t, nginxBin, dir, 1, func(addrs []string) []byte {
		var b strings.Builder
		conf := strings.Replace(server, "listen 443 ssl;", "listen "+addrs[0]+" ssl;", 1)
		if err := nginxHarness.Execute(&b, struct{ Dir, Server string }{dir, conf}); err != nil {
			t.Fatal(err)
		}
		return []byte(b.String())
	})
	appURL := "https://" + addrs[0] + "/app"

	// The MDM's policy: Chromium presents a certificate of the collector
	// CA to this site without asking.
	policy, _ := json.Marshal(map[string]any{"AutoSelectCertificateForUrls": []string{
		fmt.Sprintf(`{"pattern":"https://%s","filter":{"ISSUER":{"CN":%q}}}`, addrs[0], e.c.CA().Subject.CommonName)}})
	policyFile := filepath.Join(chromiumPolicyDir, fmt.Sprintf("posture-test-%d.json", os.Getpid()))
	if err := os.WriteFile(policyFile, policy, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(policyFile) })

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.UserDataDir(filepath.Join(home, "chromium")), chromedp.Env("HOME="+home), chromedp.WindowSize(1000, 1200))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	if err := chromedp.Do(browser, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	bctx, cancelB := context.WithTimeout(browser, 90*time.Second)
	defer cancelB()
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func() string {
		s, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		return s
	}

	// 1. A healthy device gets the application.
	run("open the application", chromedp.Navigate(appURL), chromedp.WaitVisible(chromedp.CSS("#app")))
	if s := text(); !strings.Contains(s, "hello from the application, device "+id) {
		t.Fatalf("application page: %q", s)
	}

	// 2. The disk is no longer encrypted, and the next report says so.
	m.encrypted.Store(false)
	if _, err := e.c.RequestMeasurement(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the failing report", func() bool { seq, _ := e.c.ReportSeq(id); return seq >= 2 })
	run("open the application, denied", chromedp.Navigate(appURL), chromedp.WaitVisible(chromedp.CSS(`[data-check="disk_encryption"]`)))
	page := text()
	for _, want := range []string{"Access denied", "trusted", "disk_encryption", "Fix: encrypt the system disk", "Check again", id} {
		if !strings.Contains(page, want) {
			t.Errorf("deny page lacks %q:\n%s", want, page)
		}
	}
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := artifactPath(t, "posture-deny-page.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the deny page: %s", shot)

	// 3. The user fixes it and presses Check again: the agent reports at
	// once and the page reloads into the application.
	m.encrypted.Store(true)
	pressed := time.Now()
	run("Check again", chromedp.Click(chromedp.CSS("#check-again")))
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(text(), "hello from the application") {
		if time.Now().After(deadline) {
			t.Fatalf("the application did not load within 20 s of Check again; the page says:\n%s", text())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("Check again to the application: %v", time.Since(pressed).Round(time.Millisecond))
	if n := m.n.Load(); n != 3 {
		t.Errorf("%d measurements, want 3 (the first, the failing one, the one Check again asked for)", n)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "access.log")); !strings.Contains(string(b), "POST /.posture/recheck") {
		t.Errorf("nginx saw no POST /.posture/recheck:\n%s", b)
	}
}
