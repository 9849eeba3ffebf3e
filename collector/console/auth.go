package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/posture-project/posture/collector/api"
	"github.com/posture-project/posture/collector/store"
)

// Cookies. The __Host- prefix makes browsers refuse them unless they are
// Secure, for the whole origin (Path=/) and not for a wider domain, so
// that no other host of the company's domain can plant or read them.
const (
	// sessionCookie holds the session's secret; the database holds its
	// SHA-256 only. SameSite=Strict: another site cannot make a browser
	// send it.
	sessionCookie = "__Host-posture-console"
	// signinCookie holds the state, nonce and PKCE verifier of a sign-in
	// under way with the identity provider. SameSite=Lax, since the
	// provider's redirect back is a navigation from another site.
	signinCookie = "__Host-posture-signin"
	callbackPath = "/auth/callback"
	// signinWindow is how long a sign-in with the provider may take.
	signinWindow = 10 * time.Minute
)

// session is the session of a request's person.
type session struct {
	store.Session
	secret []byte
	// CSRF is the token every form of this session carries: an HMAC of
	// the session's secret, so it is known only to pages of this session
	// and needs no storage.
	CSRF string
	// from is where this request came from (the TCP peer).
	from string
}

// Admin says whether the session's person may act, not only read.
func (s *session) Admin() bool { return s.Role == api.RoleAdmin }

func (s *session) actor() api.Actor { return api.Actor{Name: s.Name, Role: s.Role, From: s.from} }

func csrfToken(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("posture console csrf"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func newSecret() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return b
}

func hashOf(secret []byte) []byte {
	h := sha256.Sum256(secret)
	return h[:]
}

// peer is the address a request came from, for the audit log: the TCP
// peer (a proxy in front of the console is that proxy).
func peer(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// sessionOf finds the request's session: its cookie's secret must hash to
// a session in the database that has not expired. A cookie of another
// collector's database names no session here.
func (c *Console) sessionOf(r *http.Request) (*session, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, errSignInFirst
	}
	secret, err := base64.RawURLEncoding.DecodeString(ck.Value)
	if err != nil || len(secret) != 32 {
		return nil, errSignInFirst
	}
	st, err := c.cfg.Store.Session(r.Context(), hashOf(secret), c.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, errSignInFirst
	case err != nil:
		return nil, err
	}
	return &session{Session: st, secret: secret, CSRF: csrfToken(secret), from: peer(r)}, nil
}

// maxForm bounds what a form may send: a candidate policy file is the
// largest, a few KiB.
const maxForm = 1 << 20

// withSession serves h to requests with a session; a POST must also carry
// the session's CSRF token. A page asked for without a session sends the
// browser to sign in; anything else is refused.
func (c *Console) withSession(h func(w http.ResponseWriter, r *http.Request, s *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := c.sessionOf(r)
		switch {
		case errors.Is(err, errSignInFirst) && r.Method == http.MethodGet:
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		case errors.Is(err, errSignInFirst):
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		case err != nil:
			c.log.Error("console: read session", "err", err)
			http.Error(w, "cannot read sessions from the database; try again shortly", http.StatusServiceUnavailable)
			return
		}
		if r.Method != http.MethodGet {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if err := r.ParseForm(); err != nil {
				http.Error(w, "unreadable form: "+err.Error(), http.StatusBadRequest)
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.CSRF)) != 1 {
				http.Error(w, "this form's CSRF token does not belong to your session: reload the page and try again", http.StatusForbidden)
				return
			}
		}
		h(w, r, s)
	})
}

// openSession stores a new session for a person and hands its cookie to
// the browser.
func (c *Console) openSession(w http.ResponseWriter, r *http.Request, subject, name, role, how string) error {
	secret := newSecret()
	now := c.cfg.Now()
	st := store.Session{Hash: hashOf(secret), Subject: subject, Name: name, Role: role, From: peer(r), CreatedAt: now, ExpiresAt: now.Add(c.cfg.SessionTTL)}
	if err := c.cfg.Store.CreateSession(r.Context(), st); err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: base64.RawURLEncoding.EncodeToString(secret), Path: "/",
		Expires: st.ExpiresAt, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	c.cfg.API.Audit(r.Context(), store.AuditRecord{At: now, Actor: name, Role: role, Via: "console", From: peer(r), Action: "console sign-in", Detail: how})
	return nil
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.cfg.Store.DeleteSession(r.Context(), s.Hash); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	c.cfg.API.Audit(r.Context(), store.AuditRecord{At: c.cfg.Now(), Actor: s.Name, Role: s.Role, Via: "console", From: peer(r), Action: "console sign-out"})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// SignInLink makes a one-time link that opens an admin session named
// name, for ttl; by names who asked (api.Config.SignInLinks).
func (c *Console) SignInLink(ctx context.Context, name string, ttl time.Duration, by string) (string, time.Time, error) {
	secret := newSecret()
	now := c.cfg.Now()
	l := store.SignInLink{Hash: hashOf(secret), Name: name, Role: api.RoleAdmin, CreatedBy: by, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := c.cfg.Store.CreateSignInLink(ctx, l); err != nil {
		return "", time.Time{}, err
	}
	return c.base.String() + "/signin/link?t=" + base64.RawURLEncoding.EncodeToString(secret), l.ExpiresAt, nil
}

// linkPage shows a sign-in link's button. Opening the link uses nothing:
// a mail scanner or a chat's preview that fetches it does not spend it.
func (c *Console) linkPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "link", view{Title: "Sign in", Data: r.URL.Query().Get("t")})
}

func (c *Console) linkSignIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	secret, err := base64.RawURLEncoding.DecodeString(r.PostFormValue("t"))
	if err != nil || len(secret) != 32 {
		c.render(w, r, http.StatusForbidden, "login", c.loginView("This is not a sign-in link: ask for a new one with posture-collector console login."))
		return
	}
	l, err := c.cfg.Store.UseSignInLink(r.Context(), hashOf(secret), c.cfg.Now())
	msg := ""
	switch {
	case errors.Is(err, store.ErrNotFound):
		msg = "This sign-in link is not known here: ask for a new one with posture-collector console login on a collector sharing this one's database."
	case errors.Is(err, store.ErrLinkUsed):
		msg = "This sign-in link was used already: a link opens one session. Ask for a new one with posture-collector console login."
	case errors.Is(err, store.ErrTokenExpired):
		msg = "This sign-in link expired: ask for a new one with posture-collector console login."
	case err != nil:
		c.log.Error("console: use sign-in link", "err", err)
		msg = "The sign-in link could not be checked: the database did not answer. Try again shortly."
	}
	if msg != "" {
		// Logged, not audited: whoever sent it is nobody the collector
		// knows, and anyone may send a made-up link.
		c.log.Warn("console: sign-in link refused", "peer", peer(r), "err", err)
		c.render(w, r, http.StatusForbidden, "login", c.loginView(msg))
		return
	}
	subject := "link:" + hex.EncodeToString(l.Hash[:8])
	if err := c.openSession(w, r, subject, l.Name, l.Role, "sign-in link made by "+l.CreatedBy); err != nil {
		c.fail(w, r, nil, err)
		return
	}
	// A same-site navigation: the new SameSite=Strict cookie goes with it.
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// loginView is the sign-in page's data.
type loginData struct {
	OIDC    bool
	Message string
}

func (c *Console) loginView(msg string) view {
	return view{Title: "Sign in", Data: loginData{OIDC: c.oidc != nil, Message: msg}}
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if s, err := c.sessionOf(r); err == nil && s != nil {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.render(w, r, http.StatusOK, "login", c.loginView(""))
}

// OIDC configures sign-in with an OpenID Connect provider.
type OIDC struct {
	// Issuer is the provider's issuer URL (its discovery document is at
	// Issuer/.well-known/openid-configuration).
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes are asked for besides openid; nil means email and profile.
	// Some providers put groups in the ID token only when asked (Okta:
	// groups).
	Scopes []string
	// RoleClaim names the ID token claim that holds a person's roles or
	// groups: a string or a list of strings, found by a dotted path
	// (Keycloak's realm_access.roles); "" means groups.
	RoleClaim string
	// AdminValues are the claim's values that make an admin; ViewerValues
	// those that make a viewer. Without ViewerValues every person the
	// provider signs in who is not an admin is a viewer (the provider's
	// assignment of the application decides who may sign in at all).
	AdminValues, ViewerValues []string
	// HTTPClient reaches the provider; nil means http.DefaultClient.
	HTTPClient *http.Client
}

// oidcClient signs people in with the provider. The provider's discovery
// document is read on first use, and again after a failure, so that a
// collector starts while the provider is unreachable (sign-in links still
// work).
type oidcClient struct {
	cfg      OIDC
	redirect string

	mu       sync.Mutex
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newOIDCClient(cfg OIDC, redirect string) (*oidcClient, error) {
	switch {
	case cfg.Issuer == "":
		return nil, errors.New("OpenID Connect: the issuer URL is required (--console-oidc-issuer)")
	case cfg.ClientID == "":
		return nil, errors.New("OpenID Connect: the client ID is required (--console-oidc-client-id)")
	case len(cfg.AdminValues) == 0:
		return nil, errors.New("OpenID Connect: name the claim values that make an admin (--console-admin-values), or nobody could act")
	}
	if cfg.RoleClaim == "" {
		cfg.RoleClaim = "groups"
	}
	if cfg.Scopes == nil {
		cfg.Scopes = []string{"email", "profile"}
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	return &oidcClient{cfg: cfg, redirect: redirect}, nil
}

func (o *oidcClient) ctx(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, o.cfg.HTTPClient)
}

func (o *oidcClient) discover(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.oauth != nil {
		return o.oauth, o.verifier, nil
	}
	p, err := oidc.NewProvider(o.ctx(ctx), o.cfg.Issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("read the identity provider's discovery document at %s: %w", o.cfg.Issuer, err)
	}
	o.oauth = &oauth2.Config{ClientID: o.cfg.ClientID, ClientSecret: o.cfg.ClientSecret, Endpoint: p.Endpoint(), RedirectURL: o.redirect,
		Scopes: append([]string{oidc.ScopeOpenID}, o.cfg.Scopes...)}
	o.verifier = p.Verifier(&oidc.Config{ClientID: o.cfg.ClientID})
	return o.oauth, o.verifier, nil
}

// signin is what the sign-in cookie holds.
type signin struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
}

func (c *Console) oidcStart(w http.ResponseWriter, r *http.Request) {
	if c.oidc == nil {
		c.render(w, r, http.StatusNotFound, "login", c.loginView("This console has no identity provider configured: sign in with a link from posture-collector console login."))
		return
	}
	oc, _, err := c.oidc.discover(r.Context())
	if err != nil {
		c.log.Error("console: identity provider", "err", err)
		c.render(w, r, http.StatusBadGateway, "login", c.loginView("The identity provider did not answer: try again shortly, or sign in with a link from posture-collector console login."))
		return
	}
	si := signin{State: base64.RawURLEncoding.EncodeToString(newSecret()), Nonce: base64.RawURLEncoding.EncodeToString(newSecret()), Verifier: oauth2.GenerateVerifier()}
	b, _ := json.Marshal(si)
	http.SetCookie(w, &http.Cookie{Name: signinCookie, Value: base64.RawURLEncoding.EncodeToString(b), Path: "/", MaxAge: int(signinWindow / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, oc.AuthCodeURL(si.State, oidc.Nonce(si.Nonce), oauth2.S256ChallengeOption(si.Verifier)), http.StatusSeeOther)
}

func (c *Console) oidcCallback(w http.ResponseWriter, r *http.Request) {
	// A refusal before the provider vouched for someone is logged; one of
	// a person the provider signed in (who holds no role) is audited too.
	// Anyone may send a made-up answer: it must not write to the database.
	refuse := func(status int, msg, who string) {
		if who != "" {
			c.cfg.API.Audit(r.Context(), store.AuditRecord{At: c.cfg.Now(), Actor: who, Via: "console", From: peer(r), Action: "console sign-in", Detail: "OpenID Connect", Outcome: msg})
		} else {
			c.log.Warn("console: sign-in refused", "peer", peer(r), "reason", msg)
		}
		c.render(w, r, status, "login", c.loginView(msg))
	}
	if c.oidc == nil {
		c.render(w, r, http.StatusNotFound, "login", c.loginView("This console has no identity provider configured."))
		return
	}
	ck, err := r.Cookie(signinCookie)
	var si signin
	if err == nil {
		var b []byte
		if b, err = base64.RawURLEncoding.DecodeString(ck.Value); err == nil {
			err = json.Unmarshal(b, &si)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: signinCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	q := r.URL.Query()
	switch {
	case err != nil || si.State == "":
		c.render(w, r, http.StatusBadRequest, "login", c.loginView("The sign-in took too long or began in another browser: sign in again."))
		return
	case subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(si.State)) != 1:
		refuse(http.StatusBadRequest, "the identity provider's answer does not belong to this sign-in (state): sign in again", "")
		return
	case q.Get("error") != "":
		refuse(http.StatusForbidden, "the identity provider refused: "+q.Get("error")+" "+q.Get("error_description"), "")
		return
	}
	oc, verifier, err := c.oidc.discover(r.Context())
	if err != nil {
		c.log.Error("console: identity provider", "err", err)
		c.render(w, r, http.StatusBadGateway, "login", c.loginView("The identity provider did not answer: try again shortly."))
		return
	}
	ctx := c.oidc.ctx(r.Context())
	tok, err := oc.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(si.Verifier))
	if err != nil {
		c.log.Warn("console: sign-in code exchange", "err", err)
		refuse(http.StatusForbidden, "the identity provider did not exchange the sign-in code: sign in again", "")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := verifier.Verify(ctx, raw)
	if err != nil {
		c.log.Warn("console: ID token refused", "err", err)
		refuse(http.StatusForbidden, "the identity provider's ID token did not verify: "+err.Error(), "")
		return
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(si.Nonce)) != 1 {
		refuse(http.StatusForbidden, "the ID token was not issued for this sign-in (nonce): sign in again", "")
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		refuse(http.StatusForbidden, "the ID token's claims do not decode: "+err.Error(), "")
		return
	}
	name := personName(claims, idt.Subject)
	role := c.oidc.role(claims)
	if role == "" {
		refuse(http.StatusForbidden, fmt.Sprintf("%s has no role in this console: the identity provider's %q claim names none of the admin or viewer values; ask an admin to add you", name, c.oidc.cfg.RoleClaim), name)
		return
	}
	if err := c.openSession(w, r, idt.Issuer+"#"+idt.Subject, name, role, "OpenID Connect, "+idt.Issuer); err != nil {
		c.fail(w, r, nil, err)
		return
	}
	// The provider's redirect is a navigation from another site, which
	// would carry no SameSite=Strict cookie even once set; this page's own
	// navigation to the console is same-site and carries it.
	c.render(w, r, http.StatusOK, "signedin", view{Title: "Signed in", Data: name})
}

// personName is how the console names a person: their email address, or
// user name, or name, or the provider's subject.
func personName(claims map[string]any, sub string) string {
	for _, k := range []string{"email", "preferred_username", "name"} {
		if v, ok := claims[k].(string); ok && v != "" {
			return v
		}
	}
	return sub
}

// role is the role the claims give: admin if any value of the role claim
// is an admin value, else viewer if any is a viewer value (or every
// person is a viewer), else none.
func (o *oidcClient) role(claims map[string]any) string {
	var v any = claims
	for _, k := range strings.Split(o.cfg.RoleClaim, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			v = nil
			break
		}
		v = m[k]
	}
	var values []string
	switch x := v.(type) {
	case string:
		values = []string{x}
	case []any:
		for _, e := range x {
			if s, ok := e.(string); ok {
				values = append(values, s)
			}
		}
	}
	for _, val := range values {
		if slices.Contains(o.cfg.AdminValues, val) {
			return api.RoleAdmin
		}
	}
	if len(o.cfg.ViewerValues) == 0 {
		return api.RoleViewer
	}
	for _, val := range values {
		if slices.Contains(o.cfg.ViewerValues, val) {
			return api.RoleViewer
		}
	}
	return ""
}
