package gatewayfront

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// TestDenyPageInert: device text (reasons, check reasons, fixes) with
// markup and control characters is escaped on the page, the page names
// every failing check with its fix, evidence age and grace, and carries a
// token only for a collector with Check again.
func TestDenyPageInert(t *testing.T) {
	hostile := `<script>alert(1)</script>"><img src=x onerror=alert(2)>` + "\x1b[31m"
	since := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	resp := &posturev1.CheckAccessResponse{
		State:     posturev1.DeviceState_DEVICE_STATE_ACTIVE,
		ReportAge: durationpb.New(3 * time.Minute),
		FailedChecks: []*posturev1.CheckResult{{
			Name: "disk_encryption", Outcome: posturev1.Outcome_OUTCOME_FAIL, Reason: "not encrypted: " + hostile,
			Remediation: "encrypt " + hostile, EvidenceAge: durationpb.New(3 * time.Minute),
			FailingSince: timestamppb.New(since), BlocksAt: timestamppb.New(since.Add(72 * time.Hour)),
		}},
	}
	d := newDecision(resp, "dev-1", "trusted")
	d.resp = resp
	d.reasons = []string{"trusted requires disk_encryption: " + hostile}
	f := &ForwardAuth{now: time.Now}
	w := httptest.NewRecorder()
	f.writeDenyPage(w, d)
	page := w.Body.String()
	if w.Code != 403 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("deny page: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	for _, bad := range []string{"<script>alert", "<img", "onerror=alert(2)>", "\x1b"} {
		if strings.Contains(page, bad) {
			t.Errorf("deny page carries %q unescaped", bad)
		}
	}
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "disk_encryption (fail)", "Fix: encrypt", "Measured 3 minutes ago",
		"failing since 2026-12-01 09:30 UTC, blocks at 2026-12-04 09:30 UTC", "last report 3 minutes ago", "“trusted”"} {
		if !strings.Contains(page, want) {
			t.Errorf("deny page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "Check again") {
		t.Errorf("a collector without Check again offers it:\n%s", page)
	}
}

// TestRecheckToken: a token is good for its device until it expires,
// and for no other device, key or altered text.
func TestRecheckToken(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	tok := recheckToken(key, "dev-1", now.Add(time.Hour))
	if err := checkRecheckToken(key, "dev-1", tok, now); err != nil {
		t.Fatalf("own token: %v", err)
	}
	for name, c := range map[string]struct {
		key    []byte
		device string
		token  string
		at     time.Time
	}{
		"another device": {key, "dev-2", tok, now},
		"another key":    {[]byte("another key, another collector CA"), "dev-1", tok, now},
		"expired":        {key, "dev-1", tok, now.Add(2 * time.Hour)},
		"altered":        {key, "dev-1", tok[:5] + "A" + tok[6:], now},
		"empty":          {key, "dev-1", "", now},
		"garbage":        {key, "dev-1", "%%%", now},
	} {
		if err := checkRecheckToken(c.key, c.device, c.token, c.at); err == nil {
			t.Errorf("%s: token accepted", name)
		}
	}
}

func TestReturnPath(t *testing.T) {
	for in, want := range map[string]string{
		"/app?x=1":             "/app?x=1",
		"//evil.example/":      "/",
		"/\\evil.example":      "/",
		"https://evil.example": "/",
		"javascript:alert(1)":  "/",
		"/a\nb":                "/",
		"":                     "/",
	} {
		if got := returnPath(in); got != want {
			t.Errorf("returnPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestThrottle(t *testing.T) {
	var th throttle
	now := time.Now()
	if ok, _ := th.allow("a", now); !ok {
		t.Fatal("first request refused")
	}
	if ok, wait := th.allow("a", now.Add(time.Second)); ok || wait != RecheckEvery-time.Second {
		t.Errorf("second request within %s: allowed %v, wait %s", RecheckEvery, ok, wait)
	}
	if ok, _ := th.allow("b", now.Add(time.Second)); !ok {
		t.Error("another device throttled")
	}
	if ok, _ := th.allow("a", now.Add(RecheckEvery)); !ok {
		t.Error("request after the interval refused")
	}
}
