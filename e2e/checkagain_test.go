package e2e

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/gatewayfront"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// switchMeasurer reports a healthy device whose system disk is encrypted
// or not, as the test switches it.
type switchMeasurer struct {
	encrypted atomic.Bool
	n         atomic.Int64
}

func (m *switchMeasurer) Collect(context.Context) *posturev1.PostureReport {
	return healthyReport(m.encrypted.Load(), fmt.Sprintf("m-%06d", m.n.Add(1)))
}

// testBearer is the bearer secret of the test fronts.
const testBearer = "0123456789abcdef0123456789abcdef"

// startFront serves a collector's /check and Check again over plain HTTP
// on loopback, as posture-collector run --http-listen does.
func startFront(t *testing.T, c *collector.Collector) *httptest.Server {
	t.Helper()
	key, err := c.RecheckKey()
	if err != nil {
		t.Fatal(err)
	}
	fa, err := gatewayfront.NewForwardAuth(gatewayfront.ForwardAuthConfig{Decider: c, TrustDomain: trustDomain, Roots: c.Roots(),
		BearerSecrets: []string{testBearer}, Rechecker: c, RecheckKey: key, Rejections: c.GatewayRejections("forward_auth")})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/check", fa)
	mux.HandleFunc(gatewayfront.PathPrefix, fa.ServeBrowser)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// frontRequest asks the front as a gateway would, forwarding the PEM
// certificate certPEM.
func frontRequest(t *testing.T, method, u, certPEM string, header http.Header, body string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+testBearer)
	req.Header.Set(gatewayfront.HeaderClientCert, url.PathEscape(certPEM))
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

var tokenRE = regexp.MustCompile(`name="token" value="([^"]+)"`)

// TestCheckAgain: a browser denied for an unencrypted disk gets the deny
// page with the failing check and its fix; after the fix, Check again
// (with the page's token) has the agent measure at once over its report
// stream, status shows the new report within seconds, and the device is
// allowed. A request without the token, from another site, or too soon
// after the last is refused and asks nothing.
func TestCheckAgain(t *testing.T) {
	metricsAddr := freeAddr(t)
	e := startCollectorWith(t, func(c *collector.Config) { c.MetricsListen = metricsAddr })
	stateDir, id := e.enroll()
	m := &switchMeasurer{}
	runAgent(t, stateDir, m, time.Hour) // no report but the first unless asked
	eventually(t, "the first report", func() bool { seq, _ := e.c.ReportSeq(id); return seq == 1 })
	front := startFront(t, e.c)
	cert, _ := deviceCreds(t, stateDir)
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	html := http.Header{"Accept": {"text/html,application/xhtml+xml"}}

	// A gateway's subrequest (no Accept) gets text; a browser the page.
	if code, _, body := frontRequest(t, "GET", front.URL+"/check?level=trusted", certPEM, nil, ""); code != 403 || !strings.Contains(body, "access denied") {
		t.Fatalf("/check without Accept: %d %q, want 403 in text", code, body)
	}
	code, hdr, page := frontRequest(t, "GET", front.URL+"/check?level=trusted", certPEM, html, "")
	if code != 403 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
		t.Fatalf("/check for a browser: %d %s, want a 403 page", code, hdr.Get("Content-Type"))
	}
	for _, want := range []string{"trusted", `data-check="disk_encryption"`, "Fix: encrypt the system disk", "Check again", id, "last report"} {
		if !strings.Contains(page, want) {
			t.Errorf("deny page lacks %q:\n%s", want, page)
		}
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'nonce-") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("deny page CSP %q", csp)
	}
	tok := tokenRE.FindStringSubmatch(page)
	if tok == nil {
		t.Fatalf("deny page has no Check again token:\n%s", page)
	}
	recheck := front.URL + gatewayfront.PathPrefix + "recheck"

	// Refused: no token, another device's token, another site.
	for _, tc := range []struct {
		name string
		hdr  http.Header
		body string
	}{
		{"no token", nil, "js=1"},
		{"forged token", nil, "js=1&token=" + url.QueryEscape(tok[1][:10]+"AAAA"+tok[1][14:])},
		{"cross-site", http.Header{"Sec-Fetch-Site": {"cross-site"}}, "js=1&token=" + tok[1]},
	} {
		if code, _, body := frontRequest(t, "POST", recheck, certPEM, tc.hdr, tc.body); code != http.StatusForbidden {
			t.Errorf("%s: %d %q, want 403", tc.name, code, body)
		}
	}
	if code, _, _ := frontRequest(t, "GET", recheck, certPEM, nil, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("GET recheck: %d, want 405", code)
	}
	time.Sleep(200 * time.Millisecond)
	if seq, _ := e.c.ReportSeq(id); seq != 1 || m.n.Load() != 1 {
		t.Fatalf("refused requests measured: seq %d, %d measurements", seq, m.n.Load())
	}

	// The user fixes the disk and presses Check again.
	m.encrypted.Store(true)
	asked := time.Now()
	code, _, body := frontRequest(t, "POST", recheck, certPEM, http.Header{"Sec-Fetch-Site": {"same-origin"}}, "js=1&token="+url.QueryEscape(tok[1]))
	var ans struct {
		Asked bool `json:"asked"`
		Held  bool `json:"held"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &ans) != nil || !ans.Asked || !ans.Held {
		t.Fatalf("Check again: %d %q, want asked and held", code, body)
	}
	status := front.URL + gatewayfront.PathPrefix + "status"
	eventuallyWithin(t, 5*time.Second, "the report Check again asked for", func() bool {
		_, _, body := frontRequest(t, "GET", status, certPEM, nil, "")
		var st struct{ Seq string }
		json.Unmarshal([]byte(body), &st)
		n, _ := strconv.Atoi(st.Seq)
		return n >= 2
	})
	t.Logf("Check again to the new report: %v", time.Since(asked).Round(time.Millisecond))
	if code, _, body := frontRequest(t, "GET", front.URL+"/check?level=trusted", certPEM, html, ""); code != 200 {
		t.Fatalf("/check after the fix: %d %q, want 200", code, body)
	}
	// Pressed again at once: throttled, nothing asked.
	if code, hdr, _ := frontRequest(t, "POST", recheck, certPEM, nil, "js=1&token="+url.QueryEscape(tok[1])); code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
		t.Errorf("a second Check again at once: %d, want 429 with Retry-After", code)
	}
	time.Sleep(200 * time.Millisecond)
	if n := m.n.Load(); n != 2 {
		t.Errorf("%d measurements, want 2 (the first and the one asked)", n)
	}
	// Every refusal is counted.
	metrics := scrape(t, metricsAddr)
	for _, want := range []string{
		`posture_gateway_rejected_total{front="forward_auth",reason="recheck_refused"} 4`,
		`posture_gateway_rejected_total{front="forward_auth",reason="recheck_throttled"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestCheckAgainOnAnotherCollector: with two collectors on one PostgreSQL
// database, Check again pressed at the collector that does not hold the
// device's report stream reaches the agent through the other (the request
// is an event every collector applies), and the new report is seen at the
// first.
func TestCheckAgainOnAnotherCollector(t *testing.T) {
	bearerFile := filepath.Join(t.TempDir(), "bearer")
	if err := os.WriteFile(bearerFile, []byte(testBearer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := map[*replica]string{}
	s := startReplicas(t, 2, func(r *replica) {
		httpAddr[r] = freeAddr(t)
		r.extra = append(r.extra, "--http-listen", httpAddr[r], "--http-plaintext", "--http-bearer-file", bearerFile)
	})
	a, b := s.reps[0], s.reps[1]
	stateDir := t.TempDir()
	if _, err := agent.EnrollWith(context.Background(), stateDir, a.token(1), agent.EnrollOptions{Identity: agent.IdentitySoftware}); err != nil {
		t.Fatal(err)
	}
	m := &switchMeasurer{}
	runAgent(t, stateDir, m, time.Hour)
	cert, _ := deviceCreds(t, stateDir)
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	seqAt := func(r *replica) int {
		_, _, body := frontRequest(t, "GET", "http://"+httpAddr[r]+gatewayfront.PathPrefix+"status", certPEM, nil, "")
		var st struct{ Seq string }
		json.Unmarshal([]byte(body), &st)
		n, _ := strconv.Atoi(st.Seq)
		return n
	}
	eventually(t, "the first report at both collectors", func() bool { return seqAt(a) == 1 && seqAt(b) == 1 })
	// The agent dials the collector its token named first: a.
	holder, other := a, b

	code, _, page := frontRequest(t, "GET", "http://"+httpAddr[other]+"/check?level=trusted", certPEM, http.Header{"Accept": {"text/html"}}, "")
	tok := tokenRE.FindStringSubmatch(page)
	if code != 403 || tok == nil {
		t.Fatalf("deny page at %s: %d, token %v", other.name, code, tok)
	}
	m.encrypted.Store(true)
	code, _, body := frontRequest(t, "POST", "http://"+httpAddr[other]+gatewayfront.PathPrefix+"recheck", certPEM, nil, "js=1&token="+url.QueryEscape(tok[1]))
	var ans struct {
		Asked bool `json:"asked"`
		Held  bool `json:"held"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &ans) != nil || !ans.Asked {
		t.Fatalf("Check again at %s: %d %q", other.name, code, body)
	}
	if ans.Held {
		t.Fatalf("%s says it holds the stream; the test wants the other collector to", other.name)
	}
	eventually(t, "the report asked through the other collector", func() bool { return seqAt(other) >= 2 })
	if !strings.Contains(holder.logs.String(), "asked the agent to measure now") {
		t.Errorf("%s, which holds the stream, did not log forwarding the request:\n%s", holder.name, holder.logs.String())
	}
	if code, _, body := frontRequest(t, "GET", "http://"+httpAddr[other]+"/check?level=trusted", certPEM, nil, ""); code != 200 {
		t.Errorf("/check at %s after the fix: %d %q", other.name, code, body)
	}
}
