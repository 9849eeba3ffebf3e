package gatewayfront

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
)

// envoyCheck builds a CheckRequest the way Envoy's HTTP ext_authz filter
// fills it for a downstream mTLS connection: source and destination peers,
// the HTTP request, the TLS session and the route's context extensions.
func envoyCheck(src *authv3.AttributeContext_Peer, ext map[string]string) *authv3.CheckRequest {
	sock := func(port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	if src.Address == nil {
		src.Address = sock(53122)
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: src,
		Destination: &authv3.AttributeContext_Peer{
			Address:   sock(10000),
			Principal: "spiffe://" + testTrustDomain + "/collector/server",
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:       "10478329834221556701",
				Method:   "GET",
				Path:     "/app/reports?month=5",
				Host:     "app.example.test",
				Scheme:   "https",
				Protocol: "HTTP/2",
				Headers: map[string]string{
					":authority": "app.example.test", ":method": "GET", ":path": "/app/reports?month=5", ":scheme": "https",
					"user-agent": "curl/7.88.1", "accept": "*/*", "x-forwarded-proto": "https",
					"x-request-id": "6a1c3a47-3a49-4b8e-a37c-9b5c1c3f3c12",
					// A client's own attempt to claim a decision; Envoy passes it on.
					"x-posture-device": "someone-else",
					"x-posture-reason": "approved by security",
				},
			},
		},
		ContextExtensions: ext,
		MetadataContext:   &corev3.Metadata{},
		TlsSession:        &authv3.AttributeContext_TLSSession{Sni: "app.example.test"},
	}}
}

// startExtAuthz serves an ExtAuthz over gRPC with TLS on loopback, admitting
// only clients with certificates from the collector CA, and returns a
// client that presents a gateway certificate.
func startExtAuthz(t *testing.T, e *env, cfg ExtAuthzConfig) authv3.AuthorizationClient {
	t.Helper()
	if cfg.Decider == nil {
		cfg.Decider = e.c
	}
	cfg.TrustDomain, cfg.Roots = testTrustDomain, e.roots
	x, err := NewExtAuthz(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{e.serverCert()},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.roots,
	})))
	x.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	gw := e.gatewayCert("envoy-1")
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(
		pki.ClientTLS(e.roots, testTrustDomain, &gw))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

func TestExtAuthz(t *testing.T) {
	e := startCollector(t)
	dev := e.enroll()
	rev := e.enroll()
	e.revoke(rev.id)
	gw := e.gatewayCert("edge-1")
	foreign := foreignDeviceCert(t, dev.id)
	// What the holder of a stolen CA key can make: the device's serial and
	// SPIFFE ID, another key.
	minted := testtools.MintLike(t, e.dataDir, dev.chain[0]).Leaf

	clients := map[string]authv3.AuthorizationClient{}
	rejections := map[string]*rejectionLog{}
	for name, cfg := range map[string]ExtAuthzConfig{
		"":            {},
		"default":     {DefaultLevel: "basic"},
		"unavailable": {Decider: failingDecider{status.Error(codes.Unavailable, "collector restarting")}},
		"internal":    {Decider: failingDecider{status.Error(codes.Internal, "store broken")}},
	} {
		rejections[name] = &rejectionLog{}
		cfg.Rejections = rejections[name]
		clients[name] = startExtAuthz(t, e, cfg)
	}
	devID := pki.SPIFFEID(testTrustDomain, pki.RoleDevice, dev.id).String()
	basic := map[string]string{ContextExtensionLevel: "basic"}

	allowed := func(level string) *authv3.CheckResponse {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{
				overwrite("x-posture-device", dev.id),
				overwrite("x-posture-level", level),
				overwrite("x-posture-score", "50"),
				overwrite("x-posture-assurance", "software"),
			}, HeadersToRemove: []string{"x-posture-reason", "x-posture-warning"}}},
		}
	}

	tests := []struct {
		name   string
		server string
		src    *authv3.AttributeContext_Peer
		ext    map[string]string
		// want is compared whole when set; otherwise the code, HTTP status
		// and reason are checked.
		want       *authv3.CheckResponse
		wantCode   codes.Code
		wantHTTP   typev3.StatusCode
		wantReason string
		wantBody   []string
		// wantRejected is the reason reported to Rejections for a request
		// denied before a decision; empty when a decision was asked for.
		wantRejected string
	}{
		{name: "allowed by principal", src: &authv3.AttributeContext_Peer{Principal: devID}, ext: basic, want: allowed("basic")},
		{
			name: "allowed by forwarded certificate", ext: basic, want: allowed("basic"),
			src: &authv3.AttributeContext_Peer{Principal: devID, Certificate: nginxEscaped(dev.chain...)},
		},
		{
			name: "allowed by query-encoded certificate alone", ext: basic, want: allowed("basic"),
			src: &authv3.AttributeContext_Peer{Certificate: envoyQueryEscaped(dev.chain...)},
		},
		{name: "default level", server: "default", src: &authv3.AttributeContext_Peer{Principal: devID}, want: allowed("basic")},
		{
			name: "denied with reasons", src: &authv3.AttributeContext_Peer{Principal: devID}, ext: map[string]string{ContextExtensionLevel: "trusted"},
			wantCode: codes.PermissionDenied, wantHTTP: typev3.StatusCode_Forbidden, wantReason: "score 50 is below 80 required by trusted",
			wantBody: []string{"access denied: device " + dev.id, "trusted requires disk_encryption", "to fix:"},
		},
		{
			name: "revoked", src: &authv3.AttributeContext_Peer{Principal: pki.SPIFFEID(testTrustDomain, pki.RoleDevice, rev.id).String()}, ext: basic,
			wantCode: codes.PermissionDenied, wantHTTP: typev3.StatusCode_Forbidden, wantReason: "device is revoked: laptop stolen",
		},
		{
			name: "revoked by certificate", src: &authv3.AttributeContext_Peer{Certificate: nginxEscaped(rev.chain...)}, ext: basic,
			wantCode: codes.PermissionDenied, wantHTTP: typev3.StatusCode_Forbidden, wantReason: "device is revoked",
		},
		{
			name: "unknown level", src: &authv3.AttributeContext_Peer{Principal: devID}, ext: map[string]string{ContextExtensionLevel: "gold"},
			wantCode: codes.PermissionDenied, wantHTTP: typev3.StatusCode_Forbidden, wantReason: `access level "gold" is not defined`,
		},
		{
			name: "route without level", src: &authv3.AttributeContext_Peer{Principal: devID},
			wantCode: codes.InvalidArgument, wantHTTP: typev3.StatusCode_InternalServerError, wantReason: "set the ext_authz context extension posture_level",
			wantRejected: RejectLevelMissing,
		},
		{
			name: "route with a malformed level", src: &authv3.AttributeContext_Peer{Principal: devID}, ext: map[string]string{ContextExtensionLevel: "basic\r\nx-evil: 1"},
			wantCode: codes.InvalidArgument, wantHTTP: typev3.StatusCode_InternalServerError, wantReason: "has a character other than",
			wantRejected: RejectLevelInvalid,
		},
		{
			name: "no client certificate", src: &authv3.AttributeContext_Peer{}, ext: basic,
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "no client certificate",
			wantRejected: RejectDeviceCertMissing,
		},
		{
			name: "gateway principal", src: &authv3.AttributeContext_Peer{Principal: pki.SPIFFEID(testTrustDomain, pki.RoleGateway, "edge-1").String()}, ext: basic,
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "is not a device of trust domain",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "principal of another trust domain", src: &authv3.AttributeContext_Peer{Principal: "spiffe://elsewhere.test/device/" + dev.id}, ext: basic,
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "is not a device of trust domain",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "subject principal", src: &authv3.AttributeContext_Peer{Principal: "CN=laptop,O=Example"}, ext: basic,
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "not a SPIFFE ID",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "certificate from another CA", src: &authv3.AttributeContext_Peer{Principal: devID, Certificate: nginxEscaped(foreign)}, ext: basic,
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "not a valid client certificate from this collector's CA",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "certificate minted with the device's serial and another key", ext: basic,
			src:      &authv3.AttributeContext_Peer{Principal: devID, Certificate: nginxEscaped(minted)},
			wantCode: codes.PermissionDenied, wantHTTP: typev3.StatusCode_Forbidden, wantReason: "did not issue it with this serial and key",
		},
		{
			name: "gateway certificate", src: &authv3.AttributeContext_Peer{Certificate: nginxEscaped(gw.Leaf)}, ext: basic,
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "a gateway, not a device",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "principal and certificate disagree", ext: basic,
			src:      &authv3.AttributeContext_Peer{Principal: pki.SPIFFEID(testTrustDomain, pki.RoleDevice, rev.id).String(), Certificate: nginxEscaped(dev.chain...)},
			wantCode: codes.Unauthenticated, wantHTTP: typev3.StatusCode_Unauthorized, wantReason: "does not match the source certificate's device",
			wantRejected: RejectDeviceCertInvalid,
		},
		{
			name: "collector unavailable fails closed", server: "unavailable", src: &authv3.AttributeContext_Peer{Principal: devID}, ext: basic,
			wantCode: codes.Unavailable, wantHTTP: typev3.StatusCode_ServiceUnavailable, wantReason: "access is denied until the collector answers",
		},
		{
			name: "collector error fails closed", server: "internal", src: &authv3.AttributeContext_Peer{Principal: devID}, ext: basic,
			wantCode: codes.Internal, wantHTTP: typev3.StatusCode_InternalServerError, wantReason: "store broken",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := clients[tc.server].Check(t.Context(), envoyCheck(tc.src, tc.ext))
			if err != nil {
				t.Fatalf("Check returned a gRPC error, which failure_mode_allow could turn into an allow: %v", err)
			}
			var want []string
			if tc.wantRejected != "" {
				want = []string{tc.wantRejected}
			}
			reasons, details := rejections[tc.server].take()
			if !slices.Equal(reasons, want) {
				t.Errorf("reported rejections %q, want %q", reasons, want)
			}
			if len(details) == 1 && details[0] != headerValue(got.GetStatus().GetMessage()) {
				t.Errorf("reported detail %q, want what Envoy was told, %q", details[0], got.GetStatus().GetMessage())
			}
			if tc.want != nil {
				if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
					t.Fatalf("response (-want +got):\n%s", diff)
				}
				return
			}
			if c := codes.Code(got.GetStatus().GetCode()); c != tc.wantCode {
				t.Fatalf("status %v (%s), want %v", c, got.GetStatus().GetMessage(), tc.wantCode)
			}
			d := got.GetDeniedResponse()
			if d == nil {
				t.Fatalf("no denied response: %v", got)
			}
			if d.GetStatus().GetCode() != tc.wantHTTP {
				t.Errorf("HTTP status %v, want %v", d.GetStatus().GetCode(), tc.wantHTTP)
			}
			if !strings.Contains(got.GetStatus().GetMessage(), tc.wantReason) {
				t.Errorf("status message %q, want it to contain %q", got.GetStatus().GetMessage(), tc.wantReason)
			}
			var reason string
			for _, h := range d.GetHeaders() {
				if h.GetHeader().GetKey() == "x-posture-reason" {
					reason = h.GetHeader().GetValue()
				}
			}
			if !strings.Contains(reason, tc.wantReason) {
				t.Errorf("x-posture-reason %q, want it to contain %q", reason, tc.wantReason)
			}
			if !strings.Contains(d.GetBody(), tc.wantReason) {
				t.Errorf("body %q, want it to contain %q", d.GetBody(), tc.wantReason)
			}
			for _, want := range tc.wantBody {
				if !strings.Contains(d.GetBody(), want) {
					t.Errorf("body does not contain %q:\n%s", want, d.GetBody())
				}
			}
		})
	}
}

func TestNewExtAuthzConfig(t *testing.T) {
	roots, d := x509.NewCertPool(), failingDecider{}
	tests := []struct {
		name string
		cfg  ExtAuthzConfig
		want string
	}{
		{"no decider", ExtAuthzConfig{TrustDomain: "td", Roots: roots}, "Decider is required"},
		{"no trust domain", ExtAuthzConfig{Decider: d, Roots: roots}, "trust domain is required"},
		{"no roots", ExtAuthzConfig{Decider: d, TrustDomain: "td"}, "roots are required"},
		{"bad default level", ExtAuthzConfig{Decider: d, TrustDomain: "td", Roots: roots, DefaultLevel: "basic\n"}, "character other than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewExtAuthz(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
