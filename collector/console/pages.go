package console

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, http.StatusOK, "overview", view{Title: "Fleet", S: s, Nav: "fleet", Data: c.overviewOf(c.cfg.Now())})
}

func (c *Console) devices(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	lq := listQuery{Q: q.Get("q"), State: q.Get("state"), Level: q.Get("level"), Assurance: q.Get("assurance"), Failing: q.Get("failing"), After: q.Get("after")}
	c.render(w, r, http.StatusOK, "devices", view{Title: "Devices", S: s, Nav: "devices", Data: c.list(lq, c.cfg.Now())})
}

// deviceData is one device's page.
type deviceData struct {
	P         *posturev1.DevicePosture
	Serial    string // the device certificate's serial
	Key       string // the hex SHA-256 of its public key; empty until recorded
	PrevSer   string // the one its last renewal replaced
	PrevKey   string // the hex SHA-256 of that one's public key
	Chart     chartData
	Decisions []*posturev1.Decision
	Pending   bool
	Revoked   bool
}

func (c *Console) device(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	ctx := r.Context()
	p, err := c.admin(s).GetDevice(ctx, &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := deviceData{P: p, Pending: p.GetDevice().GetState() == posturev1.DeviceState_DEVICE_STATE_PENDING,
		Revoked: p.GetDevice().GetState() == posturev1.DeviceState_DEVICE_STATE_REVOKED}
	if dev, err := c.cfg.Store.Device(ctx, id); err == nil {
		// A certificate counts by its serial and its public key: show both.
		d.Serial, d.PrevSer = dev.CertSerial, dev.PrevCertSerial
		d.Key, d.PrevKey = hex.EncodeToString(dev.CertKeySHA256), hex.EncodeToString(dev.PrevCertKeySHA256)
	}
	pts, err := c.scoreHistory(ctx, id, c.cfg.Fleet.Policy())
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Chart = scoreChart(pts)
	if dec, err := c.admin(s).ListDecisions(ctx, &posturev1.ListDecisionsRequest{DeviceId: id, Limit: 20}); err == nil {
		d.Decisions = dec.GetDecisions()
	}
	v := view{Title: "Device " + shortID(id), S: s, Nav: "devices", Data: d}
	switch r.URL.Query().Get("done") {
	case "revoked":
		v.Notice = "The device is revoked: its streams are closed and every gateway denies it."
	case "approved":
		v.Notice = "The device is approved: its EK is pinned."
	case "bound":
		v.Notice = "The device is bound to its user."
	case "unbound":
		v.Notice = "The device is bound to no user."
	}
	c.render(w, r, http.StatusOK, "device", v)
}

// confirmData is a page that asks before an action.
type confirmData struct {
	Action   string // the form's URL
	Question string
	Detail   string
	Button   string
	Cancel   string // where Cancel goes
	Fields   map[string]string
}

// confirmed says whether the form was sent from a confirmation page; if
// not, it shows one that sends the same fields again with confirm=yes.
func (c *Console) confirmed(w http.ResponseWriter, r *http.Request, s *session, d confirmData) bool {
	if r.PostForm.Get("confirm") == "yes" {
		return true
	}
	d.Fields = map[string]string{}
	for k := range r.PostForm {
		if k != "csrf" && k != "confirm" {
			d.Fields[k] = r.PostForm.Get(k)
		}
	}
	c.render(w, r, http.StatusOK, "confirm", view{Title: "Confirm", S: s, Data: d})
	return false
}

func (c *Console) revokeDevice(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Revoke device " + id + "?",
		Detail: "Reason: " + reason + ". Revocation is final: the device's streams close, its reports are refused and every gateway denies it.",
		Button: "Revoke", Cancel: "/devices/" + id}) {
		return
	}
	if _, err := c.admin(s).RevokeDevice(r.Context(), &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: reason}); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/devices/"+pathEscape(id)+"?done=revoked", http.StatusSeeOther)
}

func (c *Console) approveDevice(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Approve device " + id + "?",
		Detail: "Its TPM's endorsement key is pinned: the device becomes active with tpm_ek_pinned assurance.", Button: "Approve", Cancel: "/devices/" + id}) {
		return
	}
	if _, err := c.admin(s).ApproveDevice(r.Context(), &posturev1.ApproveDeviceRequest{DeviceId: id}); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/devices/"+pathEscape(id)+"?done=approved", http.StatusSeeOther)
}

func (c *Console) bindDevice(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	u := &posturev1.DeviceUser{Email: strings.TrimSpace(r.PostForm.Get("email")), Issuer: strings.TrimSpace(r.PostForm.Get("issuer")),
		Subject: strings.TrimSpace(r.PostForm.Get("subject"))}
	who := u.GetEmail()
	if u.GetIssuer() != "" {
		who += " (" + u.GetSubject() + " at " + u.GetIssuer() + ")"
	}
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Bind device " + id + " to " + who + "?",
		Detail: "Shared Signals receivers are told of this device's changes as this user's, in place of any user bound before.",
		Button: "Bind", Cancel: "/devices/" + id}) {
		return
	}
	if _, err := c.admin(s).BindDeviceUser(r.Context(), &posturev1.BindDeviceUserRequest{DeviceId: id, User: u}); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/devices/"+pathEscape(id)+"?done=bound", http.StatusSeeOther)
}

func (c *Console) unbindDevice(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Unbind device " + id + " from its user?",
		Detail: "Shared Signals receivers are no longer told of this device's changes as anyone's.", Button: "Unbind", Cancel: "/devices/" + id}) {
		return
	}
	if _, err := c.admin(s).UnbindDeviceUser(r.Context(), &posturev1.UnbindDeviceUserRequest{DeviceId: id}); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/devices/"+pathEscape(id)+"?done=unbound", http.StatusSeeOther)
}

// decisionsData is the decisions page: "why was this device denied at
// 10:42?" is device=ID&at=10:42.
type decisionsData struct {
	Device, At, Since string
	Decisions         []*posturev1.Decision
	Retained          uint32
}

func (c *Console) decisions(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := decisionsData{Device: q.Get("device"), At: q.Get("at"), Since: q.Get("since")}
	if d.Since == "" {
		d.Since = "1h"
	}
	v := view{Title: "Decisions", S: s, Nav: "decisions", Data: &d}
	since, err := time.ParseDuration(d.Since)
	if err != nil || since <= 0 {
		v.Problem = fmt.Sprintf("since %q: give a duration such as 1h or 30m", d.Since)
		c.render(w, r, http.StatusBadRequest, "decisions", v)
		return
	}
	end := c.cfg.Now()
	req := &posturev1.ListDecisionsRequest{DeviceId: d.Device, Limit: 500}
	if d.At != "" {
		if end, err = parseAt(d.At, end); err != nil {
			v.Problem = err.Error()
			c.render(w, r, http.StatusBadRequest, "decisions", v)
			return
		}
		req.Until = timestamppb.New(end)
	}
	req.Since = timestamppb.New(end.Add(-since))
	resp, err := c.admin(s).ListDecisions(r.Context(), req)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Decisions, d.Retained = resp.GetDecisions(), resp.GetRetained()
	c.render(w, r, http.StatusOK, "decisions", v)
}

// parseAt reads a time as posture-collector decisions --at does: a time
// of day today (local), a local date and time, or RFC 3339.
func parseAt(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02T15:04:05"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	for _, layout := range []string{"15:04:05", "15:04"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			y, m, d := now.In(time.Local).Date()
			return time.Date(y, m, d, t.Hour(), t.Minute(), t.Second(), 0, time.Local), nil
		}
	}
	return time.Time{}, fmt.Errorf("at %q: give 10:42, 10:42:05, 2026-11-27 10:42 or RFC 3339", v)
}

// policyData is the policy page.
type policyData struct {
	P         *policy.Policy
	Candidate string
	Diff      *posturev1.DiffPolicyResponse
}

func (c *Console) policy(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, http.StatusOK, "policy", view{Title: "Policy", S: s, Nav: "policy", Data: policyData{P: c.cfg.Fleet.Policy()}})
}

func (c *Console) policyDiff(w http.ResponseWriter, r *http.Request, s *session) {
	d := policyData{P: c.cfg.Fleet.Policy(), Candidate: r.PostForm.Get("candidate")}
	v := view{Title: "Policy", S: s, Nav: "policy", Data: &d}
	resp, err := c.admin(s).DiffPolicy(r.Context(), &posturev1.DiffPolicyRequest{PolicyYaml: []byte(d.Candidate), Limit: 1000})
	if err != nil {
		v.Problem = errorMessage(err)
		c.render(w, r, http.StatusBadRequest, "policy", v)
		return
	}
	d.Diff = resp
	c.render(w, r, http.StatusOK, "policy", v)
}

func (c *Console) policyReload(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Reload the policy file?",
		Detail: "This collector reads its --policy file again and puts it in force; a file that does not validate changes nothing. Collectors sharing the database reload their own files.",
		Button: "Reload", Cancel: "/policy"}) {
		return
	}
	v := view{Title: "Policy", S: s, Nav: "policy"}
	resp, err := c.admin(s).ReloadPolicy(r.Context(), &posturev1.ReloadPolicyRequest{})
	if err != nil {
		v.Problem = errorMessage(err)
	} else {
		v.Notice = fmt.Sprintf("Policy reloaded: %d checks, levels %s.", resp.GetChecks(), strings.Join(resp.GetLevels(), ", "))
	}
	v.Data = policyData{P: c.cfg.Fleet.Policy()}
	c.render(w, r, http.StatusOK, "policy", v)
}

func (c *Console) gateways(w http.ResponseWriter, r *http.Request, s *session) {
	resp, err := c.admin(s).ListGateways(r.Context(), &posturev1.ListGatewaysRequest{})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	v := view{Title: "Gateways", S: s, Nav: "gateways", Data: resp.GetGateways()}
	if n := r.URL.Query().Get("revoked"); n != "" {
		v.Notice = "Revoked " + n + " certificate(s): their next call is refused, and their open watches end."
	}
	c.render(w, r, http.StatusOK, "gateways", v)
}

// receivers shows how delivery to each receiver of the outbox goes, as
// posture-collector stats does.
func (c *Console) receivers(w http.ResponseWriter, r *http.Request, s *session) {
	resp, err := c.admin(s).GetStats(r.Context(), &posturev1.GetStatsRequest{})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, http.StatusOK, "receivers", view{Title: "Receivers", S: s, Nav: "receivers", Data: resp.GetReceivers()})
}

func (c *Console) revokeGateway(w http.ResponseWriter, r *http.Request, s *session) {
	name, serial, reason := r.PostForm.Get("name"), r.PostForm.Get("serial"), strings.TrimSpace(r.PostForm.Get("reason"))
	what := "every certificate of gateway " + name
	if serial != "" {
		what = "the gateway certificate with serial " + serial
	}
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Revoke " + what + "?", Detail: "Reason: " + reason + ".", Button: "Revoke", Cancel: "/gateways"}) {
		return
	}
	resp, err := c.admin(s).RevokeGateway(r.Context(), &posturev1.RevokeGatewayRequest{Name: name, Serial: serial, Reason: reason})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/gateways?revoked="+strconv.Itoa(int(resp.GetRevoked())), http.StatusSeeOther)
}

// tokenData is the tokens page; Token is set once, right after creation.
// Tokens are listed to admins only, as the API lists them.
type tokenData struct {
	Token   string
	Expires *timestamppb.Timestamp
	Uses    uint32
	Tokens  []*posturev1.EnrollmentToken
}

// tokenList is the tokens an admin sees on the tokens page; a viewer sees
// none (the API would refuse them).
func (c *Console) tokenList(r *http.Request, s *session, v *view) []*posturev1.EnrollmentToken {
	if !s.Admin() {
		return nil
	}
	resp, err := c.admin(s).ListEnrollmentTokens(r.Context(), &posturev1.ListEnrollmentTokensRequest{})
	if err != nil {
		v.Problem = errorMessage(err)
		return nil
	}
	return resp.GetTokens()
}

func (c *Console) tokens(w http.ResponseWriter, r *http.Request, s *session) {
	v := view{Title: "Enrollment tokens", S: s, Nav: "tokens"}
	if id := r.URL.Query().Get("revoked"); id != "" {
		v.Notice = "Revoked enrollment token " + id + ": no device enrolls with it any more. Devices it enrolled stay enrolled."
	}
	v.Data = tokenData{Tokens: c.tokenList(r, s, &v)}
	c.render(w, r, http.StatusOK, "tokens", v)
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !c.confirmed(w, r, s, confirmData{Action: r.URL.Path, Question: "Revoke enrollment token " + id + "?",
		Detail: "No device can enroll with it from then on; devices it enrolled stay enrolled. Revocation is final.", Button: "Revoke", Cancel: "/tokens"}) {
		return
	}
	resp, err := c.admin(s).RevokeEnrollmentToken(r.Context(), &posturev1.RevokeEnrollmentTokenRequest{Id: id})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/tokens?revoked="+url.QueryEscape(resp.GetToken().GetId()), http.StatusSeeOther)
}

func (c *Console) createToken(w http.ResponseWriter, r *http.Request, s *session) {
	v := view{Title: "Enrollment tokens", S: s, Nav: "tokens"}
	// Whatever the outcome, the page lists the tokens as they are now.
	show := func(code int, d tokenData) {
		d.Tokens = c.tokenList(r, s, &v)
		v.Data = d
		c.render(w, r, code, "tokens", v)
	}
	ttl, err := time.ParseDuration(r.PostForm.Get("ttl"))
	if err != nil {
		v.Problem = "ttl: give a duration such as 1h or 30m"
		show(http.StatusBadRequest, tokenData{})
		return
	}
	uses, err := strconv.ParseUint(r.PostForm.Get("uses"), 10, 32)
	if err != nil {
		v.Problem = "uses: give a whole number, 1 or more"
		show(http.StatusBadRequest, tokenData{})
		return
	}
	resp, err := c.admin(s).CreateEnrollmentToken(r.Context(), &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(ttl), Uses: uint32(uses), Description: r.PostForm.Get("description")})
	if err != nil {
		v.Problem = errorMessage(err)
		show(http.StatusBadRequest, tokenData{})
		return
	}
	// Shown once: the collector keeps only its hash, and the page is not
	// cached (Cache-Control: no-store).
	show(http.StatusOK, tokenData{Token: resp.GetToken(), Expires: resp.GetExpiresAt(), Uses: resp.GetUses()})
}

// auditData is the audit log page.
type auditData struct {
	Actor, Target string
	Records       []*posturev1.AuditRecord
	Next          uint64 // the before= of the next page; 0 on the last
}

// auditPage is how many audit records a page shows.
const auditPage = 100

func (c *Console) audit(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	before, _ := strconv.ParseUint(q.Get("before"), 10, 64)
	d := auditData{Actor: q.Get("actor"), Target: q.Get("target")}
	resp, err := c.consoleAPI(s).ListAudit(r.Context(), &posturev1.ListAuditRequest{Limit: auditPage, Before: before, Actor: d.Actor, Target: d.Target})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Records = resp.GetRecords()
	if len(d.Records) == auditPage {
		d.Next = d.Records[len(d.Records)-1].GetId()
	}
	c.render(w, r, http.StatusOK, "audit", view{Title: "Audit log", S: s, Nav: "audit", Data: d})
}
