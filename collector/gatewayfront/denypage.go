package gatewayfront

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/posture-project/posture/internal/inert"
)

// Rechecker carries a device user's "Check again" to the device's agent,
// and says how far the device's reports got. The collector implements it.
type Rechecker interface {
	// RequestMeasurement asks the device's agent, over its report stream
	// on whichever collector holds it, to measure and report now. held
	// says whether this collector holds the stream.
	RequestMeasurement(ctx context.Context, deviceID string) (held bool, err error)
	// ReportSeq is the sequence number of the device's newest stored
	// report; ok is false for a device the collector does not know.
	ReportSeq(deviceID string) (seq uint64, ok bool)
	// CertCurrent says whether a certificate (serial, hex; SHA-256 of its
	// public key) is one the device holds now: its device certificate or a
	// browser certificate of one of its users.
	CertCurrent(deviceID, serial string, keySHA256 []byte) error
}

// Paths of the browser path, on the collector's HTTP front end. Gateways
// map their own prefix to PathPrefix (nginx: location /.posture/ {
// proxy_pass …/posture/; }), and the deny page names PublicPrefix.
const (
	// PathPrefix is where the collector serves Check again and its status.
	PathPrefix = "/posture/"
	// PublicPrefix is the path on the application's own origin that the
	// gateway maps to PathPrefix, which the deny page's button posts to.
	PublicPrefix = "/.posture/"
)

// Defaults of the Check again protocol.
const (
	// RecheckEvery is the least time between two Check again requests of
	// one device on one collector: a device is measured at most this
	// often on request.
	RecheckEvery = 10 * time.Second
	// recheckTokenTTL is how long a deny page's Check again button works.
	recheckTokenTTL = time.Hour
	// recheckWait is how long the page waits for the new report before it
	// says the device seems offline.
	recheckWait = 20 * time.Second
)

// wantsHTML says whether a request was made by a browser navigating: its
// Accept header names text/html (a gateway passes the browser's on).
func wantsHTML(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if strings.Contains(strings.ToLower(v), "text/html") {
			return true
		}
	}
	return false
}

// recheckToken is the Check again button's CSRF token for a device:
// base64url(expiry ‖ HMAC-SHA256(key, "recheck" 0 device 0 expiry)[:16]).
// Only the deny page shown to the device carries it, and a page of another
// origin cannot read it, so a cross-site form cannot ask for measurements.
func recheckToken(key []byte, deviceID string, expires time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(expires.Unix()))
	m := hmac.New(sha256.New, key)
	m.Write([]byte("recheck\x00" + deviceID + "\x00"))
	m.Write(b[:])
	return base64.RawURLEncoding.EncodeToString(append(b[:], m.Sum(nil)[:16]...))
}

// errBadToken is a Check again request without a valid token for the
// device that sent it.
var errBadToken = errors.New("the Check again request has no valid token for this device: reload the page and press Check again there (a page of another site cannot ask)")

// checkRecheckToken verifies a token for deviceID at now.
func checkRecheckToken(key []byte, deviceID, token string, now time.Time) error {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) != 8+16 {
		return errBadToken
	}
	expires := time.Unix(int64(binary.BigEndian.Uint64(raw[:8])), 0)
	want, _ := base64.RawURLEncoding.DecodeString(recheckToken(key, deviceID, expires))
	if subtle.ConstantTimeCompare(raw, want) != 1 {
		return errBadToken
	}
	if now.After(expires) {
		return errors.New("this deny page is more than an hour old: reload it and press Check again there")
	}
	return nil
}

// throttle remembers when each device last asked for a measurement.
type throttle struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// allow says whether deviceID may ask at now, and if not, how long to wait.
func (t *throttle) allow(deviceID string, now time.Time) (bool, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = map[string]time.Time{}
	}
	if len(t.last) > 100000 { // forget the old ones rather than grow
		for id, at := range t.last {
			if now.Sub(at) >= RecheckEvery {
				delete(t.last, id)
			}
		}
	}
	if at, ok := t.last[deviceID]; ok && now.Sub(at) < RecheckEvery {
		return false, RecheckEvery - now.Sub(at)
	}
	t.last[deviceID] = now
	return true, 0
}

// pageCheck is one failing check as the deny page shows it.
type pageCheck struct {
	Name, Outcome, Reason, Fix string
	Evidence                   string // "3 minutes ago"
	Grace                      string // "failing since …, blocks at …"
}

// pageData fills denyTemplate. Every string in it may be device text:
// html/template escapes it.
type pageData struct {
	Level, Device, Score, Assurance, State string
	Reasons                                []string
	Checks                                 []pageCheck
	ReportAge                              string
	Token                                  string
	Seq                                    uint64
	Prefix                                 string
	Nonce                                  string
	WaitSeconds                            int
}

// writeDenyPage answers a browser's denied request with a page that says
// what to fix and offers Check again.
func (f *ForwardAuth) writeDenyPage(w http.ResponseWriter, d decision) {
	resp := d.resp
	// Device text is escaped by html/template, and its control characters
	// made visible first (a page can be copied into a terminal).
	p := pageData{Level: d.level, Device: inert.String(d.deviceID), Score: d.score, Assurance: d.assurance,
		Prefix: PublicPrefix, WaitSeconds: int(recheckWait / time.Second)}
	for _, r := range d.reasons {
		p.Reasons = append(p.Reasons, inert.String(r))
	}
	if resp != nil {
		p.State = strings.ToLower(strings.TrimPrefix(resp.GetState().String(), "DEVICE_STATE_"))
		if a := resp.GetReportAge(); a != nil {
			p.ReportAge = ago(a.AsDuration())
		}
		for _, c := range resp.GetFailedChecks() {
			pc := pageCheck{Name: inert.String(c.GetName()), Outcome: strings.ToLower(strings.TrimPrefix(c.GetOutcome().String(), "OUTCOME_")),
				Reason: inert.String(c.GetReason()), Fix: inert.String(c.GetRemediation())}
			if e := c.GetEvidenceAge(); e != nil {
				pc.Evidence = ago(e.AsDuration())
			}
			if c.GetFailingSince() != nil {
				pc.Grace = "failing since " + c.GetFailingSince().AsTime().UTC().Format("2006-01-02 15:04 UTC")
				if c.GetBlocksAt() != nil {
					pc.Grace += ", blocks at " + c.GetBlocksAt().AsTime().UTC().Format("2006-01-02 15:04 UTC")
				}
			}
			p.Checks = append(p.Checks, pc)
		}
	}
	if f.rechecker != nil && f.recheckKey != nil {
		if seq, ok := f.rechecker.ReportSeq(d.deviceID); ok {
			p.Seq = seq
			p.Token = recheckToken(f.recheckKey, d.deviceID, f.now().Add(recheckTokenTTL))
		}
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	p.Nonce = base64.RawStdEncoding.EncodeToString(nonce[:])
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-"+p.Nonce+"'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(http.StatusForbidden)
	if err := denyTemplate.Execute(w, p); err != nil {
		// The header is out; the page is cut short, which the user sees.
		return
	}
}

// ago says how long ago something was, in words.
func ago(d time.Duration) string {
	switch {
	case d < 0:
		return "just now"
	case d < 2*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d seconds ago", int(d/time.Second))
	case d < 2*time.Minute:
		return "a minute ago"
	case d < time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d/time.Minute))
	case d < 2*time.Hour:
		return "an hour ago"
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%d days ago", int(d/(24*time.Hour)))
}

// ServeBrowser serves what the deny page calls under PathPrefix, with
// the gateway and the device authenticated as for /check:
//
//	POST recheck  (form: token) asks the device's agent to measure now;
//	              JSON {"asked":true,"held":…} or, without JavaScript, a
//	              page that goes back after a few seconds
//	GET  status   JSON {"seq":N}: the device's newest report, which the
//	              page compares with the one it was rendered with
func (f *ForwardAuth) ServeBrowser(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	gateway, err := f.authenticateGateway(r)
	if err != nil {
		f.refuse(w, http.StatusUnauthorized, RejectGatewayUnauthenticated, "gateway not authenticated: "+err.Error())
		return
	}
	_, cert, err := f.forwardedCert(r)
	if err != nil {
		f.refuse(w, http.StatusUnauthorized, RejectDeviceCertMissing, "no device certificate: present the device's browser certificate")
		return
	}
	deviceID, devCert, err := f.verifier.deviceCertEncoded(cert)
	if err != nil {
		f.refuse(w, http.StatusUnauthorized, RejectDeviceCertInvalid, "device certificate rejected: "+err.Error())
		return
	}
	if f.rechecker == nil || f.recheckKey == nil {
		f.refuse(w, http.StatusNotFound, RejectRecheckRefused, "Check again is not enabled on this collector")
		return
	}
	// The certificate must be one the device holds now: a replaced or
	// minted one asks nothing.
	if err := f.rechecker.CertCurrent(deviceID, devCert.serial, devCert.key); err != nil {
		f.refuse(w, http.StatusForbidden, RejectRecheckRefused, err.Error())
		return
	}
	_ = gateway
	switch strings.TrimPrefix(r.URL.Path, PathPrefix) {
	case "status":
		seq, _ := f.rechecker.ReportSeq(deviceID)
		writeJSON(w, http.StatusOK, map[string]any{"seq": strconv.FormatUint(seq, 10)})
	case "recheck":
		f.recheck(w, r, deviceID)
	default:
		reject(w, http.StatusNotFound, "no such page")
	}
}

// recheck handles a Check again press.
func (f *ForwardAuth) recheck(w http.ResponseWriter, r *http.Request, deviceID string) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		f.refuse(w, http.StatusMethodNotAllowed, RejectRecheckRefused, "Check again is a POST from the deny page")
		return
	}
	// Browsers say where a request comes from; another site's form is
	// refused before its token is looked at.
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" {
		f.refuse(w, http.StatusForbidden, RejectRecheckRefused, "Check again from another site is refused")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		f.refuse(w, http.StatusBadRequest, RejectRecheckRefused, "the Check again form cannot be read: "+err.Error())
		return
	}
	if err := checkRecheckToken(f.recheckKey, deviceID, r.PostForm.Get("token"), f.now()); err != nil {
		f.refuse(w, http.StatusForbidden, RejectRecheckRefused, err.Error())
		return
	}
	if ok, wait := f.throttle.allow(deviceID, f.now()); !ok {
		secs := int(wait/time.Second) + 1
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		f.rejections.Rejected(RejectRecheckThrottled, "Check again within "+RecheckEvery.String()+" of the last")
		if r.PostForm.Get("js") == "1" {
			writeJSON(w, http.StatusTooManyRequests, map[string]any{"asked": false, "retry_after": secs})
			return
		}
		reject(w, http.StatusTooManyRequests, fmt.Sprintf("this device was asked to measure less than %d seconds ago; wait %d seconds", int(RecheckEvery/time.Second), secs))
		return
	}
	held, err := f.rechecker.RequestMeasurement(r.Context(), deviceID)
	if err != nil {
		reject(w, http.StatusServiceUnavailable, "the collector could not pass the request on; try again in a moment")
		return
	}
	if r.PostForm.Get("js") == "1" {
		writeJSON(w, http.StatusOK, map[string]any{"asked": true, "held": held})
		return
	}
	back := returnPath(r.PostForm.Get("return"))
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.WriteHeader(http.StatusAccepted)
	askedTemplate.Execute(w, struct{ Back string }{back})
}

// returnPath accepts a path on the application's own origin to go back to;
// anything else (another origin, a scheme) goes back to "/".
func returnPath(p string) string {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.HasPrefix(p, "/\\") || len(p) > 2048 ||
		strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "/"
	}
	return p
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

var askedTemplate = template.Must(template.New("asked").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="8;url={{.Back}}">
<title>Checking your device</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto">
<h1>Checking your device</h1>
<p>Your device was asked to measure itself again. This page goes back in a few seconds; <a href="{{.Back}}">go back now</a>.</p>
</body></html>
`))

var denyTemplate = template.Must(template.New("deny").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Access denied: this device does not meet “{{.Level}}”</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; }
.check { border: 1px solid #ccc; border-left: 6px solid #c33; border-radius: 4px; padding: .6em 1em; margin: .8em 0; }
.check h2 { font-size: 1.1em; margin: 0 0 .3em 0; }
.fix { font-weight: 600; }
.meta { color: #555; font-size: .9em; }
button { font-size: 1em; padding: .5em 1.2em; }
#status { margin-top: .8em; }
</style></head>
<body>
<h1>Access denied: this device does not meet the “{{.Level}}” level</h1>
<p class="meta">Device <code id="device">{{.Device}}</code> · score {{.Score}} · identity {{.Assurance}}{{if .State}} · {{.State}}{{end}}{{if .ReportAge}} · last report {{.ReportAge}}{{end}}</p>
<ul id="reasons">{{range .Reasons}}<li>{{.}}</li>{{end}}</ul>
{{if .Checks}}<p>What to fix:</p>{{end}}
{{range .Checks}}<div class="check" data-check="{{.Name}}">
<h2>{{.Name}} ({{.Outcome}})</h2>
<p>{{.Reason}}</p>
{{if .Fix}}<p class="fix">Fix: {{.Fix}}</p>{{end}}
<p class="meta">{{if .Evidence}}Measured {{.Evidence}}.{{end}}{{if .Grace}} {{.Grace}}.{{end}}</p>
</div>{{end}}
{{if .Token}}<form id="recheck" method="post" action="{{.Prefix}}recheck">
<input type="hidden" name="token" value="{{.Token}}">
<input type="hidden" name="return" id="return" value="/">
<p>When you have fixed it, ask your device to measure again:</p>
<button type="submit" id="check-again">Check again</button>
<p id="status" role="status"></p>
</form>
<script nonce="{{.Nonce}}">
(function () {
  var form = document.getElementById('recheck');
  var status = document.getElementById('status');
  var button = document.getElementById('check-again');
  var seq = BigInt({{printf "%d" .Seq}});
  var wait = {{.WaitSeconds}};
  document.getElementById('return').value = location.pathname + location.search;
  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    button.disabled = true;
    status.textContent = 'Asking your device to measure…';
    var body = new URLSearchParams(new FormData(form));
    body.set('js', '1');
    fetch(form.action, {method: 'POST', body: body, credentials: 'same-origin'}).then(function (r) {
      return r.json().then(function (j) { return {code: r.status, body: j}; });
    }).then(function (res) {
      if (res.code === 429) {
        status.textContent = 'Your device was asked a moment ago; waiting for its report…';
      } else if (res.code !== 200) {
        throw new Error('status ' + res.code);
      } else {
        status.textContent = 'Waiting for your device’s report…';
      }
      var started = Date.now();
      var poll = function () {
        fetch('{{.Prefix}}status', {credentials: 'same-origin'}).then(function (r) { return r.json(); }).then(function (j) {
          if (BigInt(j.seq) > seq) {
            status.textContent = 'New report received; loading…';
            location.reload();
            return;
          }
          if (Date.now() - started > wait * 1000) {
            status.textContent = 'Your device did not answer within ' + wait + ' seconds: it seems to be offline, or its Posture agent is not running. Connect it to the network, make sure the agent runs, and try again.';
            button.disabled = false;
            return;
          }
          setTimeout(poll, 1000);
        }).catch(function () { setTimeout(poll, 2000); });
      };
      setTimeout(poll, 1000);
    }).catch(function (e) {
      status.textContent = 'Check again failed (' + e.message + '); reload the page and try again.';
      button.disabled = false;
    });
  });
})();
</script>{{end}}
</body></html>
`))
