package main

import (
	"fmt"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// diffChange says what a policy diff's change does to a device at a level,
// and why: it gains or loses access, or, at a level in warn or off mode,
// keeps access but stops or starts meeting the level.
func diffChange(ch *posturev1.LevelChange) (change, why string) {
	why = "-"
	if len(ch.GetReasons()) > 0 {
		why = strings.Join(ch.GetReasons(), "; ")
	}
	if w := ch.GetWarningsCandidate(); len(w) > 0 {
		if why == "-" {
			why = strings.Join(w, "; ")
		} else {
			why += "; " + strings.Join(w, "; ")
		}
	}
	mode := strings.ToLower(strings.TrimPrefix(ch.GetEnforcementCandidate().String(), "ENFORCEMENT_"))
	switch {
	case ch.GetAllowedCandidate() && !ch.GetAllowedNow():
		if !ch.GetMetCandidate() {
			return "gains (" + mode + ": not met)", why
		}
		return "gains", why
	case !ch.GetAllowedCandidate() && ch.GetAllowedNow():
		return "loses", why
	case ch.GetMetNow() && !ch.GetMetCandidate():
		return "no longer meets (" + mode + ": still allowed)", why
	default:
		return "meets (" + mode + ")", why
	}
}

// graceText is what a check's failing-since and grace add to its reason
// in devices show.
func graceText(c *posturev1.CheckResult) string {
	if c.GetFailingSince() == nil {
		return ""
	}
	const stamp = "2006-01-02 15:04"
	s := fmt.Sprintf(" (failing since %s", c.GetFailingSince().AsTime().Local().Format(stamp))
	if b := c.GetBlocksAt(); b != nil {
		if c.GetInGrace() {
			s += fmt.Sprintf(", in grace, blocks at %s", b.AsTime().Local().Format(stamp))
		} else {
			s += fmt.Sprintf(", grace ended %s", b.AsTime().Local().Format(stamp))
		}
	}
	return s + ")"
}

// levelAllowed is a level's column in devices show: whether the device
// meets it, and the level's enforcement when it is not block.
func levelAllowed(l *posturev1.LevelResult) string {
	v := fmt.Sprint(l.GetAllowed())
	switch l.GetEnforcement() {
	case posturev1.Enforcement_ENFORCEMENT_WARN:
		v += " (warn)"
	case posturev1.Enforcement_ENFORCEMENT_OFF:
		v += " (off)"
	}
	return v
}

// userText names a device's user.
func userText(u *posturev1.DeviceUser) string {
	parts := []string{}
	if u.GetEmail() != "" {
		parts = append(parts, u.GetEmail())
	}
	if u.GetIssuer() != "" {
		parts = append(parts, u.GetSubject()+" at "+u.GetIssuer())
	}
	return strings.Join(parts, ", ")
}

// enforcementText is what check's verdict line adds for a level that does
// not block: its mode, and whether the device meets it.
func enforcementText(r *posturev1.CheckAccessResponse) string {
	switch r.GetEnforcement() {
	case posturev1.Enforcement_ENFORCEMENT_WARN, posturev1.Enforcement_ENFORCEMENT_OFF:
		met := "met"
		if !r.GetMet() {
			met = "not met"
		}
		return fmt.Sprintf(", enforcement %s: %s", strings.ToLower(strings.TrimPrefix(r.GetEnforcement().String(), "ENFORCEMENT_")), met)
	}
	return ""
}
