package console

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/inert"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// view is what every page is rendered from.
type view struct {
	Title string
	S     *session // nil on the sign-in pages
	Nav   string   // the menu entry to mark
	// Notice and Problem are a line above the page: what an action did,
	// or why it was refused.
	Notice, Problem string
	Data            any
}

// pages holds one template set per page, each with the layout.
type pages struct {
	byName map[string]*template.Template
}

// funcs are the helpers templates use. Every text that may come from a
// device, a request or a person goes through inert (html/template then
// escapes it): control characters, bidirectional overrides and bytes that
// are not UTF-8 show as escapes, so a hostname can neither hide nor
// reorder what the page says.
var funcs = template.FuncMap{
	"inert": func(s string) string { return inert.String(s) },
	"inerts": func(ss []string) string {
		out := make([]string, len(ss))
		for i, s := range ss {
			out[i] = inert.String(s)
		}
		return strings.Join(out, ", ")
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"ts": func(t *timestamppb.Timestamp) string {
		if t == nil {
			return "never"
		}
		return t.AsTime().Local().Format("2006-01-02 15:04:05")
	},
	"age":      age,
	"dur":      func(d *durationpb.Duration) string { return durationText(d.AsDuration()) },
	"state":    stateName,
	"outcome":  outcomeName,
	"assured":  func(a posturev1.IdentityAssurance) string { return policy.AssuranceName(a) },
	"short":    func(id string) string { return inert.String(shortID(id)) },
	"duration": durationText,
	"list":     func(s ...string) []string { return s },
	"enforce":  enforceName,
	"change":   levelChange,
	"grace":    graceText,
	"tokenstate": func(s posturev1.EnrollmentTokenState) string {
		return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "ENROLLMENT_TOKEN_STATE_")), "_", " ")
	},
	"outcomeish": func(s posturev1.Status) string {
		return strings.ToLower(strings.TrimPrefix(s.String(), "STATUS_"))
	},
}

// enforceName names a level's enforcement as the policy file does.
func enforceName(e posturev1.Enforcement) string {
	switch e {
	case posturev1.Enforcement_ENFORCEMENT_WARN:
		return "warn"
	case posturev1.Enforcement_ENFORCEMENT_OFF:
		return "off"
	}
	return "block"
}

// levelChange says what a policy diff's change does to a device at a
// level: it gains or loses access, or, at a level in warn or off mode,
// keeps access but starts or stops meeting the level.
func levelChange(ch *posturev1.LevelChange) string {
	mode := enforceName(ch.GetEnforcementCandidate())
	switch {
	case ch.GetAllowedCandidate() && !ch.GetAllowedNow():
		if !ch.GetMetCandidate() {
			return "gains (" + mode + ": not met)"
		}
		return "gains"
	case !ch.GetAllowedCandidate() && ch.GetAllowedNow():
		return "loses"
	case ch.GetMetNow() && !ch.GetMetCandidate():
		return "no longer meets (" + mode + ": still allowed)"
	case !ch.GetMetNow() && ch.GetMetCandidate():
		return "meets (" + mode + ")"
	}
	return "mode " + enforceName(ch.GetEnforcementNow()) + " → " + mode
}

// graceText is what a failing check's failing-since time and grace add
// to its row: since when it fails, and when its grace ends or ended.
func graceText(c *posturev1.CheckResult) string {
	if c.GetFailingSince() == nil {
		return ""
	}
	const stamp = "2006-01-02 15:04:05"
	s := "since " + c.GetFailingSince().AsTime().Local().Format(stamp)
	switch b := c.GetBlocksAt(); {
	case b == nil:
	case c.GetInGrace():
		s += "; in grace, blocks at " + b.AsTime().Local().Format(stamp)
	default:
		s += "; grace ended " + b.AsTime().Local().Format(stamp)
	}
	return s
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

func stateName(s posturev1.DeviceState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "DEVICE_STATE_"))
}

func outcomeName(o posturev1.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))
}

// durationText is a duration as people read it: 3s, 5m, 2h10m, 3d4h.
func durationText(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

func age(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return durationText(time.Since(t)) + " ago"
}

func parsePages() (*pages, error) {
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	p := &pages{byName: map[string]*template.Template{}}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(assets, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		p.byName[name] = t
	}
	return p, nil
}

// render writes a page. It renders into memory first, so that a template
// error is a clean 500 rather than half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, page string, v view) {
	t, ok := c.pages.byName[page]
	if !ok {
		http.Error(w, "no such page", http.StatusInternalServerError)
		return
	}
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, "layout", v); err != nil {
		c.log.Error("console: render", "page", page, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(b.Bytes())
}

// fail answers a request whose action or read failed: an API refusal with
// its message and the matching status, anything else as a server error.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	code := http.StatusInternalServerError
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
		switch st.Code() {
		case codes.InvalidArgument, codes.FailedPrecondition:
			code = http.StatusBadRequest
		case codes.NotFound:
			code = http.StatusNotFound
		case codes.PermissionDenied:
			code = http.StatusForbidden
		case codes.Unauthenticated:
			code = http.StatusUnauthorized
		}
	}
	if code == http.StatusInternalServerError {
		c.log.Error("console: request failed", "path", r.URL.Path, "err", err)
	}
	c.render(w, r, code, "message", view{Title: "Refused", S: s, Problem: msg})
}

// errorMessage is what a person is told of a refusal: the API's message.
func errorMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

func pathEscape(s string) string { return url.PathEscape(s) }
