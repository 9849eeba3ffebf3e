package store

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"
)

// The outbox holds what leaves Posture: a message for every change of a
// device that receivers outside it (webhooks, Shared Signals receivers,
// SIEMs) are told of, written in the same transaction as the change, so
// that a change is never committed without its message nor a message
// sent for a change that was not. Messages are derived from the change's
// event (OutboxOf), in every backend by the same function: one path for
// every change.
//
// Each message has a sequence number (its place in the outbox, issued by
// the database, committed in order) and a stable ID, a random UUID given
// when it is written, by which receivers recognise a message delivered
// twice (delivery is at least once).

// Kinds of outbox message.
const (
	OutboxDeviceEnrolled = "device.enrolled"
	OutboxDeviceApproved = "device.approved"
	OutboxDeviceSuspect  = "device.suspect"
	OutboxDeviceRevoked  = "device.revoked"
	OutboxDevicePending  = "device.pending"
	OutboxDeviceActive   = "device.active"
	OutboxLevelGained    = "level.gained"
	OutboxLevelLost      = "level.lost"
	OutboxCheckFailing   = "check.failing"
	OutboxCheckPassing   = "check.passing"
	OutboxGraceEnding    = "grace.ending"
	// OutboxDecision is an access decision a collector made (the first of
	// a run of identical ones, as its decision log keeps them).
	OutboxDecision = "decision"
	// OutboxVerification is addressed to one receiver (Receiver set): a
	// Shared Signals verification event it asked for.
	OutboxVerification = "ssf.verification"
)

// OutboxMessage is one message of the outbox.
type OutboxMessage struct {
	Seq      uint64 // its place: later messages have higher ones
	ID       string // stable: the same at every delivery
	At       time.Time
	Kind     string
	DeviceID string
	EventID  uint64 // the event it comes from; 0 for none
	// Receiver is "" for a message to every receiver, or the only one it
	// is for.
	Receiver string
	Data     []byte // JSON of OutboxData
}

// OutboxData is what a message says, as JSON in OutboxMessage.Data:
// receivers render their own formats from it.
type OutboxData struct {
	Device *OutboxDevice `json:"device,omitempty"`
	// Level is the level gained or lost.
	Level string `json:"level,omitempty"`
	// Check is the check that started failing, passes again, or whose
	// grace ends soon.
	Check *FailingCheck `json:"check,omitempty"`
	// Reason says why the check fails, or why the state changed.
	Reason string `json:"reason,omitempty"`
	// Levels are the levels the device meets after the change.
	Levels []string `json:"levels,omitempty"`
	// Decision is an access decision (OutboxDecision).
	Decision *OutboxDecisionData `json:"decision,omitempty"`
	// State is a verification's state (OutboxVerification).
	State string `json:"state,omitempty"`
	// User is the person the device is bound to, on a decision.
	User *OutboxUser `json:"user,omitempty"`
}

// OutboxUser is a device's user as a message names it (DeviceUser).
type OutboxUser struct {
	Email   string `json:"email,omitempty"`
	Issuer  string `json:"issuer,omitempty"`
	Subject string `json:"subject,omitempty"`
}

// OutboxDevice is a device as a message names it.
type OutboxDevice struct {
	ID          string `json:"id"`
	Hostname    string `json:"hostname,omitempty"`
	Platform    string `json:"platform,omitempty"`
	State       string `json:"state,omitempty"`
	StateReason string `json:"state_reason,omitempty"`
	Assurance   string `json:"assurance,omitempty"`
}

// OutboxDecisionData is a decision as a message carries it.
type OutboxDecisionData struct {
	Collector string    `json:"collector"`
	At        time.Time `json:"at"`
	Level     string    `json:"level"`
	Caller    string    `json:"caller"`
	Allowed   bool      `json:"allowed"`
	Score     uint32    `json:"score"`
	State     string    `json:"state,omitempty"`
	Detail    []byte    `json:"detail,omitempty"` // as the collector encodes it
}

// StateName is the name of a stored device state.
func StateName(s int32) string {
	switch s {
	case StateActive:
		return "active"
	case StateSuspect:
		return "suspect"
	case StateRevoked:
		return "revoked"
	case StatePending:
		return "pending"
	}
	return "unknown"
}

// AssuranceName is the name of a stored identity assurance (the values
// of posturev1.IdentityAssurance).
func AssuranceName(a int32) string {
	switch a {
	case 1:
		return "software"
	case 2:
		return "tpm_ek_pinned"
	case 3:
		return "tpm_ek_verified"
	}
	return "unknown"
}

func outboxDevice(d *Device) *OutboxDevice {
	if d == nil {
		return nil
	}
	return &OutboxDevice{ID: d.ID, Hostname: d.Hostname, Platform: d.Platform, State: StateName(d.State), StateReason: d.StateReason, Assurance: AssuranceName(d.Assurance)}
}

// OutboxOf derives the messages of a committed event: what backends
// write to the outbox in the event's transaction. prev is the device's
// standing before the event (for an event that carries a Standing).
// Messages get no Seq or ID here; the backend gives both as it writes
// them (NewMessageID).
func OutboxOf(ev Event, prev Standing) ([]OutboxMessage, error) {
	var out []OutboxMessage
	add := func(kind string, d OutboxData) error {
		b, err := json.Marshal(d)
		if err != nil {
			return fmt.Errorf("encode outbox message: %w", err)
		}
		out = append(out, OutboxMessage{At: ev.At, Kind: kind, DeviceID: ev.DeviceID, EventID: ev.ID, Data: b})
		return nil
	}
	dev := outboxDevice(ev.Device)
	switch ev.Kind {
	case EventEnrolled:
		if err := add(OutboxDeviceEnrolled, OutboxData{Device: dev}); err != nil {
			return nil, err
		}
	case EventApproved:
		if err := add(OutboxDeviceApproved, OutboxData{Device: dev}); err != nil {
			return nil, err
		}
	case EventState:
		if ev.Device != nil {
			kind := map[int32]string{StateActive: OutboxDeviceActive, StateSuspect: OutboxDeviceSuspect, StateRevoked: OutboxDeviceRevoked, StatePending: OutboxDevicePending}[ev.Device.State]
			if kind != "" {
				if err := add(kind, OutboxData{Device: dev, Reason: ev.Device.StateReason}); err != nil {
					return nil, err
				}
			}
		}
	}
	if ev.Standing != nil {
		for _, ch := range StandingChanges(prev, *ev.Standing) {
			d := OutboxData{Device: dev, Level: ch.Level, Levels: ev.Standing.Normalize().Levels}
			if ch.Level == "" {
				c := ch.Check
				d.Check = &c
				d.Reason = ev.Reasons[c.Check]
			}
			if err := add(ch.Kind, d); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// DecisionMessage is the outbox message of a saved decision that is
// announced (Decision.Announce): what SaveDecisions writes, user being
// the device's binding when it has one.
func DecisionMessage(collector string, d Decision, user *DeviceUser) (OutboxMessage, error) {
	data := OutboxData{Device: &OutboxDevice{ID: d.Device}, Decision: &OutboxDecisionData{Collector: collector, At: d.FirstAt.UTC(), Level: d.Level,
		Caller: d.Caller, Allowed: d.Allowed, Score: d.Score, State: StateName(d.State), Detail: d.Detail}}
	if user != nil {
		data.User = &OutboxUser{Email: user.Email, Issuer: user.Issuer, Subject: user.Subject}
	}
	b, err := json.Marshal(data)
	if err != nil {
		return OutboxMessage{}, fmt.Errorf("encode decision message: %w", err)
	}
	return OutboxMessage{At: d.FirstAt, Kind: OutboxDecision, DeviceID: d.Device, Data: b}, nil
}

// NewMessageID is a stable message ID: a random (version 4) UUID.
func NewMessageID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
