package gatewayfront

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/callerid"
	"github.com/posture-project/posture/internal/pki"
)

// Request and response headers of the forward-auth protocol.
const (
	// HeaderClientCert carries the device's client certificate as the
	// gateway verified it: nginx $ssl_client_escaped_cert (URL-encoded PEM),
	// or base64 DER as Caddy's certificate_der_base64 placeholder gives it.
	HeaderClientCert = "X-Client-Cert"
	// HeaderTraefikClientCert is where Traefik's PassTLSClientCert
	// middleware (pem: true) puts the certificate: base64 DER, no armour.
	HeaderTraefikClientCert = "X-Forwarded-Tls-Client-Cert"
	// HeaderLevel names the access level of a decision. Requests name it
	// in the URL (?level=), never in this header, which a client could set.
	HeaderLevel = "X-Posture-Level"
	// HeaderDevice names the device in a decision (allowed or denied), for
	// the gateway to pass to the application.
	HeaderDevice = "X-Posture-Device"
	// HeaderScore is the device's trust score at the decision.
	HeaderScore = "X-Posture-Score"
	// HeaderAssurance is the device's identity assurance (software,
	// tpm_ek_pinned, tpm_ek_verified).
	HeaderAssurance = "X-Posture-Assurance"
	// HeaderReason says why a request was refused: the first reason of a
	// denial, or what is wrong with the request.
	HeaderReason = "X-Posture-Reason"
	// HeaderWarning is set on an allow that warns: the device does not
	// meet a level in warn mode, or meets it only while a failing check is
	// inside its grace ("disk_encryption failing since …, blocks at …").
	// nginx passes it to the client with auth_request_set and add_header.
	HeaderWarning = "X-Posture-Warning"
)

// errNoLevel means a request's URL names no access level.
var errNoLevel = errors.New("no access level in the URL: put ?level=NAME in the auth URL the gateway calls (/check?level=trusted)")

// errAmbiguousCert means a request carried a certificate header the
// gateway did not set, or more than one.
var errAmbiguousCert = errors.New("a certificate header did not come from the gateway")

// minBearerSecret is the shortest bearer secret accepted: a guessable
// secret would let anyone ask about any device.
const minBearerSecret = 16

// ForwardAuthConfig configures a ForwardAuth handler.
type ForwardAuthConfig struct {
	// Decider makes the decision: the collector.
	Decider Decider
	// TrustDomain is the SPIFFE trust domain of devices and gateways.
	TrustDomain string
	// Roots is the collector CA; forwarded device certificates and the
	// gateways' own client certificates must chain to it.
	Roots *x509.CertPool
	// BearerSecrets authenticate gateways that cannot present a client
	// certificate (Authorization: Bearer <secret>). Empty means only mTLS
	// gateways are served.
	BearerSecrets []string
	// DefaultLevel is the access level when a request's URL names none.
	DefaultLevel string
	// CertHeader is the request header the gateway forwards the device
	// certificate in; empty means X-Client-Cert (nginx, Caddy). Traefik's
	// is X-Forwarded-Tls-Client-Cert. A request that also carries the
	// other of the two is refused: it came from the client, and reading it
	// when the gateway forwards no certificate (a client that presented
	// none) would let a client name any device whose certificate it has.
	CertHeader string
	// Rejections, when set, is told of every request refused before a
	// decision (401 and 400 answers).
	Rejections Rejections
	// GatewayRevoked, when set, says why a gateway certificate (by serial,
	// hex) was revoked, or returns nil while it stands.
	GatewayRevoked func(serial string) error
	// Rechecker, with RecheckKey, turns on the deny page's Check again
	// button and ServeBrowser; nil leaves the page without it.
	Rechecker Rechecker
	// RecheckKey signs the Check again button's CSRF tokens: the same on
	// every collector (pki.CA.DeriveKey), so any may answer the press.
	RecheckKey []byte
}

// ForwardAuth is an http.Handler answering forward-auth subrequests from
// nginx (auth_request), Caddy (forward_auth) and Traefik (ForwardAuth):
// 200 with X-Posture-* headers when the device whose certificate the
// gateway forwarded meets the access level; 403 with the reasons when it
// does not; 401 when the gateway or the device is not authenticated; 400
// for a malformed request; 500 or 503 when no decision could be made.
type ForwardAuth struct {
	decider      Decider
	verifier     *verifier
	secrets      [][sha256.Size]byte
	defaultLevel string
	certHeader   string
	rejections   Rejections
	revoked      func(serial string) error
	rechecker    Rechecker
	recheckKey   []byte
	throttle     throttle
	now          func() time.Time
}

// NewForwardAuth checks cfg and returns the handler.
func NewForwardAuth(cfg ForwardAuthConfig) (*ForwardAuth, error) {
	if err := checkConfig(cfg.Decider, cfg.TrustDomain, cfg.Roots); err != nil {
		return nil, fmt.Errorf("forward-auth: %w", err)
	}
	if cfg.DefaultLevel != "" {
		if err := validLevel(cfg.DefaultLevel); err != nil {
			return nil, fmt.Errorf("forward-auth default level: %w", err)
		}
	}
	f := &ForwardAuth{
		decider:      cfg.Decider,
		verifier:     newVerifier(cfg.Roots, cfg.TrustDomain),
		defaultLevel: cfg.DefaultLevel,
		certHeader:   HeaderClientCert,
		rejections:   cfg.Rejections,
		revoked:      cfg.GatewayRevoked,
		rechecker:    cfg.Rechecker,
		recheckKey:   cfg.RecheckKey,
		now:          time.Now,
	}
	if f.rejections == nil {
		f.rejections = noRejections{}
	}
	if cfg.CertHeader != "" {
		if !validHeaderName(cfg.CertHeader) {
			return nil, fmt.Errorf("forward-auth certificate header %q is not a header name (--http-cert-header)", cfg.CertHeader)
		}
		f.certHeader = http.CanonicalHeaderKey(cfg.CertHeader)
	}
	for i, s := range cfg.BearerSecrets {
		if len(s) < minBearerSecret {
			return nil, fmt.Errorf("forward-auth bearer secret %d is shorter than %d characters; use a random one (openssl rand -hex 32)", i+1, minBearerSecret)
		}
		f.secrets = append(f.secrets, sha256.Sum256([]byte(s)))
	}
	return f, nil
}

// ServeHTTP answers one forward-auth subrequest. Any method is accepted:
// nginx and Traefik repeat the client's.
func (f *ForwardAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// A cached allow would outlive a revocation.
	h.Set("Cache-Control", "no-store")

	gateway, err := f.authenticateGateway(r)
	if err != nil {
		h.Set("WWW-Authenticate", `Bearer realm="posture"`)
		f.refuse(w, http.StatusUnauthorized, RejectGatewayUnauthenticated, "gateway not authenticated: "+err.Error())
		return
	}
	level, err := f.level(r)
	switch {
	case errors.Is(err, errNoLevel):
		f.refuse(w, http.StatusBadRequest, RejectLevelMissing, err.Error())
		return
	case err != nil:
		f.refuse(w, http.StatusBadRequest, RejectLevelInvalid, err.Error())
		return
	}
	header, cert, err := f.forwardedCert(r)
	switch {
	case errors.Is(err, errNoCertificate):
		f.refuse(w, http.StatusUnauthorized, RejectDeviceCertMissing, fmt.Sprintf("no device certificate: the client presented none, or the gateway did not forward it in %s; present the device certificate posture-agent enrolled (device.crt)", f.certHeader))
		return
	case err != nil:
		f.refuse(w, http.StatusBadRequest, RejectDeviceCertAmbiguous, err.Error())
		return
	}
	deviceID, devCert, err := f.verifier.deviceCertEncoded(cert)
	if err != nil {
		f.refuse(w, http.StatusUnauthorized, RejectDeviceCertInvalid, "device certificate in "+header+" rejected: "+err.Error())
		return
	}

	d, ok, retry, why := decide(callerid.With(r.Context(), gateway+" (/check)"), f.decider, deviceID, devCert, level)
	if !ok {
		code := http.StatusInternalServerError
		if retry {
			code = http.StatusServiceUnavailable
			h.Set("Retry-After", "1")
		}
		reject(w, code, why)
		return
	}
	h.Set(HeaderDevice, d.deviceID)
	h.Set(HeaderLevel, d.level)
	h.Set(HeaderScore, d.score)
	h.Set(HeaderAssurance, d.assurance)
	if !d.allowed {
		h.Set(HeaderReason, headerValue(d.firstReason()))
		if wantsHTML(r) {
			f.writeDenyPage(w, d)
			return
		}
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, d.deniedText())
		return
	}
	if len(d.warnings) > 0 {
		h.Set(HeaderWarning, d.warningHeader())
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, d.allowedText())
}

// refuse answers a request refused before a decision and reports it.
func (f *ForwardAuth) refuse(w http.ResponseWriter, code int, reason, msg string) {
	f.rejections.Rejected(reason, headerValue(msg))
	reject(w, code, msg)
}

// reject answers with a status and a reason, in a header for gateways and
// in the body for people.
func reject(w http.ResponseWriter, code int, reason string) {
	h := w.Header()
	h.Set(HeaderReason, headerValue(reason))
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, reason)
}

// authenticateGateway accepts a gateway that presents its own client
// certificate (spiffe://<td>/gateway/<name>) or one of the bearer secrets,
// and names it for the decision log: "gateway NAME", or "bearer secret N"
// (its line in the file).
func (f *ForwardAuth) authenticateGateway(r *http.Request) (string, error) {
	var certErr error
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		// Verified again against our roots: the listener may trust others.
		v, err := f.verifier.identifyChain(r.TLS.VerifiedChains[0])
		switch {
		case err != nil:
			certErr = err
		case v.role != pki.RoleGateway:
			certErr = fmt.Errorf("client certificate names %s, a %s, not a gateway (posture-collector gateway add issues gateway certificates)", pki.SPIFFEID(f.verifier.trustDomain, v.role, v.name), v.role)
		case f.revoked != nil:
			if err := f.revoked(v.cert.serial); err != nil {
				// A revoked gateway is refused whatever else it
				// presents: its certificate says who is asking,
				// and a bearer secret beside it does not vouch for
				// someone else.
				return "", err
			}
			return "gateway " + v.name, nil
		default:
			return "gateway " + v.name, nil
		}
	}
	authz := r.Header.Get("Authorization")
	if authz == "" {
		if certErr != nil {
			return "", certErr
		}
		return "", errors.New("present a gateway client certificate or Authorization: Bearer <secret>")
	}
	scheme, secret, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", errors.New("the Authorization header is not Bearer <secret>")
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(secret)))
	which := 0 // 1-based; 0: none
	// Every secret is compared, so timing tells nothing about which matched.
	for i := range f.secrets {
		which = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(sum[:], f.secrets[i][:]), i+1, which)
	}
	if which == 0 {
		return "", errors.New("the bearer secret is not one this collector accepts")
	}
	return fmt.Sprintf("bearer secret %d", which), nil
}

// level picks the access level from the query, which the gateway's
// configuration fixes, or else the default. Never from a header: gateways
// pass client headers on, so a client could pick its own level.
func (f *ForwardAuth) level(r *http.Request) (string, error) {
	level := r.URL.Query().Get("level")
	if level == "" {
		level = f.defaultLevel
	}
	if level == "" {
		return "", errNoLevel
	}
	if err := validLevel(level); err != nil {
		return "", err
	}
	return level, nil
}

// certHeaderError is an errAmbiguousCert that says what was wrong.
type certHeaderError string

func (e certHeaderError) Error() string        { return string(e) }
func (e certHeaderError) Is(target error) bool { return target == errAmbiguousCert }

// knownCertHeaders are where gateways forward device certificates: a
// request carrying one the collector does not read got it from the client.
var knownCertHeaders = []string{HeaderClientCert, HeaderTraefikClientCert}

// forwardedCert returns the header that carries the device's certificate,
// and its value.
func (f *ForwardAuth) forwardedCert(r *http.Request) (header, value string, err error) {
	for _, other := range knownCertHeaders {
		if other == f.certHeader {
			continue
		}
		for _, v := range r.Header.Values(other) {
			if strings.TrimSpace(v) != "" {
				return "", "", certHeaderError(fmt.Sprintf("a certificate came in %s, which the gateway does not set (it forwards the device's in %s, --http-cert-header): the client sent it, and the gateway must drop it", other, f.certHeader))
			}
		}
	}
	vals := r.Header.Values(f.certHeader)
	switch {
	case len(vals) > 1:
		return "", "", certHeaderError(fmt.Sprintf("%d %s headers: the gateway must forward exactly one and drop any the client sent", len(vals), f.certHeader))
	case len(vals) == 0 || strings.TrimSpace(vals[0]) == "":
		return "", "", errNoCertificate
	}
	return f.certHeader, vals[0], nil
}

// validHeaderName says whether s is an HTTP header name (an RFC 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c > 0x7e || c <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}
