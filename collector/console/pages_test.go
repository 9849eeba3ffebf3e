package console_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/webhook"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// gracePolicy gives disk encryption a grace and rolls a level out in
// warn mode.
const gracePolicy = `freshness: {stale_after: 15m, expire_after: 24h}
checks:
  - {name: disk_encryption, weight: 30, grace: 72h}
  - {name: os_version, weight: 15}
levels:
  - {name: basic, min_score: 10}
  - {name: trusted, min_score: 10, require: [disk_encryption]}
  - {name: finance, min_score: 10, expr: 'device.checks.disk_encryption == "pass"', enforce: warn}
`

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrfOf is the CSRF token a page's forms carry.
func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("the page has no form with a CSRF token")
	}
	return html.UnescapeString(m[1])
}

// TestDevicePageGraceEnforcementAndUser holds the device and policy pages
// to what the policy's grace and enforcement modes decide, and binds and
// unbinds the device's user from the console, each action in the audit
// log through the same road as the command line's.
func TestDevicePageGraceEnforcementAndUser(t *testing.T) {
	pol, err := policy.Parse([]byte(gracePolicy))
	if err != nil {
		t.Fatal(err)
	}
	s := startSiteWith(t, &collector.ConsoleConfig{}, pol)
	id, stateDir := s.enrollIn(t, "laptop-"+hostile, measurer{osName: "debian"}, time.Hour)
	admin := s.linkSession(t)

	code, _, page := s.do(t, "GET", "/devices/"+id, admin, nil)
	if code != http.StatusOK {
		t.Fatalf("device page: %d", code)
	}
	text := html.UnescapeString(page)
	for _, want := range []string{"in grace, blocks at ", "disk_encryption failing since", "<td>warn</td>", "<td>block</td>", "none bound"} {
		if !strings.Contains(text, want) {
			t.Errorf("device page lacks %q", want)
		}
	}
	// The certificate counts by its serial and its public key: the page
	// shows both, as the device holds them.
	pemBytes, err := os.ReadFile(filepath.Join(stateDir, "device.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatal("the agent's device.crt holds no PEM block")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	wantCert := fmt.Sprintf(`<dd class="id" id="cert">serial %s, key SHA-256 %x</dd>`, cert.SerialNumber.Text(16), pki.KeySHA256(cert))
	if !strings.Contains(text, wantCert) {
		t.Errorf("device page lacks the certificate as %s", wantCert)
	}
	since := regexp.MustCompile(`<td class="failing">since (\S+ \S+); in grace, blocks at (\S+ \S+)</td>`).FindStringSubmatch(text)
	if since == nil {
		t.Fatal("the disk_encryption row has no failing-since time and end of grace")
	}
	from, _ := time.ParseInLocation("2006-01-02 15:04:05", since[1], time.Local)
	to, _ := time.ParseInLocation("2006-01-02 15:04:05", since[2], time.Local)
	if to.Sub(from) != 72*time.Hour || time.Since(from) > time.Minute {
		t.Errorf("failing since %s, blocks at %s; want since the first report, a grace of 72h", since[1], since[2])
	}
	if r := s.checkAccess(t, id, "trusted"); !r.GetAllowed() || !r.GetWarned() {
		t.Errorf("trusted inside the grace: allowed %v, warned %v; want allowed with a warning", r.GetAllowed(), r.GetWarned())
	}

	// The policy page shows the grace and the modes, and the preview says
	// what a candidate changes, modes included.
	_, _, page = s.do(t, "GET", "/policy", admin, nil)
	if !strings.Contains(page, "<td>3d00h</td>") || !strings.Contains(page, "<td>warn</td>") {
		t.Errorf("policy page lacks the grace of 72h (3d00h) or the warn level")
	}
	candidate := strings.Replace(gracePolicy, ", grace: 72h", "", 1)
	code, _, page = s.do(t, "POST", "/policy/diff", admin, url.Values{"csrf": {csrfOf(t, page)}, "candidate": {candidate}})
	text = html.UnescapeString(page)
	if code != http.StatusOK || !strings.Contains(text, `<td class="change">loses</td>`) || !strings.Contains(text, "1 devices evaluated") {
		t.Errorf("preview of the policy without the grace: %d; want the device to lose trusted:\n%s", code, text)
	}

	// Bind, confirming; then unbind. A bad address is refused, says why,
	// and binds nothing.
	csrf := csrfOf(t, page)
	code, _, page = s.do(t, "POST", "/devices/"+id+"/bind", admin, url.Values{"csrf": {csrf}, "email": {"ann at example"}, "confirm": {"yes"}})
	if code != http.StatusBadRequest || !strings.Contains(html.UnescapeString(page), "is not an address such as ada@example.com") {
		t.Errorf("bind with a bad address: %d; want 400 saying what an address is", code)
	}
	form := url.Values{"csrf": {csrf}, "email": {"ann@example.com"}, "issuer": {"https://login.example.com"}, "subject": {"u-ann"}}
	code, _, page = s.do(t, "POST", "/devices/"+id+"/bind", admin, form)
	if code != http.StatusOK || !strings.Contains(page, `id="confirm"`) {
		t.Fatalf("bind without confirming: %d; want the confirmation page", code)
	}
	if u, err := s.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id}); err != nil || u.GetDevice().GetUser() != nil {
		t.Fatalf("bound before confirming: %v, %v", u.GetDevice().GetUser(), err)
	}
	form.Set("confirm", "yes")
	if code, loc, body := s.do(t, "POST", "/devices/"+id+"/bind", admin, form); code != http.StatusSeeOther || !strings.Contains(loc, "done=bound") {
		t.Fatalf("bind: %d → %q %s", code, loc, body)
	}
	_, _, page = s.do(t, "GET", "/devices/"+id, admin, nil)
	if !strings.Contains(page, `<dd id="user">ann@example.com (u-ann at https://login.example.com)</dd>`) {
		t.Errorf("device page after binding lacks the user")
	}
	if code, loc, _ := s.do(t, "POST", "/devices/"+id+"/unbind", admin, url.Values{"csrf": {csrf}, "confirm": {"yes"}}); code != http.StatusSeeOther || !strings.Contains(loc, "done=unbound") {
		t.Fatalf("unbind: %d → %q", code, loc)
	}
	if u, err := s.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id}); err != nil || u.GetDevice().GetUser() != nil {
		t.Errorf("after unbinding: %v, %v; want no user", u.GetDevice().GetUser(), err)
	}
	recs, err := s.cons.ListAudit(context.Background(), &posturev1.ListAuditRequest{Target: id})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs.GetRecords() {
		line := r.GetActor() + ": " + r.GetAction() + " " + r.GetDetail() + " via " + r.GetVia()
		if r.GetOutcome() != "" {
			line += ", refused"
		}
		got = append(got, line)
	}
	want := []string{"first admin: devices unbind  via console", "first admin: devices bind user ann@example.com (iss https://login.example.com, sub u-ann) via console",
		"first admin: devices bind user ann at example via console, refused"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit records of the device:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestTokensPage: an admin creates a token on the tokens page and sees it
// listed, description inert; revokes it, confirming; the list says so, a
// device cannot enroll with it, and the revocation is in the audit log,
// made in the console.
func TestTokensPage(t *testing.T) {
	s := startSite(t, &collector.ConsoleConfig{})
	admin := s.linkSession(t)
	_, _, page := s.do(t, "GET", "/tokens", admin, nil)
	if !strings.Contains(page, "No tokens.") {
		t.Errorf("tokens page of a new collector lacks No tokens.")
	}
	csrf := csrfOf(t, page)
	code, _, page := s.do(t, "POST", "/tokens", admin, url.Values{"csrf": {csrf}, "ttl": {"1h"}, "uses": {"2"}, "description": {"lab <b>" + hostile}})
	token := regexp.MustCompile(`<pre id="token">([^<]+)</pre>`).FindStringSubmatch(page)
	if code != http.StatusOK || token == nil {
		t.Fatalf("create a token: %d, no token shown", code)
	}
	row := regexp.MustCompile(`<tr><td class="id">([0-9a-f]{16})</td><td>([^<]*)</td>.*?<td>0 of 2</td><td class="token-state">usable</td>`).FindStringSubmatch(page)
	if row == nil {
		t.Fatalf("the page after creating a token does not list it as usable, 0 of 2:\n%s", page)
	}
	id := row[1]
	if strings.Contains(row[2], "<b>") || !strings.Contains(html.UnescapeString(row[2]), "lab <b>") || strings.Contains(row[2], "\x1b") {
		t.Errorf("description shown as %q; want it escaped and inert", row[2])
	}

	code, _, page = s.do(t, "POST", "/tokens/"+id+"/revoke", admin, url.Values{"csrf": {csrf}})
	if code != http.StatusOK || !strings.Contains(page, `id="confirm"`) || !strings.Contains(page, "Revoke enrollment token "+id+"?") {
		t.Fatalf("revoke without confirming: %d; want the confirmation page", code)
	}
	if toks, _ := s.admin.ListEnrollmentTokens(context.Background(), &posturev1.ListEnrollmentTokensRequest{}); toks.GetTokens()[0].GetRevokedAt() != nil {
		t.Fatal("revoked before confirming")
	}
	code, loc, _ := s.do(t, "POST", "/tokens/"+id+"/revoke", admin, url.Values{"csrf": {csrf}, "confirm": {"yes"}})
	if code != http.StatusSeeOther || loc != "/tokens?revoked="+id {
		t.Fatalf("revoke: %d → %q", code, loc)
	}
	_, _, page = s.do(t, "GET", loc, admin, nil)
	if !strings.Contains(page, "Revoked enrollment token "+id) || !regexp.MustCompile(`<td class="token-state">revoked \d{4}-`).MatchString(page) || strings.Contains(page, `id="revoke-`+id+`"`) {
		t.Errorf("tokens page after revoking: want the notice, the token revoked, and no revoke button for it")
	}
	if _, err := agent.Enroll(context.Background(), t.TempDir(), html.UnescapeString(token[1])); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("enroll with the revoked token: %v; want a refusal saying it was revoked", err)
	}
	// Again, and with an id that names no token: refused, saying why.
	for _, tt := range []struct{ id, want string }{{id, "was revoked already"}, {"0123456789abcdef", "no enrollment token has id"}} {
		if code, _, page := s.do(t, "POST", "/tokens/"+tt.id+"/revoke", admin, url.Values{"csrf": {csrf}, "confirm": {"yes"}}); code < 400 || !strings.Contains(page, tt.want) {
			t.Errorf("revoke %s: %d; want a refusal saying %q", tt.id, code, tt.want)
		}
	}
	recs, err := s.cons.ListAudit(context.Background(), &posturev1.ListAuditRequest{Target: id})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(recs.GetRecords()); n != 2 || recs.GetRecords()[1].GetAction() != "token revoke" || recs.GetRecords()[1].GetVia() != "console" ||
		recs.GetRecords()[1].GetActor() != "first admin" || recs.GetRecords()[1].GetOutcome() != "" || recs.GetRecords()[0].GetOutcome() == "" {
		t.Errorf("audit records of token %s: %v; want the revocation by first admin in the console, then the refused second one", id, recs.GetRecords())
	}
}

// TestReceiversPage shows the outbox's receivers as stats does: a webhook
// whose URL answers nothing is failing, with its pending messages, its
// attempts and the error it met.
func TestReceiversPage(t *testing.T) {
	s := startSite(t, &collector.ConsoleConfig{})
	_, _, page := s.do(t, "GET", "/receivers", s.linkSession(t), nil)
	if !strings.Contains(page, "No receivers") {
		t.Errorf("receivers page of a collector without receivers lacks No receivers:\n%s", page)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close() // nothing answers there
	s = startSiteEvents(t, &collector.ConsoleConfig{}, nil, collector.EventsConfig{
		Webhooks: []webhook.Config{{Name: "tickets", URL: "http://" + dead + "/hooks", Secret: []byte("a secret of sixteen bytes or more")}},
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	})
	admin := s.linkSession(t)
	s.enroll(t, "laptop-1", measurer{osName: "debian", encrypted: true}, time.Hour)
	row := regexp.MustCompile(`<tr class="receiver-failing"><td class="id">webhook:tickets</td><td>webhook</td><td class="receiver-state">failing</td><td>(\d+)</td><td>0</td><td></td><td>\d{4}-[^<]+</td><td>(\d+)</td><td>([^<]+)</td>`)
	var m []string
	deadline := time.Now().Add(10 * time.Second)
	for m == nil {
		_, _, page = s.do(t, "GET", "/receivers", admin, nil)
		if m = row.FindStringSubmatch(page); m == nil && time.Now().After(deadline) {
			t.Fatalf("the receivers page does not show webhook:tickets failing with pending messages within 10s:\n%s", page)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m[1] == "0" || m[2] == "0" || !strings.Contains(html.UnescapeString(m[3]), dead) {
		t.Errorf("webhook:tickets: pending %s, attempts %s, last error %q; want messages pending, attempts counted and the error naming %s", m[1], m[2], m[3], dead)
	}
	if !strings.Contains(page, `<a href="/receivers" class="here">Receivers</a>`) {
		t.Error("the navigation does not mark the receivers page")
	}
}
