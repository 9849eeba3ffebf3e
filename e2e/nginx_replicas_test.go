package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
)

// TestNginxSeveralCollectors runs the nginx guide's configuration for
// several collectors, as written, in front of a test application and three
// collector processes on one PostgreSQL database, each serving /check with
// --serving-name: a device is allowed while any collector answers, a
// revocation made on one is enforced through all, and with every
// collector gone nginx refuses, never allows.
func TestNginxSeveralCollectors(t *testing.T) {
	bin := testtools.Nginx(t)
	const sharedName = "posture.example.com"
	httpAddr := map[*replica]string{}
	s := startReplicas(t, 3, func(r *replica) {
		httpAddr[r] = freeAddr(t)
		r.extra = append(r.extra, "--http-listen", httpAddr[r], "--serving-name", sharedName)
	})
	a, b, c := s.reps[0], s.reps[1], s.reps[2]
	dev := startAgent(t, a.token(1))
	for _, r := range s.reps {
		eventually(t, "the device allowed on "+r.name, func() bool {
			_, code := r.cli("check", dev.id, "--level", "basic")
			return code == 0
		})
	}

	// The application behind nginx records the device header nginx set.
	var seen = make(chan string, 16)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- r.Header.Get("X-Posture-Device"):
		default:
		}
		io.WriteString(w, "hello from the application\n")
	}))
	t.Cleanup(app.Close)

	// nginx's files: its own serving certificate (from a CA of the test's
	// own), the gateway certificate a collector issued, the collector CA.
	dir := t.TempDir()
	if out, code := c.cli("gateway", "add", "nginx", "--out", dir); code != 0 {
		t.Fatalf("gateway add: %s", out)
	}
	appCA, err := pki.LoadOrCreateCA(t.TempDir(), "app.test")
	if err != nil {
		t.Fatal(err)
	}
	appKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	appCert, err := appCA.IssueServer(appKey.Public(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCertificates(filepath.Join(dir, "app.crt"), appCert); err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(filepath.Join(dir, "app.key"), appKey); err != nil {
		t.Fatal(err)
	}

	blocks := testtools.CodeBlocks(t, filepath.Join("..", "docs", "gateways", "nginx.md"), "# nginx", "nginx")
	if len(blocks) != 3 {
		t.Fatalf("docs/gateways/nginx.md has %d nginx blocks, want 3 (the server, the loopback /posture location, several collectors)", len(blocks))
	}
	serverBlock := blocks[0]
	upstream, location, ok := strings.Cut(blocks[2], "# in the server above, in place of its location = /posture:\n")
	if !ok {
		t.Fatalf("the nginx guide's block for several collectors no longer says where its location goes:\n%s", blocks[2])
	}
	i := strings.Index(serverBlock, "    location = /posture {")
	j := strings.Index(serverBlock[max(i, 0):], "\n    }\n")
	if i < 0 || j < 0 {
		t.Fatalf("the nginx guide's server has no location = /posture block:\n%s", serverBlock)
	}
	server := serverBlock[:i] + strings.TrimSuffix(location, "\n") + serverBlock[i+j+len("\n    }"):]
	paths := []string{
		"/etc/nginx/app.crt", filepath.Join(dir, "app.crt"),
		"/etc/nginx/app.key", filepath.Join(dir, "app.key"),
		"/etc/posture/ca.crt", filepath.Join(dir, "ca.crt"),
		"/etc/posture/gateway.crt", filepath.Join(dir, "gateway.crt"),
		"/etc/posture/gateway.key", filepath.Join(dir, "gateway.key"),
		"http://app_backend", strings.TrimSuffix(app.URL, "/"),
		"?level=trusted", "?level=basic", // the test device meets basic
	}
	server = substituteAll(t, server, paths...)
	upstream = substituteAll(t, upstream,
		"collector-a.example.com:8444", httpAddr[a],
		"collector-b.example.com:8444", httpAddr[b],
		"collector-c.example.com:8444", httpAddr[c],
	)
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "nginx-replicas.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	addrs := testtools.StartNginx(t, bin, dir, 1, func(addrs []string) []byte {
		var conf bytes.Buffer
		err := tmpl.Execute(&conf, struct{ Dir, Upstream, Server string }{dir, upstream, substituteAll(t, server, "listen 443 ssl;", "listen "+addrs[0]+" ssl;")})
		if err != nil {
			t.Fatal(err)
		}
		return conf.Bytes()
	})

	// The device's client: its certificate and TLS key from its state
	// directory, nginx verified by the test's CA.
	devCert, err := tls.LoadX509KeyPair(filepath.Join(dev.stateDir, "device.crt"), filepath.Join(dev.stateDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(appCA.Cert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{devCert}},
		DisableKeepAlives: true,
	}}
	get := func() (int, string) {
		t.Helper()
		resp, err := client.Get("https://" + addrs[0] + "/app")
		if err != nil {
			t.Fatalf("GET through nginx: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Posture-Reason") + string(body)
	}
	allowed := func(what string) {
		t.Helper()
		// Round robin over three collectors: six requests reach each
		// twice, the dead ones included.
		for range 6 {
			code, body := get()
			if code != http.StatusOK {
				t.Fatalf("%s: status %d, want 200:\n%s\nnginx error log:\n%s", what, code, body, readFile(filepath.Join(dir, "error.log")))
			}
			select {
			case got := <-seen:
				if got != dev.id {
					t.Fatalf("%s: the application got X-Posture-Device %q, want %q", what, got, dev.id)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: nginx answered 200 but the application was not asked", what)
			}
		}
	}

	allowed("every collector up")
	a.kill()
	allowed("collector a killed")
	b.stop()
	allowed("collector b stopped as well")
	// c answered alone; what it decided is in its decision log, with the
	// gateway that asked.
	if out, code := c.cli("decisions", dev.id); code != 0 || !strings.Contains(out, "nginx") {
		t.Errorf("collector c's decisions for the device do not name nginx (exit %d):\n%s", code, out)
	}

	if out, code := c.cli("devices", "revoke", dev.id, "--reason", "lost on a train"); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	eventually(t, "nginx denies the revoked device", func() bool {
		code, body := get()
		return code == http.StatusForbidden && strings.Contains(body, "revoked")
	})

	c.kill()
	for range 3 {
		if code, body := get(); code == http.StatusOK || code < 500 {
			t.Fatalf("every collector gone: status %d, want a 5xx (fail closed):\n%s", code, body)
		}
	}
}

// substituteAll replaces each old with its new in conf, and fails when an
// old is missing: the guide changed, and the test must follow it.
func substituteAll(t *testing.T, conf string, oldnew ...string) string {
	t.Helper()
	for i := 0; i+1 < len(oldnew); i += 2 {
		if !strings.Contains(conf, oldnew[i]) {
			t.Fatalf("the nginx guide's configuration no longer has %q:\n%s", oldnew[i], conf)
		}
		conf = strings.ReplaceAll(conf, oldnew[i], oldnew[i+1])
	}
	return conf
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}
