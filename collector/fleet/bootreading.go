package fleet

import (
	"crypto/sha256"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A TPM agent sends its event log (15–40 KB) about once per boot rather
// than with every quote. The collector keeps its reading of the last log
// it replayed together with the PCR tag (attest.PCRTag) of the quote it
// was replayed against. A quote without a log whose PCR values have that
// tag gets that reading: the same log replays against the same values the
// same way. Any other quote without a log has no reading, and the agent is
// asked for the log.
//
// A log that does not replay is not kept as the reading for later quotes,
// but the collector remembers that it failed, and for which PCR values:
// the same log fails the same way against the same values, so quotes with
// those values get that failed reading and do not ask for the log again.
// Asking would only have the agent send it, and the collector store it,
// with every report. Quotes with other values ask again. The agent still
// sends the log with the first report of each stream, which covers a log
// read while it was still being written.

// bootNoLogForPCRs is the reading of a quote without a log whose PCR
// values differ from those of the last log replayed: the boot state
// changed and its log has not arrived yet.
var bootNoLogForPCRs = &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "no event log for these PCR values (the boot state changed since the last log replayed); the agent is asked to send it with its next report"}

// BootState is what the collector knows of a device's measured boot.
type BootState struct {
	boot        *posturev1.MeasuredBoot // the reading of the latest report's quote
	replayed    *posturev1.MeasuredBoot // the reading of the last event log replayed; nil when none was
	replayedFor [sha256.Size]byte       // the PCR tag of the quote that log came with
	failed      *posturev1.MeasuredBoot // the reading of the last event log that did not replay; nil when none
	failedFor   [sha256.Size]byte       // the PCR tag of the quote that log came with
}

// withoutLog is the reading of a quote without a log whose PCR values have
// tag, and whether to ask the agent for the log.
func (b *BootState) withoutLog(tag [sha256.Size]byte) (boot *posturev1.MeasuredBoot, wantLog bool) {
	switch {
	case b.replayed != nil && b.replayedFor == tag:
		return b.replayed, false
	case b.failed != nil && b.failedFor == tag:
		return b.failed, false
	case b.replayed == nil:
		return bootNoEventLog, true
	}
	return bootNoLogForPCRs, true
}

// QuoteBoot reads measured boot from a verified quote: its own event log
// when it carries one, otherwise what b holds for its PCR values. It
// returns the new state, and whether to ask the agent for the log.
func (b BootState) QuoteBoot(q *posturev1.TPMQuote, pcrs map[uint32][]byte) (BootState, bool) {
	tag := attest.PCRTag(pcrs)
	if len(q.GetEventLog()) > 0 {
		mb := MeasuredBoot(q, pcrs)
		if mb.GetStatus() != posturev1.Status_STATUS_OK {
			// Not the reading of later quotes, but the answer for those
			// with these PCR values: the agent is not asked again.
			return BootState{boot: mb, replayed: b.replayed, replayedFor: b.replayedFor, failed: mb, failedFor: tag}, false
		}
		return BootState{boot: mb, replayed: mb, replayedFor: tag, failed: b.failed, failedFor: b.failedFor}, false
	}
	var want bool
	b.boot, want = b.withoutLog(tag)
	return b, want
}

// memo is what a device entry keeps of b (its replayMemo): old when it
// holds the same, nil when there is nothing to keep.
func (b BootState) memo(old *replayMemo) *replayMemo {
	if b.replayed == nil && b.failed == nil {
		return nil
	}
	var failed *replayFailure
	switch {
	case b.failed == nil:
	case old != nil && old.failed != nil && old.failed.reading == b.failed && old.failed.pcrs == b.failedFor:
		failed = old.failed
	default:
		failed = &replayFailure{reading: b.failed, pcrs: b.failedFor}
	}
	if old != nil && old.reading == b.replayed && old.pcrs == b.replayedFor && old.failed == failed {
		return old
	}
	return &replayMemo{reading: b.replayed, pcrs: b.replayedFor, failed: failed}
}

// EncodeReading serializes a replayed reading and its PCR tag for the
// store (store.Report.MeasuredBoot): the tag, then the MeasuredBoot.
func EncodeReading(b BootState) ([]byte, error) {
	mb, err := proto.Marshal(b.replayed)
	if err != nil {
		return nil, fmt.Errorf("encode measured boot: %w", err)
	}
	return append(b.replayedFor[:], mb...), nil
}

// decodeReading reverses EncodeReading.
func decodeReading(data []byte) (tag [sha256.Size]byte, mb *posturev1.MeasuredBoot, err error) {
	if len(data) < sha256.Size {
		return tag, nil, fmt.Errorf("stored measured boot is %d bytes, shorter than its PCR tag", len(data))
	}
	copy(tag[:], data)
	mb = &posturev1.MeasuredBoot{}
	if err := proto.Unmarshal(data[sha256.Size:], mb); err != nil {
		return tag, nil, fmt.Errorf("stored measured boot: %w", err)
	}
	mb.Reason = shared.get(mb.Reason)
	return tag, mb, nil
}

// StoredBoot reads measured boot again at start: from the latest report's
// proof when its quote carried a log, otherwise from the device's stored
// reading when it was replayed for the quote's PCR values. Stored reports
// were verified before they were stored.
func StoredBoot(row *store.FleetRow) (BootState, error) {
	if !row.TPM {
		return BootState{boot: MeasuredBoot(nil, nil)}, nil
	}
	var b BootState
	if row.MeasuredBoot != nil {
		var err error
		if b.replayedFor, b.replayed, err = decodeReading(row.MeasuredBoot); err != nil {
			return BootState{}, err
		}
	}
	var q posturev1.TPMQuote
	if err := proto.Unmarshal(row.Report.Proof, &q); err != nil {
		return BootState{}, err
	}
	pcrs, _ := envelope.PCRMap(q.GetPcrs())
	b, _ = b.QuoteBoot(&q, pcrs)
	return b, nil
}

// Most devices share one of these readings; they are never modified.
var (
	bootNoQuote    = &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "software identity: no TPM quote"}
	bootNoEventLog = &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "no TPM event log (the agent reads it as root from /sys/kernel/security/tpm0/binary_bios_measurements)"}
)

// MeasuredBoot replays a quote's event log against its verified PCR values;
// a nil quote is a software identity's.
func MeasuredBoot(q *posturev1.TPMQuote, pcrs map[uint32][]byte) *posturev1.MeasuredBoot {
	if q == nil {
		return bootNoQuote
	}
	if len(q.GetEventLog()) == 0 {
		return bootNoEventLog
	}
	mb, err := attest.ReplayEventLog(q.GetEventLog(), pcrs)
	if err != nil {
		return &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_ERROR, Reason: err.Error()}
	}
	return &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_OK, Reason: mb.Reason, SecureBootKnown: mb.SecureBootKnown, SecureBoot: mb.SecureBoot, Events: uint32(mb.Events)}
}

// NoQuote is the state of a report without a quote (a software identity).
func NoQuote() BootState { return BootState{boot: bootNoQuote} }

// Reading is the reading of the latest report's quote.
func (b BootState) Reading() *posturev1.MeasuredBoot { return b.boot }

// Replayed says whether an event log has replayed (and its reading is
// kept for later quotes without one).
func (b BootState) Replayed() bool { return b.replayed != nil }
