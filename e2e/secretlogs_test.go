package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/gatewayfront"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/token"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// logSink is one log destination in both formats the binaries write
// (--log-format text and json), at debug level, with the handlers the
// binaries use.
type logSink struct {
	mu         sync.Mutex
	text, json bytes.Buffer
}

type sinkWriter struct {
	s   *logSink
	buf *bytes.Buffer
}

func (w sinkWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.buf.Write(p)
}

func (s *logSink) logger() *slog.Logger {
	debug := &slog.HandlerOptions{Level: slog.LevelDebug}
	return slog.New(slog.NewMultiHandler(
		inert.NewTextHandler(sinkWriter{s, &s.text}, debug),
		inert.NewJSONHandler(sinkWriter{s, &s.json}, debug)))
}

func (s *logSink) contents() (text, jsonText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.text.String(), s.json.String()
}

// secrets is what the test must never find in a log, by name.
type secrets map[string]string

// addKey adds every form a private key could leak in: its PEM file, each
// line of the PEM body, its PKCS#8 and SEC 1 DER in base64 and hex, and
// its private scalar in hex, base64 and decimal.
func (s secrets) addKey(t *testing.T, name string, key *ecdsa.PrivateKey) {
	t.Helper()
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	scalar, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	s[name+" (PEM)"] = pemText
	for i, line := range strings.Split(strings.TrimSpace(pemText), "\n") {
		if !strings.HasPrefix(line, "-----") {
			s[fmt.Sprintf("%s (PEM line %d)", name, i)] = line
		}
	}
	for form, der := range map[string][]byte{"PKCS#8": pkcs8, "SEC 1": sec1, "scalar": scalar} {
		s[name+" ("+form+" hex)"] = hex.EncodeToString(der)
		s[name+" ("+form+" HEX)"] = strings.ToUpper(hex.EncodeToString(der))
		s[name+" ("+form+" base64)"] = base64.RawStdEncoding.EncodeToString(der)
		s[name+" ("+form+" base64url)"] = base64.RawURLEncoding.EncodeToString(der)
	}
	s[name+" (scalar decimal)"] = new(big.Int).SetBytes(scalar).String()
}

// addKeyFile adds the key in a PEM file, and the file as it is.
func (s secrets) addKeyFile(t *testing.T, name, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s[name+" (file)"] = string(raw)
	k, err := pki.ReadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("%s holds a %T", path, k)
	}
	s.addKey(t, name, key)
}

// addToken adds an enrollment token and its secret.
func (s secrets) addToken(t *testing.T, name, text string) {
	t.Helper()
	tok, err := token.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	s[name] = text
	s[name+" secret"] = tok.Secret
	s[name+" secret hash"] = hex.EncodeToString(token.Hash(tok.Secret))
}

// TestNoSecretInLogs runs the whole life of a fleet with the collector and
// the agents logging at debug level, in text and in JSON: a software and
// a TPM device enroll with tokens (and tokens are refused: used up,
// forged), report, renew their certificates, a gateway is issued its
// certificate, /check answers a bearer secret and refuses a wrong one, a
// device is revoked. No log line of collector or agents may hold any
// secret used: a token or its secret, the bearer secret, or any private
// key (identity, TLS before and after renewal, gateway, CA) in any
// encoding.
func TestNoSecretInLogs(t *testing.T) {
	var collectorLog, softwareLog, tpmLog logSink
	// Certificates for two minutes are due for renewal at once.
	e := startCollectorWith(t, func(c *collector.Config) {
		c.Logger = collectorLog.logger()
		c.DeviceCertTTL = 2 * time.Minute
	})
	ctx := context.Background()
	leak := secrets{}

	// A software device enrolls; its token is then used up.
	swToken := e.token(time.Hour, 1)
	leak.addToken(t, "software device's token", swToken)
	swDir := t.TempDir()
	sw, err := agent.Enroll(ctx, swDir, swToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Enroll(ctx, t.TempDir(), swToken); err == nil {
		t.Fatal("a used-up token enrolled again")
	}
	leak.addKeyFile(t, "software identity key", filepath.Join(swDir, "identity.key"))
	leak.addKeyFile(t, "software TLS key as enrolled", filepath.Join(swDir, "tls.key"))
	// A forged token: the collector's address and CA, a secret it never made.
	forged := token.Token{Addr: e.addr, Fingerprint: e.c.CAFingerprint(), Secret: base64.RawURLEncoding.EncodeToString([]byte("not a secret this collector made"))}
	leak.addToken(t, "forged token", forged.String())
	if _, err := agent.Enroll(ctx, t.TempDir(), forged.String()); err == nil {
		t.Fatal("a forged token enrolled")
	}

	// A TPM device enrolls pending and is approved.
	_, dev := openSimulator(t, 51)
	tpmToken := e.token(time.Hour, 1)
	leak.addToken(t, "TPM device's token", tpmToken)
	tpmDir := t.TempDir()
	tpm, err := agent.EnrollWith(ctx, tpmDir, tpmToken, agent.EnrollOptions{Identity: agent.IdentityTPM, TPMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.ApproveDevice(ctx, &posturev1.ApproveDeviceRequest{DeviceId: tpm.DeviceID}); err != nil {
		t.Fatal(err)
	}
	leak.addKeyFile(t, "TPM device's TLS key as enrolled", filepath.Join(tpmDir, "tls.key"))

	// Both report and renew their certificates.
	runAgentLogged(t, swDir, &fixedMeasurer{encrypted: true}, 50*time.Millisecond, softwareLog.logger())
	a, err := agent.New(agent.Config{StateDir: tpmDir, Interval: 50 * time.Millisecond, Measurer: &fixedMeasurer{encrypted: true},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, TPMDevice: dev, Logger: tpmLog.logger()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopTPM := context.WithCancel(ctx)
	tpmDone := make(chan struct{})
	go func() { defer close(tpmDone); a.Run(runCtx) }()
	t.Cleanup(func() { stopTPM(); <-tpmDone })
	eventuallyWithin(t, 30*time.Second, "both devices renewed and reporting", func() bool {
		if e.stats().GetCertificatesRenewed() < 2 {
			return false
		}
		for _, id := range []string{sw.DeviceID, tpm.DeviceID} {
			if d, err := e.device(id); err != nil || d.GetDevice().GetLastSeq() < 3 {
				return false
			}
		}
		return true
	})

	// A gateway is issued its certificate and asks.
	gwCert := e.gatewayCert("secrets-gateway")
	gwKey, ok := gwCert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("gateway key is a %T", gwCert.PrivateKey)
	}
	leak.addKey(t, "gateway key", gwKey)
	if _, err := posturev1.NewGatewayServiceClient(e.dial(&gwCert)).CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: sw.DeviceID, AccessLevel: "trusted"}); err != nil {
		t.Fatal(err)
	}

	// /check with the bearer secret, and with a wrong one.
	bearer := make([]byte, 24)
	if _, err := rand.Read(bearer); err != nil {
		t.Fatal(err)
	}
	secret := hex.EncodeToString(bearer)
	leak["bearer secret"] = secret
	leak["wrong bearer secret"] = "wrong-" + secret
	fa, err := gatewayfront.NewForwardAuth(gatewayfront.ForwardAuthConfig{Decider: e.c, TrustDomain: trustDomain, Roots: e.c.Roots(),
		BearerSecrets: []string{secret}, Rejections: e.c.GatewayRejections("forward_auth"), GatewayRevoked: e.c.GatewayRevoked})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(fa)
	defer front.Close()
	swCert, _ := deviceCreds(t, swDir)
	forwarded := url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: swCert.Certificate[0]})))
	for auth, want := range map[string]int{"Bearer " + secret: http.StatusOK, "Bearer wrong-" + secret: http.StatusUnauthorized} {
		req, _ := http.NewRequest("GET", front.URL+"/check?level=basic", nil)
		req.Header.Set("Authorization", auth)
		req.Header.Set("X-Client-Cert", forwarded)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("/check: status %d, want %d", resp.StatusCode, want)
		}
	}

	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: tpm.DeviceID, Reason: "end of the test"}); err != nil {
		t.Fatal(err)
	}
	stopTPM()
	<-tpmDone
	e.stop()

	// Keys written since: the renewed TLS keys, and the CA's.
	leak.addKeyFile(t, "software TLS key as renewed", filepath.Join(swDir, "tls.key"))
	leak.addKeyFile(t, "TPM device's TLS key as renewed", filepath.Join(tpmDir, "tls.key"))
	leak.addKeyFile(t, "CA key", filepath.Join(e.dataDir, "ca.key"))
	for _, dir := range []string{swDir, tpmDir} {
		if _, err := os.Stat(filepath.Join(dir, "tls-next.key")); err == nil {
			leak.addKeyFile(t, "a TLS key being renewed", filepath.Join(dir, "tls-next.key"))
		}
	}

	logs := map[string]string{}
	for name, sink := range map[string]*logSink{"collector": &collectorLog, "software agent": &softwareLog, "TPM agent": &tpmLog} {
		text, js := sink.contents()
		logs[name+" (text)"], logs[name+" (json)"] = text, js
		logs[name+" (json, decoded)"] = decodedJSONLines(t, js)
	}
	// The logs must hold the flow, or finding nothing proves nothing.
	for name, want := range map[string][]string{
		"collector (text)":      {"device enrolled", "enrollment refused", "device certificate renewed", "gateway certificate issued", "gateway request refused", "device revoked"},
		"collector (json)":      {`"msg":"device enrolled"`, `"msg":"device certificate renewed"`},
		"software agent (text)": {"device certificate renewed"},
		"TPM agent (json)":      {`"msg":"device certificate renewed"`},
	} {
		for _, w := range want {
			if !strings.Contains(logs[name], w) {
				t.Errorf("the %s log does not show %q; the flow did not run as the test expects:\n%s", name, w, logs[name])
			}
		}
	}
	for logName, text := range logs {
		for what, s := range leak {
			if strings.Contains(text, s) {
				t.Errorf("the %s log holds the %s", logName, what)
			}
		}
	}
}

// decodedJSONLines is every string value of a JSON log, one per line, as
// a reader of the decoded log sees it (escapes undone).
func decodedJSONLines(t *testing.T, js string) string {
	t.Helper()
	var b strings.Builder
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			b.WriteString(v + "\n")
		case map[string]any:
			for k, x := range v {
				b.WriteString(k + "\n")
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	for line := range strings.Lines(js) {
		var v any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("a JSON log line does not decode: %v: %q", err, line)
		}
		walk(v)
	}
	return b.String()
}
