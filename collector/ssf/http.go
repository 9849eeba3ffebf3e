package ssf

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/posture-project/posture/collector/store"
)

// Paths of the transmitter's endpoints below its issuer URL.
const (
	PathConfiguration = "/.well-known/ssf-configuration"
	PathJWKS          = "/ssf/jwks"
	PathStreams       = "/ssf/streams"
	PathStatus        = "/ssf/status"
	PathVerify        = "/ssf/verify"
)

// Metadata is the transmitter's configuration metadata (SSF 1.0 section
// 7.1).
type Metadata struct {
	SpecVersion              string              `json:"spec_version"`
	Issuer                   string              `json:"issuer"`
	JWKSURI                  string              `json:"jwks_uri"`
	DeliveryMethodsSupported []string            `json:"delivery_methods_supported"`
	ConfigurationEndpoint    string              `json:"configuration_endpoint"`
	StatusEndpoint           string              `json:"status_endpoint"`
	VerificationEndpoint     string              `json:"verification_endpoint"`
	AuthorizationSchemes     []map[string]string `json:"authorization_schemes"`
	DefaultSubjects          string              `json:"default_subjects"`
}

// Metadata is what /.well-known/ssf-configuration says.
func (t *Transmitter) Metadata() Metadata {
	return Metadata{
		SpecVersion:              "1_0",
		Issuer:                   t.Issuer(),
		JWKSURI:                  t.endpoint(PathJWKS),
		DeliveryMethodsSupported: []string{DeliveryPush},
		ConfigurationEndpoint:    t.endpoint(PathStreams),
		StatusEndpoint:           t.endpoint(PathStatus),
		VerificationEndpoint:     t.endpoint(PathVerify),
		AuthorizationSchemes:     []map[string]string{{"spec_urn": "urn:ietf:rfc:6750"}},
		// Every device the stream's level concerns: a receiver does not
		// add subjects one by one.
		DefaultSubjects: "ALL",
	}
}

// streamConfig is a stream as the management API shows it (SSF 1.0
// section 8.1.1).
type streamConfig struct {
	StreamID        string   `json:"stream_id"`
	Iss             string   `json:"iss"`
	Aud             string   `json:"aud"`
	Delivery        delivery `json:"delivery"`
	EventsSupported []string `json:"events_supported"`
	EventsRequested []string `json:"events_requested"`
	EventsDelivered []string `json:"events_delivered"`
	Description     string   `json:"description,omitempty"`
}

type delivery struct {
	Method              string `json:"method"`
	EndpointURL         string `json:"endpoint_url"`
	AuthorizationHeader string `json:"authorization_header,omitempty"`
}

func (t *Transmitter) config(s Stream) streamConfig {
	req := s.EventsRequested
	if req == nil {
		req = []string{}
	}
	return streamConfig{StreamID: s.ID, Iss: t.Issuer(), Aud: s.Audience,
		Delivery:        delivery{Method: DeliveryPush, EndpointURL: s.EndpointURL, AuthorizationHeader: s.Authorization},
		EventsSupported: Supported, EventsRequested: req, EventsDelivered: s.Delivered(), Description: s.Description}
}

// Handler serves the transmitter's endpoints: the configuration metadata
// and JWKS to anyone, stream management to receivers by their bearer
// token.
func (t *Transmitter) Handler() http.Handler {
	mux := http.NewServeMux()
	base := t.issuer.Path
	mux.HandleFunc("GET "+PathConfiguration+base, t.serveMetadata)
	if base != "" {
		mux.HandleFunc("GET "+base+PathConfiguration, t.serveMetadata)
	}
	mux.HandleFunc("GET "+base+PathJWKS, t.serveJWKS)
	mux.HandleFunc(base+PathStreams, t.authorized(t.serveStreams))
	mux.HandleFunc(base+PathStatus, t.authorized(t.serveStatus))
	mux.HandleFunc("POST "+base+PathVerify, t.authorized(t.serveVerify))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func (t *Transmitter) serveMetadata(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, t.Metadata())
}

func (t *Transmitter) serveJWKS(w http.ResponseWriter, r *http.Request) {
	keys, err := t.cfg.Store.SigningKeys(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, "the keys cannot be read now; try again")
		return
	}
	set := struct {
		Keys []json.RawMessage `json:"keys"`
	}{Keys: []json.RawMessage{}}
	for _, k := range keys {
		set.Keys = append(set.Keys, json.RawMessage(k.JWK))
	}
	writeJSON(w, http.StatusOK, set)
}

// authorized admits requests with a receiver's bearer token and hands the
// handler its client.
func (t *Transmitter) authorized(h func(http.ResponseWriter, *http.Request, store.SSFClient)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="posture-ssf"`)
			fail(w, http.StatusUnauthorized, "send the receiver's token as Authorization: Bearer TOKEN (posture-collector ssf receiver add makes one)")
			return
		}
		clients, err := t.cfg.Store.SSFClients(r.Context())
		if err != nil {
			fail(w, http.StatusInternalServerError, "the receivers cannot be read now; try again")
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		found := -1
		// Every hash is compared: timing tells nothing of which matched.
		for i, c := range clients {
			if subtle.ConstantTimeCompare(sum[:], c.TokenHash) == 1 {
				found = i
			}
		}
		if found < 0 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="posture-ssf", error="invalid_token"`)
			fail(w, http.StatusUnauthorized, "the token is not one of this transmitter's receivers")
			return
		}
		h(w, r, clients[found])
	}
}

// maxBody bounds a management request.
const maxBody = 64 << 10

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(v); err != nil {
		fail(w, http.StatusBadRequest, "the body is not the JSON expected: "+err.Error())
		return false
	}
	return true
}

func (t *Transmitter) streamError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNoStream):
		fail(w, http.StatusNotFound, "no stream with this stream_id belongs to this receiver")
	case errors.Is(err, ErrInvalid):
		fail(w, http.StatusBadRequest, err.Error())
	default:
		t.cfg.Logger.Error("SSF stream management", "err", err)
		fail(w, http.StatusInternalServerError, "the stream could not be changed now; try again")
	}
}

// streamRequest is a create or update body.
type streamRequest struct {
	StreamID        string    `json:"stream_id"`
	Delivery        *delivery `json:"delivery"`
	EventsRequested []string  `json:"events_requested"`
	Description     *string   `json:"description"`
}

func (t *Transmitter) serveStreams(w http.ResponseWriter, r *http.Request, c store.SSFClient) {
	ctx := r.Context()
	switch r.Method {
	case http.MethodPost:
		var req streamRequest
		if !decode(w, r, &req) {
			return
		}
		if req.Delivery == nil || (req.Delivery.Method != "" && req.Delivery.Method != DeliveryPush) {
			fail(w, http.StatusBadRequest, "delivery.method must be "+DeliveryPush+" (push), with delivery.endpoint_url")
			return
		}
		ns := NewStream{EndpointURL: req.Delivery.EndpointURL, Authorization: req.Delivery.AuthorizationHeader, EventsRequested: req.EventsRequested}
		if req.Description != nil {
			ns.Description = *req.Description
		}
		s, err := t.CreateStream(ctx, c, ns)
		if err != nil {
			t.streamError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, t.config(s))
	case http.MethodGet:
		if id := r.URL.Query().Get("stream_id"); id != "" {
			s, err := t.Stream(ctx, id, c.Name)
			if err != nil {
				t.streamError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, t.config(s))
			return
		}
		states, err := t.Streams(ctx, c.Name)
		if err != nil {
			t.streamError(w, err)
			return
		}
		out := []streamConfig{}
		for _, st := range states {
			out = append(out, t.config(st.Stream))
		}
		writeJSON(w, http.StatusOK, out)
	case http.MethodPatch, http.MethodPut:
		var req streamRequest
		if !decode(w, r, &req) {
			return
		}
		s, err := t.Stream(ctx, req.StreamID, c.Name)
		if err != nil {
			t.streamError(w, err)
			return
		}
		if r.Method == http.MethodPut {
			// A replacement: what it leaves out is reset.
			s.EventsRequested, s.Description, s.Authorization = nil, "", ""
			if req.Delivery == nil {
				fail(w, http.StatusBadRequest, "a replacement (PUT) needs delivery")
				return
			}
		}
		if req.Delivery != nil {
			if req.Delivery.Method != "" && req.Delivery.Method != DeliveryPush {
				fail(w, http.StatusBadRequest, "delivery.method must be "+DeliveryPush)
				return
			}
			s.EndpointURL, s.Authorization = req.Delivery.EndpointURL, req.Delivery.AuthorizationHeader
		}
		if req.EventsRequested != nil {
			s.EventsRequested = req.EventsRequested
		}
		if req.Description != nil {
			s.Description = *req.Description
		}
		if err := t.UpdateStream(ctx, s); err != nil {
			t.streamError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, t.config(s))
	case http.MethodDelete:
		if err := t.DeleteStream(ctx, r.URL.Query().Get("stream_id"), c.Name); err != nil {
			t.streamError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, POST, PATCH, PUT, DELETE")
		fail(w, http.StatusMethodNotAllowed, "use GET, POST, PATCH, PUT or DELETE")
	}
}

type statusBody struct {
	StreamID string `json:"stream_id"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

func (t *Transmitter) serveStatus(w http.ResponseWriter, r *http.Request, c store.SSFClient) {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		s, err := t.Stream(ctx, r.URL.Query().Get("stream_id"), c.Name)
		if err != nil {
			t.streamError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, statusBody{StreamID: s.ID, Status: s.Status, Reason: s.Reason})
	case http.MethodPost:
		var req statusBody
		if !decode(w, r, &req) {
			return
		}
		s, err := t.Stream(ctx, req.StreamID, c.Name)
		if err != nil {
			t.streamError(w, err)
			return
		}
		s.Status, s.Reason = req.Status, req.Reason
		if err := t.UpdateStream(ctx, s); err != nil {
			t.streamError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, statusBody{StreamID: s.ID, Status: s.Status, Reason: s.Reason})
	default:
		w.Header().Set("Allow", "GET, POST")
		fail(w, http.StatusMethodNotAllowed, "use GET or POST")
	}
}

func (t *Transmitter) serveVerify(w http.ResponseWriter, r *http.Request, c store.SSFClient) {
	var req struct {
		StreamID string `json:"stream_id"`
		State    string `json:"state"`
	}
	if !decode(w, r, &req) {
		return
	}
	if len(req.State) > 1024 {
		fail(w, http.StatusBadRequest, "state is longer than 1024 bytes")
		return
	}
	if err := t.Verify(r.Context(), req.StreamID, c.Name, req.State); err != nil {
		t.streamError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
