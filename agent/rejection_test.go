package agent

import (
	"testing"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func TestRetryable(t *testing.T) {
	want := map[string]bool{
		"unspecified":          false,
		"malformed":            false,
		"unknown_nonce":        true,
		"bad_signature":        false,
		"device_mismatch":      false,
		"replay":               true,
		"sequence_gap":         true,
		"chain_broken":         false,
		"clock_skew":           true,
		"storage":              true,
		"revoked":              false,
		"bad_quote":            false,
		"tpm_clock":            false,
		"quote_not_for_report": false,
		"pcr_mismatch":         false,
		"rate_limited":         true,
	}
	// Every reason in the contract has a decision here, so a new one gets
	// a deliberate one.
	for n := range posturev1.RejectReason_name {
		r := posturev1.RejectReason(n)
		t.Run(rejectReasonName(r), func(t *testing.T) {
			w, ok := want[rejectReasonName(r)]
			if !ok {
				t.Fatalf("no decision for %v: is it about the moment (retryable) or about the report?", r)
			}
			if got := retryable(r); got != w {
				t.Errorf("retryable(%v) = %v, want %v", r, got, w)
			}
		})
	}
	if retryable(posturev1.RejectReason(1000)) {
		t.Error("a reason unknown to the agent is retryable; it would hold up the spool")
	}
}
