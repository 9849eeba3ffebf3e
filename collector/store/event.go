package store

import (
	"encoding/json"
	"fmt"
	"time"
)

// EventKind says what changed.
type EventKind string

// The kinds of event.
const (
	// EventEnrolled: a device enrolled, or enrolled again (Event.Device).
	EventEnrolled EventKind = "enrolled"
	// EventApproved: an admin approved a pending device (Event.Device).
	EventApproved EventKind = "approved"
	// EventState: a device's state changed: suspect or revoked
	// (Event.Device).
	EventState EventKind = "state"
	// EventRenewed: a device's certificate was renewed (Event.Device).
	EventRenewed EventKind = "renewed"
	// EventCertBound: the key hash of a device certificate issued before
	// keys were recorded was recorded (Event.Device).
	EventCertBound EventKind = "cert_bound"
	// EventReport: a report became its device's chain head
	// (Event.Report).
	EventReport EventKind = "report"
	// EventGatewayRevoked: gateway certificates were revoked
	// (Event.Serials, Event.Reason).
	EventGatewayRevoked EventKind = "gateway_revoked"
	// EventStanding: a device's recorded standing changed (Event.Standing;
	// Event.Device is the device as stored).
	EventStanding EventKind = "standing"
)

// Event is one committed change, as every collector applies it. Events of
// one device are committed in the order of their IDs, so the newest event
// of a device says how it stands.
type Event struct {
	ID       uint64    // issued by the database; 0 for no event
	At       time.Time // when the change was made; a report's, when it was received
	Kind     EventKind
	DeviceID string // empty for gateway events
	// Device is the device as stored after the change, for device events.
	Device *Device
	// Report is the report of an EventReport, as stored: Body, Proof and
	// Nonce are read back with the event, and are nil once the report was
	// pruned (a later report of the device is its head by then).
	Report *Report
	// Serials and Reason are the gateway certificates an
	// EventGatewayRevoked revoked, and why.
	Serials []string
	Reason  string
	// Standing is the device's recorded standing after the change: set by
	// an EventStanding, and by a device event whose change of state lost
	// the device its levels (StandingInState).
	Standing *Standing
	// Reasons say why the failing checks of Standing fail, by check, for
	// the messages the change sends (OutboxOf); not kept with the event.
	Reasons map[string]string
	// BrowserCert is the certificate an EventBrowserCert recorded.
	BrowserCert *BrowserCert
}

// eventData is what an event row keeps besides its ID, time, kind and
// device: the change, as JSON (small, readable in the database, and the
// same in every backend). A report's bytes stay in the report's row.
type eventData struct {
	Device   *Device      `json:"device,omitempty"`
	Report   *reportEvent `json:"report,omitempty"`
	Serials  []string     `json:"serials,omitempty"`
	Reason   string       `json:"reason,omitempty"`
	Standing *Standing    `json:"standing,omitempty"`
	Browser  *BrowserCert `json:"browser_cert,omitempty"`
}

type reportEvent struct {
	Seq          uint64    `json:"seq"`
	Digest       []byte    `json:"digest"`
	ReceivedAt   time.Time `json:"received_at"`
	TPM          *TPMClock `json:"tpm,omitempty"`
	Reboot       bool      `json:"reboot,omitempty"`
	MeasuredBoot []byte    `json:"measured_boot,omitempty"`
}

// EncodeEventData encodes what an event row keeps of ev besides its ID,
// time, kind and device. Backends call it; the encoding is theirs to keep
// but the same for all.
func EncodeEventData(ev Event) ([]byte, error) {
	d := eventData{Device: ev.Device, Serials: ev.Serials, Reason: ev.Reason, Standing: ev.Standing, Browser: ev.BrowserCert}
	if r := ev.Report; r != nil {
		d.Report = &reportEvent{Seq: r.Seq, Digest: r.Digest, ReceivedAt: r.ReceivedAt.UTC(), TPM: r.TPM, Reboot: r.Reboot, MeasuredBoot: r.MeasuredBoot}
	}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b, nil
}

// DecodeEventData fills ev from an event row's data (EncodeEventData).
// A report event's Body, Proof and Nonce come from the report's row, which
// the backend reads with it.
func DecodeEventData(data []byte, ev *Event) error {
	var d eventData
	if err := json.Unmarshal(data, &d); err != nil {
		return fmt.Errorf("decode event %d: %w", ev.ID, err)
	}
	ev.Device, ev.Serials, ev.Reason, ev.Standing, ev.BrowserCert = d.Device, d.Serials, d.Reason, d.Standing, d.Browser
	if r := d.Report; r != nil {
		ev.Report = &Report{DeviceID: ev.DeviceID, Seq: r.Seq, Digest: r.Digest, ReceivedAt: r.ReceivedAt, TPM: r.TPM, Reboot: r.Reboot, MeasuredBoot: r.MeasuredBoot}
	}
	return nil
}
