package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/posture-project/posture/collector"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const (
	complianceChange = "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change"
	sessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	verification     = "https://schemas.openid.net/secevent/ssf/event-type/verification"
)

// setReceiver is a Shared Signals receiver written for the test with an
// independent JOSE library (lestrrat-go/jwx): it verifies every SET
// pushed to it against the transmitter's JWKS, and keeps the verified
// claims.
type setReceiver struct {
	t        *testing.T
	keys     jwk.Set
	issuer   string
	audience string
	mu       sync.Mutex
	sets     []receivedSET
	wake     chan struct{}
}

type receivedSET struct {
	at     time.Time
	typ    string
	claims struct {
		Iss    string                    `json:"iss"`
		Aud    string                    `json:"aud"`
		Iat    int64                     `json:"iat"`
		JTI    string                    `json:"jti"`
		SubID  map[string]any            `json:"sub_id"`
		Events map[string]map[string]any `json:"events"`
	}
}

func (r *setReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if ct := req.Header.Get("Content-Type"); ct != "application/secevent+jwt" {
		r.refuse(w, "invalid_request", "content type "+ct)
		return
	}
	payload, err := jws.Verify(body, jws.WithKeySet(r.keys, jws.WithRequireKid(true)))
	if err != nil {
		r.refuse(w, "invalid_key", err.Error())
		return
	}
	// iss, aud and iat, as a JWT library checks them.
	if _, err := jwt.Parse(body, jwt.WithKeySet(r.keys), jwt.WithIssuer(r.issuer), jwt.WithAudience(r.audience), jwt.WithValidate(true), jwt.WithAcceptableSkew(5*time.Second)); err != nil {
		r.refuse(w, "invalid_issuer", err.Error())
		return
	}
	msg, err := jws.Parse(body)
	if err != nil {
		r.refuse(w, "invalid_request", err.Error())
		return
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	got := receivedSET{at: time.Now(), typ: h.Type()}
	if h.Algorithm() != jwa.RS256 {
		r.refuse(w, "invalid_request", "alg "+h.Algorithm().String())
		return
	}
	if err := json.Unmarshal(payload, &got.claims); err != nil {
		r.refuse(w, "invalid_request", err.Error())
		return
	}
	r.mu.Lock()
	r.sets = append(r.sets, got)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusAccepted)
}

func (r *setReceiver) refuse(w http.ResponseWriter, code, desc string) {
	r.t.Errorf("receiver refused a SET: %s: %s", code, desc)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"err": code, "description": desc})
}

// wait returns the first SET received with the event type that match
// holds for, waiting up to within.
func (r *setReceiver) wait(within time.Duration, event string, match func(receivedSET) bool) (receivedSET, bool) {
	deadline := time.After(within)
	for {
		r.mu.Lock()
		for _, s := range r.sets {
			if _, ok := s.claims.Events[event]; ok && (match == nil || match(s)) {
				r.mu.Unlock()
				return s, true
			}
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			return receivedSET{}, false
		}
	}
}

// TestSharedSignals: a receiver creates a stream through the management
// API with its bearer token, gets the verification event it asks for,
// then, signed SETs it verifies with an independent JOSE library: a
// device-compliance-change when the device meets the receiver's level,
// and within a second of the device's revocation a device-compliance-
// change to not-compliant and a session-revoked, naming the device and
// its user.
func TestSharedSignals(t *testing.T) {
	ssfAddr := freeAddr(t)
	issuer := "https://" + ssfAddr
	e := startCollectorWith(t, func(c *collector.Config) {
		c.Events.SSF = collector.SSFConfig{Issuer: issuer, Listen: ssfAddr}
	})
	ctx := context.Background()
	roots := x509.NewCertPool()
	roots.AddCert(e.c.CA())
	web := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}

	added, err := e.admin.AddSSFReceiver(ctx, &posturev1.AddSSFReceiverRequest{Name: "rp", Audience: "https://rp.example", Level: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, url string, body any, want int, out any) {
		t.Helper()
		var b io.Reader
		if body != nil {
			data, _ := json.Marshal(body)
			b = bytes.NewReader(data)
		}
		req, _ := http.NewRequest(method, url, b)
		req.Header.Set("Authorization", "Bearer "+added.GetToken())
		req.Header.Set("Content-Type", "application/json")
		resp, err := web.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %s %s; want %d", method, url, resp.Status, data, want)
		}
		if out != nil {
			if err := json.Unmarshal(data, out); err != nil {
				t.Fatalf("%s %s: %s: %v", method, url, data, err)
			}
		}
	}

	// Discovery, unauthenticated.
	resp, err := web.Get(issuer + "/.well-known/ssf-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Issuer                string   `json:"issuer"`
		JWKSURI               string   `json:"jwks_uri"`
		Delivery              []string `json:"delivery_methods_supported"`
		ConfigurationEndpoint string   `json:"configuration_endpoint"`
		StatusEndpoint        string   `json:"status_endpoint"`
		VerificationEndpoint  string   `json:"verification_endpoint"`
	}
	json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if meta.Issuer != issuer || len(meta.Delivery) != 1 || meta.Delivery[0] != "urn:ietf:rfc:8935" || meta.ConfigurationEndpoint == "" {
		t.Fatalf("metadata %+v", meta)
	}
	keys, err := jwk.Fetch(ctx, meta.JWKSURI, jwk.WithHTTPClient(web))
	if err != nil || keys.Len() != 1 {
		t.Fatalf("JWKS: %v, %v", keys, err)
	}
	// No token, no stream.
	if resp, err := web.Post(meta.ConfigurationEndpoint, "application/json", strings.NewReader(`{}`)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stream creation without a token: %v %v", resp.Status, err)
	}

	rcv := &setReceiver{t: t, keys: keys, issuer: issuer, audience: "https://rp.example", wake: make(chan struct{}, 1)}
	push := httptest.NewServer(rcv)
	t.Cleanup(push.Close)
	var stream struct {
		StreamID        string   `json:"stream_id"`
		Iss             string   `json:"iss"`
		Aud             string   `json:"aud"`
		EventsDelivered []string `json:"events_delivered"`
	}
	call(http.MethodPost, meta.ConfigurationEndpoint, map[string]any{
		"delivery":         map[string]string{"method": "urn:ietf:rfc:8935", "endpoint_url": push.URL + "/events"},
		"events_requested": []string{complianceChange, sessionRevoked, verification},
	}, http.StatusCreated, &stream)
	if stream.StreamID == "" || stream.Iss != issuer || stream.Aud != "https://rp.example" || len(stream.EventsDelivered) != 3 {
		t.Fatalf("created stream %+v", stream)
	}
	var st struct{ Status string }
	call(http.MethodGet, meta.StatusEndpoint+"?stream_id="+stream.StreamID, nil, http.StatusOK, &st)
	if st.Status != "enabled" {
		t.Errorf("status %q", st.Status)
	}

	// Verification.
	call(http.MethodPost, meta.VerificationEndpoint, map[string]string{"stream_id": stream.StreamID, "state": "VGhpcyBpcyBhIHRlc3Q"}, http.StatusNoContent, nil)
	v, ok := rcv.wait(10*time.Second, verification, nil)
	if !ok {
		t.Fatal("no verification event")
	}
	if v.typ != "secevent+jwt" || v.claims.Events[verification]["state"] != "VGhpcyBpcyBhIHRlc3Q" || v.claims.SubID["format"] != "opaque" || v.claims.SubID["id"] != stream.StreamID {
		t.Errorf("verification SET %+v", v)
	}

	// A device that meets the receiver's level is compliant.
	dir, id := e.enroll()
	runAgent(t, dir, &fixedMeasurer{encrypted: true}, time.Hour)
	isDevice := func(s receivedSET) bool {
		if s.claims.SubID["format"] == "complex" {
			d, _ := s.claims.SubID["device"].(map[string]any)
			return d["id"] == id
		}
		return s.claims.SubID["id"] == id
	}
	compliant, ok := rcv.wait(10*time.Second, complianceChange, func(s receivedSET) bool {
		return isDevice(s) && s.claims.Events[complianceChange]["current_status"] == "compliant"
	})
	if !ok {
		t.Fatal("no device-compliance-change to compliant")
	}
	if ev := compliant.claims.Events[complianceChange]; ev["previous_status"] != "not-compliant" || ev["event_timestamp"] == nil || ev["initiating_entity"] != "policy" {
		t.Errorf("compliance event %v", ev)
	}

	// Bound to its user, then revoked: within a second.
	if _, err := e.admin.BindDeviceUser(ctx, &posturev1.BindDeviceUserRequest{DeviceId: id, User: &posturev1.DeviceUser{Email: "ada@example.com"}}); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "laptop stolen"}); err != nil {
		t.Fatal(err)
	}
	lost, ok := rcv.wait(time.Second, complianceChange, func(s receivedSET) bool {
		return isDevice(s) && s.claims.Events[complianceChange]["current_status"] == "not-compliant"
	})
	if !ok {
		t.Fatal("no device-compliance-change to not-compliant within a second of the revocation")
	}
	sess, ok := rcv.wait(time.Second, sessionRevoked, isDevice)
	if !ok {
		t.Fatal("no session-revoked within a second of the revocation")
	}
	t.Logf("compliance change %s and session revoked %s after the revocation", lost.at.Sub(revoked).Round(time.Millisecond), sess.at.Sub(revoked).Round(time.Millisecond))
	for _, s := range []receivedSET{lost, sess} {
		user, _ := s.claims.SubID["user"].(map[string]any)
		if s.claims.SubID["format"] != "complex" || user["format"] != "email" || user["email"] != "ada@example.com" {
			t.Errorf("subject %v; want the device and its user", s.claims.SubID)
		}
		if s.claims.Iat < revoked.Unix()-1 || s.claims.Iat > time.Now().Unix()+1 || len(s.claims.JTI) != 36 {
			t.Errorf("iat %d, jti %q", s.claims.Iat, s.claims.JTI)
		}
	}
	if r, _ := sess.claims.Events[sessionRevoked]["reason_admin"].(map[string]any); !strings.Contains(r["en"].(string), "laptop stolen") {
		t.Errorf("session-revoked reason %v", sess.claims.Events[sessionRevoked])
	}
	jtis := map[string]bool{}
	rcv.mu.Lock()
	for _, s := range rcv.sets {
		if jtis[s.claims.JTI] {
			t.Errorf("jti %s twice", s.claims.JTI)
		}
		jtis[s.claims.JTI] = true
	}
	rcv.mu.Unlock()

	// Delivery shows in the admin's listing; the receiver deletes its stream.
	list, err := e.admin.ListSSFStreams(ctx, &posturev1.ListSSFStreamsRequest{})
	if err != nil || len(list.GetStreams()) != 1 || list.GetStreams()[0].GetDelivery().GetState() != "ok" {
		t.Errorf("streams listed %v, %v", list, err)
	}
	call(http.MethodDelete, meta.ConfigurationEndpoint+"?stream_id="+stream.StreamID, nil, http.StatusNoContent, nil)
	call(http.MethodGet, meta.ConfigurationEndpoint+"?stream_id="+stream.StreamID, nil, http.StatusNotFound, nil)
}
