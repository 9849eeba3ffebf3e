package ssf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/store"
)

// Subject is a SET's sub_id (RFC 9493 subject identifiers): the device,
// opaque, alone or with its user in a complex subject.
type Subject struct {
	Format string   `json:"format"`
	ID     string   `json:"id,omitempty"`    // opaque
	Email  string   `json:"email,omitempty"` // email
	Iss    string   `json:"iss,omitempty"`   // iss_sub
	Sub    string   `json:"sub,omitempty"`   // iss_sub
	Device *Subject `json:"device,omitempty"`
	User   *Subject `json:"user,omitempty"`
}

// Claims are a SET's claims.
type Claims struct {
	Issuer   string                    `json:"iss"`
	JTI      string                    `json:"jti"`
	IssuedAt int64                     `json:"iat"`
	Audience string                    `json:"aud"`
	TxnID    string                    `json:"txn,omitempty"`
	SubID    *Subject                  `json:"sub_id"`
	Events   map[string]map[string]any `json:"events"`
}

// subject names the device of a message, with its user when it is bound
// to one.
func (t *Transmitter) subject(ctx context.Context, deviceID string) (*Subject, error) {
	device := &Subject{Format: "opaque", ID: deviceID}
	u, err := t.cfg.Store.DeviceUser(ctx, deviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return device, nil
	case err != nil:
		return nil, err
	}
	user := &Subject{Format: "email", Email: u.Email}
	if u.Issuer != "" && u.Subject != "" {
		user = &Subject{Format: "iss_sub", Iss: u.Issuer, Sub: u.Subject}
	}
	return &Subject{Format: "complex", Device: device, User: user}, nil
}

// Claims makes the claims of the SET a message is for stream s.
func (t *Transmitter) Claims(ctx context.Context, s Stream, m store.OutboxMessage) (*Claims, error) {
	var d store.OutboxData
	if err := json.Unmarshal(m.Data, &d); err != nil {
		return nil, fmt.Errorf("message %s: %w", m.ID, err)
	}
	c := &Claims{Issuer: t.Issuer(), JTI: m.ID, IssuedAt: t.cfg.Now().Unix(), Audience: s.Audience, TxnID: fmt.Sprintf("posture-%d", m.EventID)}
	if m.EventID == 0 {
		c.TxnID = ""
	}
	at := m.At.Unix()
	switch m.Kind {
	case store.OutboxVerification:
		c.SubID = &Subject{Format: "opaque", ID: s.ID}
		ev := map[string]any{}
		if d.State != "" {
			ev["state"] = d.State
		}
		c.Events = map[string]map[string]any{EventVerification: ev}
		return c, nil
	case store.OutboxLevelGained, store.OutboxLevelLost:
		cur, prev := "compliant", "not-compliant"
		reason := fmt.Sprintf("the device meets access level %s", d.Level)
		if m.Kind == store.OutboxLevelLost {
			cur, prev = prev, cur
			reason = fmt.Sprintf("the device no longer meets access level %s", d.Level)
			if dev := d.Device; dev != nil && dev.State != "active" && dev.State != "" {
				reason += fmt.Sprintf(": it is %s", dev.State)
				if dev.StateReason != "" {
					reason += " (" + dev.StateReason + ")"
				}
			}
		}
		c.Events = map[string]map[string]any{EventComplianceChange: {
			"event_timestamp":   at,
			"initiating_entity": "policy",
			"current_status":    cur,
			"previous_status":   prev,
			"reason_admin":      map[string]string{"en": reason},
		}}
	case store.OutboxDeviceRevoked:
		reason := "the device was revoked"
		if d.Reason != "" {
			reason += ": " + d.Reason
		}
		c.Events = map[string]map[string]any{EventSessionRevoked: {
			"event_timestamp":   at,
			"initiating_entity": "admin",
			"reason_admin":      map[string]string{"en": reason},
		}}
	default:
		return nil, fmt.Errorf("message %s of kind %s is not sent to Shared Signals receivers", m.ID, m.Kind)
	}
	sub, err := t.subject(ctx, m.DeviceID)
	if err != nil {
		return nil, err
	}
	c.SubID = sub
	return c, nil
}

// Sign makes a SET: the claims signed with the collector's key (RS256,
// typ secevent+jwt, kid its thumbprint), in compact form.
func (t *Transmitter) Sign(c *Claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	signer, err := t.cfg.Key.signer()
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("sign SET: %w", err)
	}
	return jws.CompactSerialize()
}

// pusher delivers a stream's SETs by RFC 8935 push.
type pusher struct {
	t *Transmitter
	s Stream
}

// Send posts one SET per message, in order.
func (p *pusher) Send(ctx context.Context, msgs []store.OutboxMessage) (int, error) {
	for i, m := range msgs {
		if err := p.push(ctx, m); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

func (p *pusher) push(ctx context.Context, m store.OutboxMessage) error {
	claims, err := p.t.Claims(ctx, p.s, m)
	if err != nil {
		return err
	}
	set, err := p.t.Sign(claims)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.s.EndpointURL, strings.NewReader(set))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/secevent+jwt")
	req.Header.Set("Accept", "application/json")
	if p.s.Authorization != "" {
		req.Header.Set("Authorization", p.s.Authorization)
	}
	resp, err := p.t.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("push to %s: %w", p.s.EndpointURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		// RFC 8935 says 202 Accepted; other successes are taken as it.
		return nil
	case resp.StatusCode == http.StatusBadRequest:
		// The receiver refused this SET (RFC 8935 section 2.3): sending it
		// again cannot help.
		var e struct {
			Err         string `json:"err"`
			Description string `json:"description"`
		}
		json.Unmarshal(body, &e)
		return fmt.Errorf("%s refused SET %s: %s %s: %w", p.s.EndpointURL, m.ID, e.Err, e.Description, outbox.ErrRejected)
	}
	return fmt.Errorf("push to %s: %s: %s", p.s.EndpointURL, resp.Status, bytes.TrimSpace(body))
}
