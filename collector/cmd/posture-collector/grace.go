package main

import (
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
