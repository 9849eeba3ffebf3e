package gatewayfront

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// browserCheckServer serves the collector's /check and the deny page's
// /posture/ paths over TLS, as the collector's --http-listen does, and
// records the headers of the last /posture/ request it received.
func (h *caddyHarness) browserCheckServer(t *testing.T) (*httptest.Server, func() http.Header) {
	t.Helper()
	key, err := h.e.c.RecheckKey()
	if err != nil {
		t.Fatal(err)
	}
	fa, err := NewForwardAuth(ForwardAuthConfig{Decider: h.e.c, TrustDomain: testTrustDomain, Roots: h.e.roots, Rechecker: h.e.c, RecheckKey: key})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen http.Header
	)
	mux := http.NewServeMux()
	mux.Handle("/check", fa)
	mux.HandleFunc(PathPrefix, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
		fa.ServeBrowser(w, r)
	})
	srv := httptest.NewUnstartedServer(mux)
	if srv.TLS, err = h.e.c.ServingTLS(); err != nil {
		t.Fatal(err)
	}
	cert, err := srv.TLS.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS.Certificates = []tls.Certificate{*cert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, func() http.Header {
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

// do sends req to Caddy at addr as app.example.com, presenting certs.
func (h *caddyHarness) do(t *testing.T, addr string, certs []tls.Certificate, method, path, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: h.roots, ServerName: "app.example.com", Certificates: certs},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	_, port, _ := net.SplitHostPort(addr)
	req, err := http.NewRequest(method, "https://app.example.com:"+port+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	h.mu.Lock()
	h.upstream = nil
	h.mu.Unlock()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s through Caddy: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

var tokenField = regexp.MustCompile(`name="token" value="([^"]+)"`)

// TestCaddyDenyPage runs the deny page's Caddy site from
// docs/gateways/deny-page.md, as written, with Debian's Caddy: a browser
// denied the level gets the collector's page with the failing check and
// Check again, and the page's Check again and status poll reach the
// collector through Caddy (never the application), with the device
// certificate from the TLS connection and nothing of the client's
// credentials.
func TestCaddyDenyPage(t *testing.T) {
	h := newCaddyHarness(t)
	blocks := testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "gateways", "deny-page.md"), "## Caddy", "caddy")
	if len(blocks) != 1 {
		t.Fatalf("docs/gateways/deny-page.md has %d caddy blocks under Caddy, want 1", len(blocks))
	}
	check, seen := h.browserCheckServer(t)
	// The test device meets basic, not trusted: start puts basic in
	// place of the guide's trusted, and this puts trusted back, so that
	// it is denied.
	addr := h.start(t, blocks[0], "https://collector.example.com:8444", check.URL, "?level=basic", "?level=trusted")
	html := []string{"Accept", "text/html,application/xhtml+xml"}

	resp, page := h.do(t, addr, []tls.Certificate{h.dev.cert}, http.MethodGet, "/app", "", html...)
	if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("denied browser: %d %s, want 403 with the page:\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), page)
	}
	for _, want := range []string{"disk_encryption", "Fix:", "Check again", `action="/.posture/recheck"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the deny page through Caddy lacks %q:\n%s", want, page)
		}
	}
	if h.received() != nil {
		t.Error("a denied request reached the application")
	}
	m := tokenField.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("the deny page has no Check again token:\n%s", page)
	}
	token := m[1]

	t.Run("a client that does not ask for HTML gets text", func(t *testing.T) {
		resp, body := h.do(t, addr, []tls.Certificate{h.dev.cert}, http.MethodGet, "/app", "")
		if resp.StatusCode != http.StatusForbidden || strings.Contains(body, "<html") || !strings.Contains(resp.Header.Get(HeaderReason), "trusted") {
			t.Errorf("%d %s %q:\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get(HeaderReason), body)
		}
	})

	form := "application/x-www-form-urlencoded"
	t.Run("Check again reaches the collector", func(t *testing.T) {
		resp, body := h.do(t, addr, []tls.Certificate{h.dev.cert}, http.MethodPost, "/.posture/recheck",
			url.Values{"token": {token}, "js": {"1"}}.Encode(),
			"Content-Type", form, "Sec-Fetch-Site", "same-origin", "Cookie", "session=app-secret", "Authorization", "Bearer app-secret")
		var got struct {
			Asked bool `json:"asked"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || !got.Asked {
			t.Fatalf("Check again through Caddy: %d %s, want 200 and asked", resp.StatusCode, body)
		}
		if h.received() != nil {
			t.Error("Check again reached the application")
		}
		hdr := seen()
		if hdr.Get("Cookie") != "" || hdr.Get("Authorization") != "" {
			t.Errorf("the client's credentials reached the collector: Cookie %q, Authorization %q", hdr.Get("Cookie"), hdr.Get("Authorization"))
		}
		if hdr.Get(HeaderClientCert) == "" {
			t.Error("Caddy did not forward the device certificate to Check again")
		}
	})

	t.Run("pressed again at once: throttled", func(t *testing.T) {
		resp, body := h.do(t, addr, []tls.Certificate{h.dev.cert}, http.MethodPost, "/.posture/recheck",
			url.Values{"token": {token}, "js": {"1"}}.Encode(), "Content-Type", form, "Sec-Fetch-Site", "same-origin")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Errorf("second Check again: %d (Retry-After %q) %s, want 429", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	})

	t.Run("a forged token is refused", func(t *testing.T) {
		resp, body := h.do(t, addr, []tls.Certificate{h.dev.cert}, http.MethodPost, "/.posture/recheck",
			url.Values{"token": {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}.Encode(), "Content-Type", form, "Sec-Fetch-Site", "same-origin")
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Header.Get(HeaderReason), "no valid token") {
			t.Errorf("forged token: %d %q %s, want 403 naming the token", resp.StatusCode, resp.Header.Get(HeaderReason), body)
		}
	})

	t.Run("status reaches the collector", func(t *testing.T) {
		resp, body := h.do(t, addr, []tls.Certificate{h.dev.cert}, http.MethodGet, "/.posture/status", "")
		var got struct {
			Seq string `json:"seq"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil {
			t.Fatalf("status through Caddy: %d %s", resp.StatusCode, body)
		}
		want, _ := h.e.c.ReportSeq(h.dev.id)
		if seq, err := strconv.ParseUint(got.Seq, 10, 64); err != nil || seq < want || want == 0 {
			t.Errorf("status seq %q; the collector holds report %d", got.Seq, want)
		}
		if h.received() != nil {
			t.Error("the status poll reached the application")
		}
	})
}
