package agent

import (
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// retryable reports whether a rejected report's measurement should stay
// spooled and be sent again later, signed afresh on a new stream.
//
// Retryable rejections are about the moment, not the measurement: the
// device's clock (NTP may fix it), the collector's storage, the nonce,
// where the agent stands in the chain, which the next Welcome settles, or
// the device's report budget, which refills.
// Every other rejection is about the report itself, its content or its
// proof, or says the device may not report at all: sending it again would
// be refused again and hold up every measurement behind it, so it is
// dropped. A reason this agent does not know is treated the same way.
func retryable(r posturev1.RejectReason) bool {
	switch r {
	case posturev1.RejectReason_REJECT_REASON_CLOCK_SKEW,
		posturev1.RejectReason_REJECT_REASON_STORAGE,
		posturev1.RejectReason_REJECT_REASON_UNKNOWN_NONCE,
		posturev1.RejectReason_REJECT_REASON_REPLAY,
		posturev1.RejectReason_REJECT_REASON_SEQUENCE_GAP,
		posturev1.RejectReason_REJECT_REASON_RATE_LIMITED:
		return true
	}
	return false
}

// rejectReasonName is the reason as the collector counts and documents it:
// clock_skew for REJECT_REASON_CLOCK_SKEW.
func rejectReasonName(r posturev1.RejectReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REJECT_REASON_"))
}
