// Package console is the collector's web console for admins: the fleet at
// a glance, devices and their history, decisions, the policy, gateways,
// tokens and the audit log, served as HTML rendered on the server.
//
// People sign in with the company's identity provider (OpenID Connect),
// which names their role, viewer or admin, in a claim; or, for the first
// admin, with a one-time link from posture-collector console login.
// Sessions are kept in the database (so every collector sharing it knows
// them, and a sign-out ends a session on all of them); the browser holds
// the session's secret in a cookie that is HttpOnly, Secure and
// SameSite=Strict. Every action is a POST carrying a token bound to the
// session (CSRF), from the console's own origin.
//
// The console acts only through the collector's admin API in process
// (api.Server.InProcess): what a person may do, and what is recorded in
// the audit log, is decided by the same code as for the admin socket.
// Lists of devices and the fleet overview are read from the collector's
// memory (fleet.Rows); a device's history from the database.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/posture-project/posture/collector/api"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Store is what the console keeps in and reads from the database.
type Store interface {
	CreateSession(ctx context.Context, s store.Session) error
	Session(ctx context.Context, hash []byte, now time.Time) (store.Session, error)
	DeleteSession(ctx context.Context, hash []byte) error
	CreateSignInLink(ctx context.Context, l store.SignInLink) error
	UseSignInLink(ctx context.Context, hash []byte, now time.Time) (store.SignInLink, error)
	SampleReports(ctx context.Context, deviceID string, n int) ([]store.Report, error)
	Device(ctx context.Context, id string) (store.Device, error)
}

// API is the collector's admin API, which the console acts through
// (api.Server).
type API interface {
	// InProcess is a connection to the admin services as a person.
	InProcess(a api.Actor) grpc.ClientConnInterface
	// Audit records a sign-in or a sign-out.
	Audit(ctx context.Context, rec store.AuditRecord)
}

// Config configures a Console.
type Config struct {
	// URL is where browsers reach the console: https://host[:port],
	// without a path. Sign-in links and the identity provider's redirect
	// URI (URL + /auth/callback) are made from it.
	URL   string
	API   API
	Store Store
	Fleet *fleet.Fleet
	// OIDC, when set, signs people in with an OpenID Connect provider;
	// without it only sign-in links open sessions.
	OIDC *OIDC
	// SessionTTL is how long a session lasts from sign-in; 0 means
	// DefaultSessionTTL.
	SessionTTL time.Duration
	Logger     *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultSessionTTL is how long a console session lasts: a working day.
const DefaultSessionTTL = 8 * time.Hour

// Console serves the admin console.
type Console struct {
	cfg     Config
	log     *slog.Logger
	base    *url.URL
	handler http.Handler
	pages   *pages
	oidc    *oidcClient

	rowsPool sync.Pool // []fleet.Row buffers of fleet.Rows
}

//go:embed templates/*.html static/*
var assets embed.FS

// New makes a console.
func New(cfg Config) (*Console, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	base, err := url.Parse(cfg.URL)
	if err != nil || base.Scheme != "https" || base.Host == "" || (base.Path != "" && base.Path != "/") || base.RawQuery != "" {
		return nil, fmt.Errorf("console URL %q: give https://HOST[:PORT] without a path (browsers must reach the console over TLS: its cookies are Secure)", cfg.URL)
	}
	base.Path = ""
	pg, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger, base: base, pages: pg}
	if cfg.OIDC != nil {
		if c.oidc, err = newOIDCClient(*cfg.OIDC, base.String()+callbackPath); err != nil {
			return nil, err
		}
	}
	c.handler = c.routes()
	return c, nil
}

// Handler serves the console.
func (c *Console) Handler() http.Handler { return c.handler }

// URL is where browsers reach the console.
func (c *Console) URL() string { return c.base.String() }

func (c *Console) routes() http.Handler {
	mux := http.NewServeMux()
	// Open to anyone: signing in, and the style sheet.
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("GET /auth/start", c.oidcStart)
	mux.HandleFunc("GET "+callbackPath, c.oidcCallback)
	mux.HandleFunc("GET /signin/link", c.linkPage)
	mux.HandleFunc("POST /signin/link", c.linkSignIn)
	mux.Handle("GET /static/", http.FileServerFS(assets))

	// Everything else needs a session; POSTs a CSRF token too.
	in := func(pattern string, h func(w http.ResponseWriter, r *http.Request, s *session)) {
		mux.Handle(pattern, c.withSession(h))
	}
	in("GET /{$}", c.overview)
	in("GET /devices", c.devices)
	in("GET /devices/{id}", c.device)
	in("POST /devices/{id}/revoke", c.revokeDevice)
	in("POST /devices/{id}/approve", c.approveDevice)
	in("POST /devices/{id}/bind", c.bindDevice)
	in("POST /devices/{id}/unbind", c.unbindDevice)
	in("GET /decisions", c.decisions)
	in("GET /policy", c.policy)
	in("POST /policy/diff", c.policyDiff)
	in("POST /policy/reload", c.policyReload)
	in("GET /gateways", c.gateways)
	in("POST /gateways/revoke", c.revokeGateway)
	in("GET /tokens", c.tokens)
	in("POST /tokens", c.createToken)
	in("POST /tokens/{id}/revoke", c.revokeToken)
	in("GET /receivers", c.receivers)
	in("GET /audit", c.audit)
	in("POST /logout", c.logout)

	// A browser sends Sec-Fetch-Site (or at least Origin) with a POST;
	// one from another site is refused before any handler runs. The
	// session's CSRF token (withSession) covers browsers that send
	// neither.
	cop := http.NewCrossOriginProtection()
	return securityHeaders(cop.Handler(mux))
}

// securityHeaders sets what every answer carries: nothing of the console
// is cached, framed, or allowed to run script or load from elsewhere, and
// no address (a sign-in link's) leaves in a Referer.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Strict-Transport-Security", "max-age=31536000")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

// admin is the admin service as the session's person.
func (c *Console) admin(s *session) posturev1.AdminServiceClient {
	return posturev1.NewAdminServiceClient(c.cfg.API.InProcess(s.actor()))
}

// consoleAPI is the console service as the session's person.
func (c *Console) consoleAPI(s *session) posturev1.ConsoleServiceClient {
	return posturev1.NewConsoleServiceClient(c.cfg.API.InProcess(s.actor()))
}

// errSignInFirst is what a request without a session gets, but for pages,
// which send the browser to sign in.
var errSignInFirst = errors.New("sign in first: this console needs a session")
