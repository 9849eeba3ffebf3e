package gatewayfront

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/posture-project/posture/internal/pki"
)

// ContextExtensionLevel is the key of the route's ext_authz context
// extension that names the access level
// (typed_per_filter_config … check_settings.context_extensions).
const ContextExtensionLevel = "posture_level"

// ExtAuthzConfig configures an ExtAuthz server.
type ExtAuthzConfig struct {
	// Decider makes the decision: the collector.
	Decider Decider
	// TrustDomain is the SPIFFE trust domain of devices.
	TrustDomain string
	// Roots is the collector CA; a forwarded source.certificate must chain
	// to it.
	Roots *x509.CertPool
	// DefaultLevel is the access level for routes that set no
	// posture_level context extension.
	DefaultLevel string
	// Rejections, when set, is told of every request denied before a
	// decision: no access level on the route, no or a bad device
	// certificate.
	Rejections Rejections
}

// ExtAuthz is an Envoy ext_authz v3 authorization server. The device is
// the one whose client certificate Envoy verified: source.certificate when
// Envoy forwards it (include_peer_certificate), verified here against the
// collector CA, else source.principal, the certificate's URI SAN. The
// access level comes from the route's posture_level context extension.
//
// Every answer is a CheckResponse, never a gRPC error, so Envoy's
// failure_mode_allow cannot turn a failed decision into an allow.
//
// ExtAuthz does not authenticate its caller: register it on a server that
// admits only gateways, since a caller that can claim any source.principal
// learns any device's decision. Trusting source.principal also requires
// Envoy's listener to verify client certificates against the collector CA
// only.
type ExtAuthz struct {
	decider      Decider
	verifier     *verifier
	defaultLevel string
	rejections   Rejections
}

// NewExtAuthz checks cfg and returns the server.
func NewExtAuthz(cfg ExtAuthzConfig) (*ExtAuthz, error) {
	if err := checkConfig(cfg.Decider, cfg.TrustDomain, cfg.Roots); err != nil {
		return nil, fmt.Errorf("ext_authz: %w", err)
	}
	if cfg.DefaultLevel != "" {
		if err := validLevel(cfg.DefaultLevel); err != nil {
			return nil, fmt.Errorf("ext_authz default level: %w", err)
		}
	}
	e := &ExtAuthz{decider: cfg.Decider, verifier: newVerifier(cfg.Roots, cfg.TrustDomain), defaultLevel: cfg.DefaultLevel, rejections: cfg.Rejections}
	if e.rejections == nil {
		e.rejections = noRejections{}
	}
	return e, nil
}

// Register adds the Authorization service to s.
func (e *ExtAuthz) Register(s *grpc.Server) { authv3.RegisterAuthorizationServer(s, e) }

var _ authv3.AuthorizationServer = (*ExtAuthz)(nil)

// Check answers one ext_authz request.
func (e *ExtAuthz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	attrs := req.GetAttributes()
	level := attrs.GetContextExtensions()[ContextExtensionLevel]
	if level == "" {
		level = e.defaultLevel
	}
	if level == "" {
		// The route is misconfigured, not the client's request.
		return e.refuse(codes.InvalidArgument, typev3.StatusCode_InternalServerError, RejectLevelMissing,
			"the route names no access level: set the ext_authz context extension posture_level on it"), nil
	}
	if err := validLevel(level); err != nil {
		return e.refuse(codes.InvalidArgument, typev3.StatusCode_InternalServerError, RejectLevelInvalid, "route context extension posture_level: "+err.Error()), nil
	}

	deviceID, cert, err := e.device(attrs.GetSource())
	switch {
	case errors.Is(err, errNoSourceCert):
		return e.refuse(codes.Unauthenticated, typev3.StatusCode_Unauthorized, RejectDeviceCertMissing, err.Error()), nil
	case err != nil:
		return e.refuse(codes.Unauthenticated, typev3.StatusCode_Unauthorized, RejectDeviceCertInvalid, err.Error()), nil
	}

	d, ok, retry, why := decide(ctx, e.decider, deviceID, cert, level)
	switch {
	case !ok && retry:
		return denied(codes.Unavailable, typev3.StatusCode_ServiceUnavailable, why, nil), nil
	case !ok:
		return denied(codes.Internal, typev3.StatusCode_InternalServerError, why, nil), nil
	}
	headers := []*corev3.HeaderValueOption{
		overwrite("x-posture-device", d.deviceID),
		overwrite("x-posture-level", d.level),
		overwrite("x-posture-score", d.score),
		overwrite("x-posture-assurance", d.assurance),
	}
	if !d.allowed {
		r := denied(codes.PermissionDenied, typev3.StatusCode_Forbidden, d.firstReason(), headers)
		r.GetDeniedResponse().Body = d.deniedText()
		return r, nil
	}
	allow := &authv3.OkHttpResponse{
		// Overwritten, so a client cannot pass its own x-posture-* upstream.
		Headers: headers,
		// An allow has no reason; one in the request came from the client.
		HeadersToRemove: []string{"x-posture-reason", "x-posture-warning"},
	}
	if len(d.warnings) > 0 {
		// The warning goes upstream, for the application to show, and to
		// the client with the response.
		w := overwrite("x-posture-warning", d.warningHeader())
		allow.Headers = append(allow.Headers, w)
		allow.HeadersToRemove = []string{"x-posture-reason"}
		allow.ResponseHeadersToAdd = []*corev3.HeaderValueOption{w}
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: allow},
	}, nil
}

// device identifies the device behind the request's source peer, and its
// certificate (serial and key) when Envoy forwarded the certificate rather
// than only its principal.
func (e *ExtAuthz) device(src *authv3.AttributeContext_Peer) (id string, cert certRef, err error) {
	if pemText := src.GetCertificate(); pemText != "" {
		id, cert, err := e.verifier.deviceCertEncoded(pemText)
		if err != nil {
			return "", certRef{}, fmt.Errorf("source certificate rejected: %w", err)
		}
		// Both come from the same handshake; disagreement means a broken proxy.
		if p := src.GetPrincipal(); p != "" && p != pki.SPIFFEID(e.verifier.trustDomain, pki.RoleDevice, id).String() {
			return "", certRef{}, fmt.Errorf("source principal %s does not match the source certificate's device %s", p, id)
		}
		return id, cert, nil
	}
	if p := src.GetPrincipal(); p != "" {
		id, err := e.verifier.deviceFromPrincipal(p)
		return id, certRef{}, err
	}
	return "", certRef{}, errNoSourceCert
}

// errNoSourceCert means Envoy named no client certificate for the request.
var errNoSourceCert = errors.New("no client certificate: the Envoy listener must require client certificates signed by the collector CA (require_client_certificate), and the client must present its device certificate (device.crt)")

// refuse denies a request before a decision and reports it.
func (e *ExtAuthz) refuse(code codes.Code, httpCode typev3.StatusCode, reason, msg string) *authv3.CheckResponse {
	e.rejections.Rejected(reason, headerValue(msg))
	return denied(code, httpCode, msg, nil)
}

// denied builds a denial Envoy sends to the client as is.
func denied(code codes.Code, httpCode typev3.StatusCode, reason string, headers []*corev3.HeaderValueOption) *authv3.CheckResponse {
	headers = append(headers,
		overwrite("x-posture-reason", headerValue(reason)),
		overwrite("content-type", "text/plain; charset=utf-8"),
		overwrite("cache-control", "no-store"),
	)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: httpCode},
			Headers: headers,
			Body:    reason + "\n",
		}},
	}
}

func overwrite(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
