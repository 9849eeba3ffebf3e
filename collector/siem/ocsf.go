package siem

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// OCSFVersion is the OCSF schema version the lines claim
// (metadata.version).
const OCSFVersion = "1.3.0"

// The OCSF classes the lines are.
const (
	// ClassDeviceConfigStateChange (Discovery category): a change of a
	// device that impacts its security: enrolled, suspect, revoked, a
	// check failing or passing, a level gained or lost, a grace ending.
	ClassDeviceConfigStateChange = 5019
	// ClassAuthorizeSession (Identity & Access Management category): an
	// access decision, the access level as the privilege assigned (status
	// Success) or refused (status Failure).
	ClassAuthorizeSession = 3003
)

// Line is one OCSF event as a JSON line. Its fields are those of the base
// event, the host profile (device) and the two classes; posture's own
// details, which no OCSF attribute holds, are under unmapped.
type Line struct {
	ActivityID   int    `json:"activity_id"`
	ActivityName string `json:"activity_name"`
	CategoryUID  int    `json:"category_uid"`
	CategoryName string `json:"category_name"`
	ClassUID     int    `json:"class_uid"`
	ClassName    string `json:"class_name"`
	TypeUID      int    `json:"type_uid"`
	TypeName     string `json:"type_name"`
	Time         int64  `json:"time"` // milliseconds since the epoch
	SeverityID   int    `json:"severity_id"`
	Severity     string `json:"severity"`
	Message      string `json:"message,omitempty"`
	StatusID     int    `json:"status_id,omitempty"`
	Status       string `json:"status,omitempty"`
	StatusDetail string `json:"status_detail,omitempty"`
	Metadata     Meta   `json:"metadata"`
	Device       Device `json:"device"`

	// Device Config State Change.
	StateID             *int            `json:"state_id,omitempty"`
	State               string          `json:"state,omitempty"`
	SecurityLevelID     *int            `json:"security_level_id,omitempty"`
	SecurityLevel       string          `json:"security_level,omitempty"`
	PrevSecurityLevelID *int            `json:"prev_security_level_id,omitempty"`
	PrevSecurityLevel   string          `json:"prev_security_level,omitempty"`
	SecurityStates      []SecurityState `json:"security_states,omitempty"`

	// Authorize Session.
	User       *User    `json:"user,omitempty"`
	Privileges []string `json:"privileges,omitempty"`

	Unmapped map[string]any `json:"unmapped,omitempty"`
}

// Meta is OCSF's metadata object.
type Meta struct {
	Version        string  `json:"version"`
	Product        Product `json:"product"`
	UID            string  `json:"uid"`                       // the message's stable ID
	CorrelationUID string  `json:"correlation_uid,omitempty"` // the change's event, on every line it made
	LoggedTime     int64   `json:"logged_time"`
}

// Product is OCSF's product object.
type Product struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
	Version    string `json:"version,omitempty"`
}

// Device is OCSF's device object.
type Device struct {
	UID      string `json:"uid"`
	Hostname string `json:"hostname,omitempty"`
	Name     string `json:"name,omitempty"`
	TypeID   int    `json:"type_id"`
	Type     string `json:"type"`
	OS       *OS    `json:"os,omitempty"`
}

// OS is OCSF's os object.
type OS struct {
	Name   string `json:"name"`
	TypeID int    `json:"type_id"`
	Type   string `json:"type"`
}

// SecurityState is OCSF's security_state object.
type SecurityState struct {
	StateID int    `json:"state_id"`
	State   string `json:"state"`
}

// User is OCSF's user object.
type User struct {
	UID       string `json:"uid,omitempty"`
	EmailAddr string `json:"email_addr,omitempty"`
	TypeID    int    `json:"type_id"`
	Type      string `json:"type"`
}

func ptr(i int) *int { return &i }

// Severities (severity_id).
var severities = map[int]string{1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

// Security levels (security_level_id).
var securityLevels = map[int]string{0: "Unknown", 1: "Secure", 2: "At Risk", 3: "Compromised"}

// osOf is the OCSF os of a platform (GOOS).
func osOf(platform string) *OS {
	switch platform {
	case "linux":
		return &OS{Name: "Linux", TypeID: 200, Type: "Linux"}
	case "darwin":
		return &OS{Name: "macOS", TypeID: 300, Type: "macOS"}
	case "windows":
		return &OS{Name: "Windows", TypeID: 100, Type: "Windows"}
	case "":
		return nil
	}
	return &OS{Name: platform, TypeID: 99, Type: "Other"}
}

// Render turns a message into its OCSF line. version is the collector's,
// for metadata.product.
func Render(m store.OutboxMessage, version string, now time.Time) (*Line, error) {
	var d store.OutboxData
	if err := json.Unmarshal(m.Data, &d); err != nil {
		return nil, fmt.Errorf("message %s: %w", m.ID, err)
	}
	l := &Line{Time: m.At.UnixMilli(),
		Metadata: Meta{Version: OCSFVersion, Product: Product{Name: "Posture", VendorName: "Posture", Version: version}, UID: m.ID, LoggedTime: now.UnixMilli()},
		Device:   Device{UID: m.DeviceID, TypeID: 0, Type: "Unknown"}}
	if m.EventID != 0 {
		l.Metadata.CorrelationUID = fmt.Sprintf("posture-event-%d", m.EventID)
	}
	if dev := d.Device; dev != nil {
		l.Device.Hostname, l.Device.Name, l.Device.OS = dev.Hostname, dev.Hostname, osOf(dev.Platform)
	}
	posture := map[string]any{"kind": m.Kind}
	if m.Kind == store.OutboxDecision {
		if err := decisionLine(l, d, posture); err != nil {
			return nil, fmt.Errorf("message %s: %w", m.ID, err)
		}
	} else {
		stateChangeLine(l, m.Kind, d, posture)
	}
	l.TypeUID = l.ClassUID*100 + l.ActivityID
	l.TypeName = l.ClassName + ": " + l.ActivityName
	l.Severity = severities[l.SeverityID]
	l.Unmapped = map[string]any{"posture": posture}
	return l, nil
}

// stateChangeLine fills a Device Config State Change (5019).
func stateChangeLine(l *Line, kind string, d store.OutboxData, posture map[string]any) {
	l.CategoryUID, l.CategoryName = 5, "Discovery"
	l.ClassUID, l.ClassName = ClassDeviceConfigStateChange, "Device Config State Change"
	l.ActivityID, l.ActivityName = 2, "Collect"
	// state_id 99 (Other): the change, named in state.
	l.StateID, l.State = ptr(99), kind
	level, prev, severity := 0, -1, 1
	var states []SecurityState
	host := ""
	if d.Device != nil {
		host = d.Device.Hostname
	}
	check, blocksAt := "", time.Time{}
	if d.Check != nil {
		check, blocksAt = d.Check.Check, d.Check.BlocksAt
	}
	id := l.Device.UID
	switch kind {
	case store.OutboxDeviceEnrolled, store.OutboxDeviceApproved, store.OutboxDeviceActive:
		level, severity = 1, 1
		l.Message = fmt.Sprintf("device %s (%s) is %s", id, host, strings.TrimPrefix(kind, "device."))
	case store.OutboxDevicePending:
		level, severity = 0, 2
		l.Message = fmt.Sprintf("device %s (%s) is pending approval", id, host)
	case store.OutboxDeviceSuspect, store.OutboxDeviceRevoked:
		level, severity = 3, 4
		if kind == store.OutboxDeviceRevoked {
			severity = 3
		}
		l.Message = fmt.Sprintf("device %s (%s) is %s: %s", id, host, strings.TrimPrefix(kind, "device."), d.Reason)
	case store.OutboxLevelGained:
		level, prev, severity = 1, 2, 1
		l.Message = fmt.Sprintf("device %s (%s) meets access level %s", id, host, d.Level)
	case store.OutboxLevelLost:
		level, prev, severity = 2, 1, 3
		l.Message = fmt.Sprintf("device %s (%s) no longer meets access level %s", id, host, d.Level)
		states = append(states, SecurityState{StateID: 2, State: "Policy mismatch"})
	case store.OutboxCheckFailing:
		level, severity = 2, 3
		l.Message = fmt.Sprintf("device %s (%s) fails check %s: %s", id, host, check, d.Reason)
		states = append(states, SecurityState{StateID: 2, State: "Policy mismatch"})
	case store.OutboxCheckPassing:
		level, severity = 1, 1
		l.Message = fmt.Sprintf("device %s (%s) passes check %s again", id, host, check)
	case store.OutboxGraceEnding:
		level, severity = 2, 3
		l.Message = fmt.Sprintf("device %s (%s): the grace of failing check %s ends at %s", id, host, check, blocksAt.UTC().Format(time.RFC3339))
		states = append(states, SecurityState{StateID: 2, State: "Policy mismatch"})
	default:
		level, severity = 0, 1
		l.Message = fmt.Sprintf("device %s: %s", id, kind)
	}
	l.SeverityID = severity
	l.SecurityLevelID, l.SecurityLevel = ptr(level), securityLevels[level]
	if prev >= 0 {
		l.PrevSecurityLevelID, l.PrevSecurityLevel = ptr(prev), securityLevels[prev]
	}
	l.SecurityStates = states
	if dev := d.Device; dev != nil {
		posture["state"], posture["assurance"] = dev.State, dev.Assurance
		if dev.StateReason != "" {
			posture["state_reason"] = dev.StateReason
		}
	}
	if d.Level != "" {
		posture["level"] = d.Level
	}
	if d.Levels != nil || kind == store.OutboxLevelLost || kind == store.OutboxLevelGained {
		posture["levels"] = d.Levels
	}
	if c := d.Check; c != nil {
		posture["check"] = c.Check
		posture["failing_since"] = c.Since.UTC().Format(time.RFC3339Nano)
		if !c.BlocksAt.IsZero() {
			posture["blocks_at"] = c.BlocksAt.UTC().Format(time.RFC3339Nano)
		}
	}
	if d.Reason != "" {
		posture["reason"] = d.Reason
	}
}

// decisionLine fills an Authorize Session (3003): the access level is the
// privilege the device's session is assigned, or refused.
func decisionLine(l *Line, d store.OutboxData, posture map[string]any) error {
	dec := d.Decision
	if dec == nil {
		return fmt.Errorf("a decision message without its decision")
	}
	l.CategoryUID, l.CategoryName = 3, "Identity & Access Management"
	l.ClassUID, l.ClassName = ClassAuthorizeSession, "Authorize Session"
	l.ActivityID, l.ActivityName = 1, "Assign Privileges"
	l.Privileges = []string{"posture access level " + dec.Level}
	var detail posturev1.Decision
	if len(dec.Detail) > 0 {
		if err := proto.Unmarshal(dec.Detail, &detail); err != nil {
			return err
		}
	}
	l.User = &User{TypeID: 0, Type: "Unknown"}
	if u := d.User; u != nil {
		l.User = &User{UID: u.Subject, EmailAddr: u.Email, TypeID: 1, Type: "User"}
		if u.Issuer != "" {
			posture["user_issuer"] = u.Issuer
		}
	}
	if dec.Allowed {
		l.StatusID, l.Status, l.SeverityID = 1, "Success", 1
		l.Message = fmt.Sprintf("device %s allowed access level %s (score %d) for %s", l.Device.UID, dec.Level, dec.Score, dec.Caller)
		if detail.GetWarned() {
			l.SeverityID = 2
			l.StatusDetail = strings.Join(detail.GetWarnings(), "; ")
			l.Message += " with a warning"
		}
	} else {
		l.StatusID, l.Status, l.SeverityID = 2, "Failure", 3
		l.StatusDetail = strings.Join(detail.GetReasons(), "; ")
		l.Message = fmt.Sprintf("device %s denied access level %s (score %d) for %s", l.Device.UID, dec.Level, dec.Score, dec.Caller)
	}
	posture["level"], posture["allowed"], posture["score"], posture["caller"], posture["collector"] = dec.Level, dec.Allowed, dec.Score, dec.Caller, dec.Collector
	posture["state"] = dec.State
	posture["decided_at"] = dec.At.UTC().Format(time.RFC3339Nano)
	if e := detail.GetEnforcement(); e != posturev1.Enforcement_ENFORCEMENT_UNSPECIFIED {
		posture["enforcement"] = strings.ToLower(strings.TrimPrefix(e.String(), "ENFORCEMENT_"))
		posture["met"] = detail.GetMet()
	}
	if detail.GetWarned() {
		posture["warnings"] = detail.GetWarnings()
	}
	if r := detail.GetReasons(); len(r) > 0 {
		posture["reasons"] = r
	}
	var failed []string
	for _, c := range detail.GetFailedChecks() {
		failed = append(failed, c.GetName())
	}
	if failed != nil {
		posture["failed_checks"] = failed
	}
	return nil
}
