package policy

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// EvidenceTime is when a report's section counts as observed: its
// observed_at, set by the device, but never later than receivedAt, when the
// collector received the report. A device cannot make evidence younger
// than its arrival, so a clock set ahead, by mistake or to keep a silent
// device passing freshness rules, buys nothing past it. ok is false when
// observed_at is missing or is not a valid protobuf Timestamp (seconds
// outside years 1 to 9999, or nanos outside [0, 1e9)): such a section has
// no evidence time, so its age is unknown, and unknown never passes. Every
// use of observed_at goes through here: level expressions
// (device.evidence_age), the evidence age a decision shows per check, and
// the report's own age (the collector's measuredAt).
//
// Every valid Timestamp is a time.Time exactly, and ages taken from it with
// evidenceAge neither wrap nor go negative, whatever the year.
func EvidenceTime(observedAt *timestamppb.Timestamp, receivedAt time.Time) (t time.Time, ok bool) {
	if !observedAt.IsValid() { // false for nil too
		return time.Time{}, false
	}
	t = observedAt.AsTime()
	if t.After(receivedAt) {
		return receivedAt, true
	}
	return t, true
}

// evidenceAge is how old evidence observed at t is at now. It is never
// negative: a collector clock stepped back below t gives 0, not less, so
// no rule reads evidence as younger than new. An age longer than a time.Duration holds
// (about 292 years: evidence dated in year 1, or a decision made centuries
// after it) is the longest Duration, older than any shorter limit:
// time.Time.Sub saturates there rather than wrapping, and CEL arithmetic
// that would go past it is an error, which denies.
func evidenceAge(now, t time.Time) time.Duration {
	return max(now.Sub(t), 0)
}

// ReportAge is how old the subject's latest report is at now (see
// evidenceAge): never negative, and the longest Duration past what a
// Duration holds.
func (s *Subject) ReportAge(now time.Time) time.Duration {
	return evidenceAge(now, s.ReportAt)
}
