// Package gatewayfront turns the questions access gateways already know how
// to ask into the collector's access decisions: an HTTP forward-auth
// endpoint for nginx auth_request, Caddy forward_auth and Traefik
// ForwardAuth, and an Envoy ext_authz v3 authorization server.
//
// Both name the device by the client certificate the gateway verified,
// which this package verifies again against the collector CA, so a device
// is never identified by a bare header. Both fail closed: when no decision
// can be made the answer is a denial that says why.
package gatewayfront

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Decider answers whether a device meets an access level. The collector
// (*collector.Collector) implements it in-process.
type Decider interface {
	CheckAccess(ctx context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error)
}

// Rejections is told of every request a front end refuses before it can
// ask for a decision: the caller or the device is not authenticated, or
// the request is malformed. The collector counts them by reason and logs
// them; without it they would leave no trace, since no decision is made.
type Rejections interface {
	// Rejected reports one refused request. reason is one of the Reject*
	// constants, never request input; detail is what the caller was told.
	Rejected(reason, detail string)
}

// Reasons a request is refused before a decision, as Rejections receives
// them. The set is small and fixed: each is a metric label.
const (
	// RejectGatewayUnauthenticated: the caller of /check presented neither
	// a gateway certificate nor an accepted bearer secret.
	RejectGatewayUnauthenticated = "gateway_unauthenticated"
	// RejectLevelMissing: the request (the /check URL, the Envoy route)
	// names no access level.
	RejectLevelMissing = "level_missing"
	// RejectLevelInvalid: the access level is not a valid name.
	RejectLevelInvalid = "level_invalid"
	// RejectDeviceCertMissing: the gateway forwarded no device certificate.
	RejectDeviceCertMissing = "device_cert_missing"
	// RejectDeviceCertAmbiguous: a /check request carried more than one
	// certificate header, so one came from the client.
	RejectDeviceCertAmbiguous = "device_cert_ambiguous"
	// RejectDeviceCertInvalid: the forwarded certificate or principal does
	// not name a device of this collector.
	RejectDeviceCertInvalid = "device_cert_invalid"
	// RejectRecheckRefused: a Check again or status request without a
	// valid token for its device, from another site, not a POST, with a
	// certificate the device no longer holds, or to a collector without
	// Check again.
	RejectRecheckRefused = "recheck_refused"
	// RejectRecheckThrottled: Check again pressed again within
	// RecheckEvery of the device's last.
	RejectRecheckThrottled = "recheck_throttled"
)

// noRejections is the Rejections of a front end configured without one.
type noRejections struct{}

func (noRejections) Rejected(string, string) {}

// maxLevelLen bounds an access level name; real names are short words.
const maxLevelLen = 64

// validLevel reports whether name can be an access level: it is echoed in
// response headers, so it is kept to a conservative alphabet.
func validLevel(name string) error {
	if len(name) > maxLevelLen {
		return fmt.Errorf("access level name is longer than %d characters", maxLevelLen)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.', r == ':':
		default:
			return fmt.Errorf("access level %q has a character other than letters, digits, '_', '-', '.' and ':'", name)
		}
	}
	return nil
}

// checkConfig validates what both front ends need.
func checkConfig(d Decider, trustDomain string, roots *x509.CertPool) error {
	switch {
	case d == nil:
		return errors.New("a Decider is required (the collector)")
	case trustDomain == "":
		return errors.New("a trust domain is required")
	case roots == nil:
		return errors.New("roots are required: the collector CA that issued device certificates")
	}
	return nil
}

// assuranceName turns IDENTITY_ASSURANCE_TPM_EK_PINNED into tpm_ek_pinned,
// the spelling policies and listings use.
func assuranceName(a posturev1.IdentityAssurance) string {
	return strings.ToLower(strings.TrimPrefix(a.String(), "IDENTITY_ASSURANCE_"))
}

// decision is a CheckAccessResponse reduced to what gateways are told.
type decision struct {
	allowed   bool
	deviceID  string
	level     string
	score     string
	assurance string
	reasons   []string
	fixes     []string // "check: remediation" for failed checks
	// resp is the collector's answer, for the deny page.
	resp *posturev1.CheckAccessResponse
	// warnings are what an allowed decision warns of (a level in warn
	// mode the device does not meet, a failing check inside its grace).
	warnings []string
}

func newDecision(resp *posturev1.CheckAccessResponse, deviceID, level string) decision {
	d := decision{
		allowed:   resp.GetAllowed(),
		deviceID:  deviceID,
		level:     level,
		score:     strconv.FormatUint(uint64(resp.GetScore()), 10),
		assurance: assuranceName(resp.GetAssurance()),
		reasons:   resp.GetReasons(),
	}
	if d.allowed && resp.GetWarned() {
		d.warnings = resp.GetWarnings()
		if len(d.warnings) == 0 {
			d.warnings = []string{fmt.Sprintf("device %s does not fully meet access level %s; it will be denied unless fixed", deviceID, level)}
		}
	}
	for _, c := range resp.GetFailedChecks() {
		if c.GetRemediation() != "" {
			d.fixes = append(d.fixes, c.GetName()+": "+c.GetRemediation())
		}
	}
	// A denial without a reason would leave the user with nothing to act on.
	if !d.allowed && len(d.reasons) == 0 {
		d.reasons = []string{fmt.Sprintf("device %s does not meet access level %s", deviceID, level)}
	}
	return d
}

// firstReason is the reason gateways put in a header.
func (d decision) firstReason() string {
	if len(d.reasons) == 0 {
		return ""
	}
	return d.reasons[0]
}

// warningHeader is the X-Posture-Warning value of a warned decision
// (empty for none): every warning, joined.
func (d decision) warningHeader() string {
	return headerValue(strings.Join(d.warnings, "; "))
}

// allowedText is the short body of an allow, with what it warns of.
func (d decision) allowedText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "allowed: device %s meets access level %s (score %s)\n", d.deviceID, d.level, d.score)
	if len(d.warnings) > 0 {
		b.Reset()
		fmt.Fprintf(&b, "allowed with a warning: device %s, access level %s (score %s)\n", d.deviceID, d.level, d.score)
		for _, w := range d.warnings {
			b.WriteString("  ! " + w + "\n")
		}
	}
	return b.String()
}

// deniedText is the short body a denied user sees.
func (d decision) deniedText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "access denied: device %s does not meet access level %s (score %s, identity %s)\n", d.deviceID, d.level, d.score, d.assurance)
	for _, r := range d.reasons {
		b.WriteString("  - " + r + "\n")
	}
	if len(d.fixes) > 0 {
		b.WriteString("to fix:\n")
		for _, f := range d.fixes {
			b.WriteString("  * " + f + "\n")
		}
	}
	return b.String()
}

// decide asks for a decision. When none can be had it says why, and
// whether asking again may help: only when the collector is unreachable or
// overloaded.
func decide(ctx context.Context, d Decider, deviceID string, cert certRef, level string) (dec decision, ok, retry bool, why string) {
	resp, err := d.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: deviceID, CertificateSerial: cert.serial,
		CertificateKeySha256: cert.key, AccessLevel: level})
	if err == nil && resp == nil {
		err = errors.New("collector returned no decision")
	}
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Canceled:
			retry = true
		}
		return decision{}, false, retry, fmt.Sprintf("no posture decision could be made (%v); access is denied until the collector answers", err)
	}
	dec = newDecision(resp, deviceID, level)
	dec.resp = resp
	return dec, true, false, ""
}

// maxHeaderValue bounds a reason echoed in a response header; the body
// carries the full text.
const maxHeaderValue = 512

// headerValue makes text safe for an HTTP header: control characters
// become spaces and long text is cut on a rune boundary.
func headerValue(s string) string {
	if len(s) > maxHeaderValue {
		s = s[:maxHeaderValue]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
