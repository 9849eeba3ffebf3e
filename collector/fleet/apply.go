package fleet

import (
	"bytes"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Assessed is what a collector knows already of a report it verified and
// stored itself: the report decoded and the measured boot read from its
// quote. Apply takes it instead of decoding the stored bytes again.
type Assessed struct {
	Report *posturev1.PostureReport
	Boot   BootState
}

// Applied says what applying an event did to a device.
type Applied struct {
	// Fresh is false for an event that changed nothing: one the fleet had
	// applied already, or one older than what it holds of the device.
	Fresh bool
	// Cause names the change for watchers: enrolled, approved, suspect,
	// revoked, active, certificate or report.
	Cause string
	// Force says watchers hear of it even when the device's decision did
	// not change (a state change, a new certificate), not only when it did.
	Force bool
	// Revoked is set when the device became revoked with this event: what
	// it has open on this collector must end.
	Revoked bool
	// Reason is the state reason the event set (the revocation's).
	Reason string
}

// Apply brings a device event the database committed into the fleet. The
// events of a device commit in the order of their IDs, so the fleet keeps,
// per device, the ID of the newest device event and of the newest report
// event it applied, and ignores older ones: the same event applied twice
// (by the collector that made the change and again as read from the
// database) changes nothing. The two are kept apart because a collector
// applies its own report at once, possibly before it read an older device
// event another collector committed (an enrollment elsewhere): that one
// must still count. What both carry, the chain head, only moves forward.
// pre, when not nil, is the report of an EventReport as its collector
// verified it.
func (f *Fleet) Apply(ev store.Event, pre *Assessed) Applied {
	switch ev.Kind {
	case store.EventReport:
		return f.applyReport(ev, pre)
	case store.EventEnrolled, store.EventApproved, store.EventState, store.EventRenewed, store.EventCertBound:
		if ev.Device != nil {
			return f.applyDevice(ev)
		}
	case store.EventStanding:
		if ev.Standing != nil {
			return f.applyStanding(ev)
		}
	case store.EventBrowserCert:
		if ev.BrowserCert != nil {
			return f.applyBrowserCert(ev)
		}
	}
	return Applied{}
}

// applyStanding takes a device's recorded standing. The newest standing
// event wins; a device event that carried a standing (a change of state
// that lost the device its levels) counts as one.
func (f *Fleet) applyStanding(ev store.Event) Applied {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.devices[ev.DeviceID]
	if !ok || ev.ID <= e.standingEvent {
		return Applied{}
	}
	st := ev.Standing.Normalize()
	e.setStanding(&st, ev.ID)
	return Applied{Fresh: true, Cause: "standing"}
}

// applyDevice takes the device as its event stored it. What only reports
// bring (the assessment, the OS line, measured boot) stays, and so does
// the report budget.
func (f *Fleet) applyDevice(ev store.Event) Applied {
	d := ev.Device
	f.mu.Lock()
	defer f.mu.Unlock()
	old, known := f.devices[d.ID]
	if known && ev.ID <= old.deviceEvent {
		return Applied{}
	}
	e := &entry{
		tpm:         d.Identity == "tpm",
		hostname:    d.Hostname,
		identityKey: d.IdentityKey,
		deviceEvent: ev.ID,
		tpmClock:    d.TPMClock,
		certTag:     CertTag(d.CertSerial, d.CertKeySHA256),
		prevCertTag: prevCertTag(d.PrevCertSerial, d.PrevCertKeySHA256),
		subject: policy.Subject{
			State:       posturev1.DeviceState(d.State),
			StateReason: d.StateReason,
			Assurance:   posturev1.IdentityAssurance(d.Assurance),
		},
	}
	if err := e.setHead(d.LastSeq, d.LastDigest); err != nil {
		// Stored heads are digests the collector computed; one of another
		// length would be a broken database.
		panic("stored device with a malformed chain head: " + err.Error())
	}
	wasRevoked := false
	if known {
		e.reportEvent = old.reportEvent
		e.osLine, e.boot, e.replay = old.osLine, old.boot, old.replay
		e.subject.Assessment, e.subject.ReportAt = old.subject.Assessment, old.subject.ReportAt
		e.reportsDue = atomic.LoadUint32(&old.reportsDue)
		e.setStanding(old.standing, old.standingEvent)
		wasRevoked = old.subject.State == posturev1.DeviceState_DEVICE_STATE_REVOKED
		if old.headAfter(e.hasHead, e.lastSeq) {
			// A report applied here already is past the head this event
			// read: the head stays, and so does that report's TPM clock,
			// unless the event brought a new key (its clock starts afresh).
			e.lastSeq, e.lastDigest, e.hasHead = old.lastSeq, old.lastDigest, true
			if bytes.Equal(old.identityKey, e.identityKey) {
				e.tpmClock = old.tpmClock
			}
		}
	}
	if ev.Standing != nil && ev.ID > e.standingEvent {
		st := ev.Standing.Normalize()
		e.setStanding(&st, ev.ID)
	}
	f.devices[d.ID] = e
	a := Applied{Fresh: true, Force: true, Reason: d.StateReason}
	switch ev.Kind {
	case store.EventEnrolled:
		a.Cause = "enrolled"
	case store.EventApproved:
		a.Cause = "approved"
	case store.EventRenewed, store.EventCertBound:
		a.Cause = "certificate"
	default:
		a.Cause = stateCause(e.subject.State)
	}
	a.Revoked = e.subject.State == posturev1.DeviceState_DEVICE_STATE_REVOKED && !wasRevoked
	return a
}

func stateCause(s posturev1.DeviceState) string {
	switch s {
	case posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return "revoked"
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return "suspect"
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return "pending"
	}
	return "active"
}

// headAfter says whether the entry's chain head is past the head (hasHead,
// seq).
func (e *entry) headAfter(hasHead bool, seq uint64) bool {
	return e.hasHead && (!hasHead || e.lastSeq > seq)
}

// applyReport makes a stored report the device's latest. It assesses the
// report under the policy in force while it holds the fleet lock, which a
// policy reload swaps under the same lock, so no report is left assessed
// under a policy that is no longer in force. The report's bytes are
// decoded outside the lock; measured boot is read from its quote with
// what the device's previous quotes left (BootState), which the lock
// guards, so that part is done under it.
func (f *Fleet) applyReport(ev store.Event, pre *Assessed) Applied {
	r := ev.Report
	if r == nil {
		return Applied{}
	}
	var (
		rep   *posturev1.PostureReport
		quote *posturev1.TPMQuote
	)
	switch {
	case pre != nil:
		rep = pre.Report
	case r.Body != nil:
		// Stored reports were verified before they were stored.
		rep = DecodeReport(r.Body)
		var q posturev1.TPMQuote
		if err := proto.Unmarshal(r.Proof, &q); err == nil && len(q.GetAttest()) > 0 {
			quote = &q
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.devices[ev.DeviceID]
	if !ok || ev.ID <= e.reportEvent {
		return Applied{}
	}
	e.reportEvent = ev.ID
	if !e.headAfter(true, r.Seq) {
		if err := e.setHead(r.Seq, r.Digest); err != nil {
			panic("stored report with a malformed digest: " + err.Error())
		}
		if r.TPM != nil {
			e.tpmClock = *r.TPM
		}
	}
	if rep == nil {
		// Pruned since (a later report is the head by then), or not a
		// report: the head moves, the posture waits for the next.
		return Applied{Fresh: true, Cause: "report"}
	}
	var boot BootState
	switch {
	case pre != nil:
		boot = pre.Boot
	case !e.tpm:
		boot = BootState{boot: MeasuredBoot(nil, nil)}
	case quote != nil:
		pcrs, _ := envelope.PCRMap(quote.GetPcrs())
		boot, _ = e.bootState().QuoteBoot(quote, pcrs)
	default:
		boot = BootState{boot: bootNoQuoteStored}
	}
	pol := f.pol.Load()
	e.setReport(rep, boot, r.ReceivedAt, pol)
	if f.reload != nil {
		f.reload.recorded[ev.DeviceID] = reassessed{r.Seq, f.reload.pol.AssessWith(rep, r.ReceivedAt, MeasuredOf(e.boot))}
	}
	return Applied{Fresh: true, Cause: "report"}
}

// bootNoQuoteStored is the reading of a TPM device's report whose stored
// proof holds no quote, which the collector never stores.
var bootNoQuoteStored = &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_ERROR, Reason: "the stored proof of this TPM device's report holds no quote"}
