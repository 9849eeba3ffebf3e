package main

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// TestForwardAuthAuthorizationMatrix asks /check, served over TLS as
// posture-collector run --http-listen serves it, about an enrolled device
// as every kind of caller: only a gateway that presents its certificate
// or a bearer secret from --http-bearer-file gets a decision; no
// credential, a wrong secret, a revoked gateway certificate and a device
// certificate presented as the gateway's are refused (401) before the
// device is looked at.
func TestForwardAuthAuthorizationMatrix(t *testing.T) {
	const secret = "matrix-bearer-secret-0123456789"
	dir := t.TempDir()
	c := serveCollectorWithDir(t, dir, collector.Config{})
	bearerFile := filepath.Join(t.TempDir(), "bearer")
	if err := os.WriteFile(bearerFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	front, roots := startFront(t, c, frontConfig{addr: "127.0.0.1:0", bearerFile: bearerFile, timeouts: defaultFrontTimeouts})

	conn, err := collector.DialAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin := posturev1.NewAdminServiceClient(conn)
	ctx := context.Background()
	gateway := testtools.GatewayCert(t, admin, "matrix-gateway")
	revokedGateway := testtools.GatewayCert(t, admin, "matrix-revoked")
	if _, err := admin.RevokeGateway(ctx, &posturev1.RevokeGatewayRequest{Name: "matrix-revoked", Reason: "matrix: retired"}); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateEnrollmentToken(ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	enrolled, err := agent.Enroll(ctx, stateDir, tok.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	device, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "device.crt"), filepath.Join(stateDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	// nginx forwards the device's certificate as $ssl_client_escaped_cert.
	forwarded := url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: device.Certificate[0]})))

	tests := []struct {
		caller        string
		cert          *tls.Certificate // the gateway's TLS client certificate
		authorization string
		decided       bool
	}{
		{"no credential", nil, "", false},
		{"bearer secret", nil, "Bearer " + secret, true},
		{"wrong bearer secret", nil, "Bearer not-" + secret, false},
		{"gateway certificate", &gateway, "", true},
		{"revoked gateway certificate", &revokedGateway, "", false},
		// A revoked gateway is refused whatever else it presents.
		{"revoked gateway certificate with a bearer secret", &revokedGateway, "Bearer " + secret, false},
		{"device certificate presented as the gateway", &device, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.caller, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
			if tt.cert != nil {
				cfg.Certificates = []tls.Certificate{*tt.cert}
			}
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
			defer client.CloseIdleConnections()
			req, err := http.NewRequest("GET", front.url+"?level=basic", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Client-Cert", forwarded)
			if tt.authorization != "" {
				req.Header.Set("Authorization", tt.authorization)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			reason := resp.Header.Get("X-Posture-Reason")
			if tt.decided {
				// The device has sent no report yet: a decision, and a denial.
				if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Posture-Device") != enrolled.DeviceID {
					t.Errorf("status %d, device %q (%s); want a decision (403) about %s", resp.StatusCode, resp.Header.Get("X-Posture-Device"), body, enrolled.DeviceID)
				}
				return
			}
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(reason, "gateway not authenticated") || resp.Header.Get("X-Posture-Device") != "" {
				t.Errorf("status %d, reason %q, device %q; want 401 refusing the gateway before any decision", resp.StatusCode, reason, resp.Header.Get("X-Posture-Device"))
			}
		})
	}
}
