package collector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// errUnknownDevice reports a device ID the collector never enrolled.
var errUnknownDevice = errors.New("device is not enrolled with this collector")

// fleet is the in-memory view of every device that decisions are answered
// from. The store is the source of truth; fleet is loaded from it at start
// and updated only after the store has accepted a change.
type fleet struct {
	mu      sync.RWMutex
	devices map[string]*deviceEntry
	streams map[string]map[*reportStream]struct{}
	// reload is the policy reload under way, if any (see reassess).
	reload *pendingReload
}

// deviceEntry is what the collector keeps in memory of one device: what it
// needs to check the device's next report and to decide on the device.
// Everything else (platform, enrollment time, the report itself) is read
// from the store when someone asks. A million of these must fit in well
// under a gigabyte, so an entry holds no parsed key (report streams parse
// it once per stream), no report bytes, and shares its texts.
type deviceEntry struct {
	identityKey []byte // PKIX DER of the software key, or the TPM AK's public area; never changed in place
	lastSeq     uint64 // with lastDigest, the chain head when hasHead
	lastDigest  [sha256.Size]byte
	tpmClock    store.TPMClock
	osLine      string                  // "debian 12", from the latest report
	boot        *posturev1.MeasuredBoot // the collector's reading of that report's quote
	replay      *replayMemo             // the last event log replayed (bootState); nil for none, as for software devices
	subject     policy.Subject
	certTag     uint64 // certTag of the device certificate last issued: older ones no longer count
	prevCertTag uint64 // certTag of the one the last renewal replaced, which may only renew; 0 for none
	tpm         bool   // identity kind: TPM AK or software key
	hasHead     bool   // a report is stored
	reportsDue  uint32 // the report budget (spendReport), in seconds of the fleet's clock; accessed atomically
}

// certTag condenses a certificate serial (hex, as stored) to what an entry
// keeps: 8 bytes rather than a string per device. Only certificates of
// this collector's CA for this device reach the comparison, so a chance
// match of 64 bits does not matter.
func certTag(serialHex string) uint64 {
	sum := sha256.Sum256([]byte(serialHex))
	return binary.BigEndian.Uint64(sum[:8])
}

// prevCertTag is certTag for a previous certificate, which may be none.
func prevCertTag(serialHex string) uint64 {
	if serialHex == "" {
		return 0
	}
	return certTag(serialHex)
}

func newFleet() *fleet {
	return &fleet{devices: map[string]*deviceEntry{}, streams: map[string]map[*reportStream]struct{}{}}
}

// loaded is one device read at start, with its decision then.
type loaded struct {
	id  string
	e   *deviceEntry
	key decisionKey
}

// load fills the fleet from the store, assessing each device's latest
// report, and returns what it loaded. Decoding and assessing reports is the
// cost of a large fleet's start, so it runs on every core, each reading its
// own share of the store.
func (f *fleet) load(ctx context.Context, st *store.Store, pol *policy.Policy, now time.Time) ([][]loaded, error) {
	workers := runtime.GOMAXPROCS(0)
	found := make([][]loaded, workers)
	slabs := make([]slab, workers)
	err := st.ScanFleet(ctx, workers, func(part int, row *store.FleetRow) error {
		e, err := loadEntry(row, pol, &slabs[part])
		if err != nil {
			return err
		}
		found[part] = append(found[part], loaded{row.ID, e, keyOf(&e.subject, pol, now)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	n := 0
	for _, part := range found {
		n += len(part)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices = make(map[string]*deviceEntry, n)
	for _, part := range found {
		for _, l := range part {
			f.devices[l.id] = l.e
		}
	}
	return found, nil
}

// slab hands out entries and key bytes from large blocks while a fleet
// loads. Entries made one by one would sit among the garbage of decoding
// each report and pin it in partly used pages; packed together they do
// not. An entry is replaced only when its device enrolls again, so blocks
// stay almost fully used.
type slab struct {
	entries []deviceEntry
	bytes   []byte
}

func (s *slab) entry() *deviceEntry {
	if len(s.entries) == cap(s.entries) {
		s.entries = make([]deviceEntry, 0, 1024)
	}
	s.entries = s.entries[:len(s.entries)+1]
	return &s.entries[len(s.entries)-1]
}

func (s *slab) clone(b []byte) []byte {
	if len(b) > 1024 {
		return bytes.Clone(b)
	}
	if cap(s.bytes)-len(s.bytes) < len(b) {
		s.bytes = make([]byte, 0, 64<<10)
	}
	n := len(s.bytes)
	s.bytes = append(s.bytes, b...)
	return s.bytes[n : n+len(b) : n+len(b)]
}

// loadEntry rebuilds one device's entry from the store. Stored reports were
// verified before they were stored.
func loadEntry(row *store.FleetRow, pol *policy.Policy, sl *slab) (*deviceEntry, error) {
	e := sl.entry()
	*e = deviceEntry{
		tpm:         row.TPM,
		identityKey: sl.clone(row.IdentityKey),
		tpmClock:    row.TPMClock,
		certTag:     certTag(row.CertSerial),
		prevCertTag: prevCertTag(row.PrevCertSerial),
		subject: policy.Subject{
			State:       posturev1.DeviceState(row.State),
			StateReason: row.StateReason,
			Assurance:   posturev1.IdentityAssurance(row.Assurance),
		},
	}
	if err := e.setHead(row.LastSeq, row.LastDigest); err != nil {
		return nil, fmt.Errorf("load device %s: %w", row.ID, err)
	}
	if row.Report == nil {
		return e, nil
	}
	rep, boot, err := decodeLatest(row)
	if err != nil {
		return nil, err
	}
	e.setReport(rep, boot, row.Report.ReceivedAt, pol)
	return e, nil
}

// decodeLatest decodes a scanned device's latest report and reads measured
// boot again (storedBoot). Stored reports were verified before they were
// stored.
func decodeLatest(row *store.FleetRow) (*posturev1.PostureReport, bootState, error) {
	var rep posturev1.PostureReport
	if err := proto.Unmarshal(row.Report.Body, &rep); err != nil {
		return nil, bootState{}, fmt.Errorf("report %s/%d: %w", row.ID, row.Report.Seq, err)
	}
	boot, err := storedBoot(row)
	if err != nil {
		return nil, bootState{}, fmt.Errorf("quote %s/%d: %w", row.ID, row.Report.Seq, err)
	}
	return &rep, boot, nil
}

// setHead records the device's chain head; digest is nil before the first
// report.
func (e *deviceEntry) setHead(seq uint64, digest []byte) error {
	e.lastSeq, e.hasHead = seq, digest != nil
	if digest == nil {
		return nil
	}
	if len(digest) != sha256.Size {
		return fmt.Errorf("chain head digest is %d bytes, want %d", len(digest), sha256.Size)
	}
	copy(e.lastDigest[:], digest)
	return nil
}

// newEntry makes the entry of a device just enrolled or approved.
func newEntry(d store.Device) (*deviceEntry, error) {
	e := &deviceEntry{
		tpm:         d.Identity == "tpm",
		identityKey: d.IdentityKey,
		tpmClock:    d.TPMClock,
		certTag:     certTag(d.CertSerial),
		prevCertTag: prevCertTag(d.PrevCertSerial),
		subject: policy.Subject{
			State:       posturev1.DeviceState(d.State),
			StateReason: d.StateReason,
			Assurance:   posturev1.IdentityAssurance(d.Assurance),
		},
	}
	if err := e.setHead(d.LastSeq, d.LastDigest); err != nil {
		return nil, err
	}
	return e, nil
}

// streamKey is a device's identity key as one report stream (or one
// renewal) uses it: parsed once for the stream, not once per report, and
// not kept for devices that are not connected.
type streamKey struct {
	der []byte
	key *ecdsa.PublicKey // software identity
	ak  *attest.AK       // TPM identity
}

// load parses the device's enrolled identity key, unless k holds it
// already.
func (k *streamKey) load(e *deviceEntry) error {
	if (k.key != nil || k.ak != nil) && bytes.Equal(k.der, e.identityKey) {
		return nil
	}
	// First use, or the device enrolled again.
	*k = streamKey{der: e.identityKey}
	var err error
	if e.tpm {
		k.ak, err = attest.ParseAK(e.identityKey)
	} else {
		k.key, err = parseP256(e.identityKey)
	}
	if err != nil {
		*k = streamKey{}
		return fmt.Errorf("the enrolled identity key cannot be parsed: %w", err)
	}
	return nil
}

// verify checks a report's proof with the device's enrolled identity.
// quote is set for TPM identities.
func (k *streamKey) verify(e *deviceEntry, sr *posturev1.SignedReport) (*envelope.Verified, *attest.QuoteResult, error) {
	if err := k.load(e); err != nil {
		return nil, nil, err
	}
	if k.ak != nil {
		return envelope.VerifyTPM(k.ak, sr)
	}
	v, err := envelope.VerifySoftware(k.key, sr)
	return v, nil, err
}

// shared holds one copy of strings that many devices carry alike. OS
// lines are a few dozen bytes ("Windows 11 Pro 10.0.22631") and
// measured-boot reasons a few hundred; a fleet has a few hundred of them.
// Longer or further ones are one device's own, and it keeps them itself.
var shared = newInterner(4096, 512, 1<<20)

// replayMemo is the reading of the last event log a device's quotes
// brought and the PCR tag it was replayed for, and the last log that did
// not replay (bootState). Kept apart from the entry, so that devices
// without one (software identities) pay a pointer.
type replayMemo struct {
	reading *posturev1.MeasuredBoot // nil when no log replayed
	pcrs    [sha256.Size]byte
	failed  *replayFailure // nil when no log failed; rare, so apart again
}

// replayFailure is the reading of an event log that did not replay and
// the PCR tag it failed for.
type replayFailure struct {
	reading *posturev1.MeasuredBoot
	pcrs    [sha256.Size]byte
}

// bootState is what the entry knows of measured boot.
func (e *deviceEntry) bootState() bootState {
	b := bootState{boot: e.boot}
	if m := e.replay; m != nil {
		b.replayed, b.replayedFor = m.reading, m.pcrs
		if m.failed != nil {
			b.failed, b.failedFor = m.failed.reading, m.failed.pcrs
		}
	}
	return b
}

func (e *deviceEntry) setReport(r *posturev1.PostureReport, b bootState, at time.Time, pol *policy.Policy) {
	e.boot = b.boot
	e.replay = b.memo(e.replay)
	e.osLine = ""
	if o := r.GetOs(); o.GetMeta().GetStatus() == posturev1.Status_STATUS_OK {
		e.osLine = shared.get(o.GetName() + " " + o.GetVersion())
	}
	e.subject.Assessment = pol.AssessWith(r, at, measuredOf(b.boot))
	e.subject.ReportAt = measuredAt(r, at)
}

// measuredAt is when a report's measurement was taken: its most recent
// section, by the device's clock, and never after the collector received
// it (receivedAt), which is also the answer for a report that says
// nothing. A report the agent kept while offline and sent later is as old
// as its measurement, not as its arrival, so trust decays from then.
// Section times are read as the policy reads them (policy.EvidenceTime).
func measuredAt(r *posturev1.PostureReport, receivedAt time.Time) time.Time {
	var latest time.Time
	found := false
	for _, m := range []*posturev1.SignalMeta{r.GetOs().GetMeta(), r.GetDisk().GetMeta(), r.GetSecureBoot().GetMeta(),
		r.GetUpdates().GetMeta(), r.GetFirewall().GetMeta(), r.GetScreenLock().GetMeta(), r.GetEndpointProtection().GetMeta(),
		r.GetAutoUpdate().GetMeta(), r.GetLastInstalledUpdate().GetMeta()} {
		if t, ok := policy.EvidenceTime(m.GetObservedAt(), receivedAt); ok && (!found || t.After(latest)) {
			latest, found = t, true
		}
	}
	if !found {
		return receivedAt
	}
	return latest
}

// Most devices share one of these readings; they are never modified.
var (
	bootNoQuote    = &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "software identity: no TPM quote"}
	bootNoEventLog = &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "no TPM event log (the agent reads it as root from /sys/kernel/security/tpm0/binary_bios_measurements)"}
)

// measuredBoot replays a quote's event log against its verified PCR values.
func measuredBoot(q *posturev1.TPMQuote, pcrs map[uint32][]byte) *posturev1.MeasuredBoot {
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

func (f *fleet) get(id string) (*deviceEntry, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	return e, ok
}

// checkActive refuses devices that are unknown or revoked. Suspect devices
// may still connect: their reports are evidence an admin will want.
func (f *fleet) checkActive(id string) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	switch {
	case !ok:
		return fmt.Errorf("device %s: %w", id, errUnknownDevice)
	case e.subject.State == posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return fmt.Errorf("device %s is revoked (%s); enroll it again with a new identity if this is a mistake", id, e.subject.StateReason)
	}
	return nil
}

// errOldCertificate means a device certificate was replaced by one issued
// at a later enrollment or renewal of the device.
var errOldCertificate = errors.New("this device certificate was replaced when the device enrolled again or renewed it; only its newest certificate counts (device.crt in the agent's state directory)")

// currentCert says whether serialHex is the serial of the certificate the
// device was last issued.
func (f *fleet) currentCert(id, serialHex string) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	switch {
	case !ok:
		return fmt.Errorf("device %s: %w", id, errUnknownDevice)
	case e.certTag != certTag(serialHex):
		return errOldCertificate
	}
	return nil
}

// currentCertTag is the certTag of the certificate the device was last
// issued; 0 for a device the fleet does not know.
func (f *fleet) currentCertTag(id string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if e, ok := f.devices[id]; ok {
		return e.certTag
	}
	return 0
}

// certStanding says how a device certificate stands: the device's newest
// (nil), the one its last renewal replaced (previous: it may only ask for a
// renewal, in case the newest never reached the device), or replaced
// (errOldCertificate).
func (f *fleet) certStanding(id, serialHex string) (previous bool, err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	tag := certTag(serialHex)
	switch {
	case !ok:
		return false, fmt.Errorf("device %s: %w", id, errUnknownDevice)
	case e.certTag == tag:
		return false, nil
	case e.prevCertTag != 0 && e.prevCertTag == tag:
		return true, nil
	}
	return false, errOldCertificate
}

// setCertificates records a renewal the store accepted, as the store did: the
// certificate asked with becomes the previous one if it was the newest, and
// the issued one the newest. An enrollment that replaced the entry after
// the renewal was stored left neither, and wins, as it did in the store.
func (f *fleet) setCertificates(id, current, previous string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.devices[id]
	if !ok {
		return
	}
	e.certTag, e.prevCertTag = certTag(current), 0
	if previous != "" {
		e.prevCertTag = certTag(previous)
	}
}

// revoked says whether a device is known and revoked, and why.
func (f *fleet) revoked(id string) (bool, string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok || e.subject.State != posturev1.DeviceState_DEVICE_STATE_REVOKED {
		return false, ""
	}
	return true, e.subject.StateReason
}

// put adds or replaces the entry of a device just enrolled or approved. A
// device enrolling again keeps its latest assessment, and a revoked or
// suspect state, as the store does: one set after the enrollment's
// transaction read the device must not be undone by it.
//
// The same holds for the report chain. d is the device as the enrollment's
// or approval's transaction read it; a report committed after that read
// (later in the same writer batch, or before this put) may already be
// recorded here. The store applied that report after the enrollment, so it
// holds the report's head and TPM clock, also when the enrollment brought
// a new key and reset the clock: the entry keeps them too. Heads move only
// forward, here as in the store (see recordReport).
func (f *fleet) put(d store.Device) error {
	e, err := newEntry(d)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.devices[d.ID]; ok {
		e.osLine, e.boot, e.replay = old.osLine, old.boot, old.replay
		e.subject.Assessment, e.subject.ReportAt = old.subject.Assessment, old.subject.ReportAt
		switch old.subject.State {
		case posturev1.DeviceState_DEVICE_STATE_REVOKED, posturev1.DeviceState_DEVICE_STATE_SUSPECT:
			e.subject.State, e.subject.StateReason = old.subject.State, old.subject.StateReason
		}
		if old.headAfter(e.hasHead, e.lastSeq) {
			e.lastSeq, e.lastDigest, e.hasHead, e.tpmClock = old.lastSeq, old.lastDigest, true, old.tpmClock
		}
		e.reportsDue = atomic.LoadUint32(&old.reportsDue)
	}
	f.devices[d.ID] = e
	return nil
}

// reportBudget is how many reports a device may send: burst at once, then
// one every interval (whole seconds). The fleet keeps one number per
// device for it: the time, in seconds since start, by which the device's
// reports so far would have been spent at one per interval (the generic
// cell rate algorithm).
type reportBudget struct {
	burst    uint32
	interval uint32 // seconds
}

// spendReport takes cost reports from the device's budget at now (seconds
// since the fleet's start) and says whether there were that many, and if
// not, in how many seconds there will be.
func (f *fleet) spendReport(id string, b reportBudget, now, cost uint32) (ok bool, wait uint32) {
	f.mu.RLock()
	e, known := f.devices[id]
	f.mu.RUnlock()
	if !known {
		return true, 0 // the report is refused as from an unknown device
	}
	limit := uint64(b.burst) * uint64(b.interval) // how far ahead of now the budget may be spent
	for {
		due := atomic.LoadUint32(&e.reportsDue)
		next := uint64(max(due, now)) + uint64(cost)*uint64(b.interval)
		if next-uint64(now) > limit {
			return false, uint32(next - uint64(now) - limit)
		}
		if next > math.MaxUint32 {
			next = math.MaxUint32
		}
		if atomic.CompareAndSwapUint32(&e.reportsDue, due, uint32(next)) {
			return true, 0
		}
	}
}

// headAfter says whether the entry's chain head is past the head (hasHead,
// seq): the store's rule for a head to move (a first report, or a higher
// sequence number).
func (e *deviceEntry) headAfter(hasHead bool, seq uint64) bool {
	return e.hasHead && (!hasHead || e.lastSeq > seq)
}

// head is the device's report chain head.
func (f *fleet) head(id string) (seq uint64, digest []byte, state posturev1.DeviceState) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e := f.devices[id]
	if e.hasHead {
		digest = bytes.Clone(e.lastDigest[:])
	}
	return e.lastSeq, digest, e.subject.State
}

// bootState is what the collector knows of the device's measured boot.
func (f *fleet) bootState(id string) bootState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.devices[id].bootState()
}

// tpmClock is the TPM clock info of the device's latest quote.
func (f *fleet) tpmClock(id string) store.TPMClock {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.devices[id].tpmClock
}

// recordReport records a stored report as the device's latest. It assesses
// the report under the policy in force when it holds the fleet lock, which
// a policy reload swaps under the same lock, so no report is left assessed
// under a policy that is no longer in force.
//
// The head and TPM clock move as the store moved them: only to a report
// past the head. An enrollment or approval that read the device after this
// report was stored, and put its entry before this call, already holds the
// report's head, and the TPM clock the store kept after it (reset for a
// new key); the report's posture is still recorded. A report older than
// the head changes nothing.
func (f *fleet) recordReport(id string, v *store.Report, r *posturev1.PostureReport, boot bootState, pol *atomic.Pointer[policy.Policy]) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.devices[id]
	switch {
	case !e.hasHead || v.Seq > e.lastSeq:
		if err := e.setHead(v.Seq, v.Digest); err != nil {
			panic("verified report with a malformed digest: " + err.Error())
		}
		if v.TPM != nil {
			e.tpmClock = *v.TPM
		}
	case v.Seq < e.lastSeq:
		return
	}
	e.setReport(r, boot, v.ReceivedAt, pol.Load())
	if f.reload != nil {
		f.reload.recorded[id] = reassessed{v.Seq, f.reload.pol.AssessWith(r, v.ReceivedAt, measuredOf(e.boot))}
	}
}

func (f *fleet) setState(id string, state posturev1.DeviceState, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Revocation is final, in the store and here: a state change that
	// committed before the revocation but arrives after it is dropped.
	if e, ok := f.devices[id]; ok && e.subject.State != posturev1.DeviceState_DEVICE_STATE_REVOKED {
		e.subject.State, e.subject.StateReason = state, reason
	}
}

// subject copies what a decision needs, so it is made outside the lock.
func (f *fleet) subject(id string) (policy.Subject, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, false
	}
	return e.subject, true
}

// judged copies a device's subject together with the policy in force,
// which is what a decision needs: a reload swaps both under the fleet
// lock (see reassess), so the pair read under it always belongs together.
// A subject assessed under one policy and judged by another could meet a
// level through a check the other policy does not have.
func (f *fleet) judged(id string, pol *atomic.Pointer[policy.Policy]) (policy.Subject, *policy.Policy, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := pol.Load()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, p, false
	}
	return e.subject, p, true
}

// view copies what a device's posture is rendered from, with the policy
// in force (as judged does).
func (f *fleet) view(id string, pol *atomic.Pointer[policy.Policy]) (subj policy.Subject, p *policy.Policy, osLine string, boot *posturev1.MeasuredBoot, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p = pol.Load()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, p, "", nil, false
	}
	return e.subject, p, e.osLine, e.boot, true
}

// posture renders one device for admins and gateways: d is the device as
// stored, report its latest report when wanted.
func (c *Collector) posture(d store.Device, report *posturev1.PostureReport, now time.Time) *posturev1.DevicePosture {
	subj, pol, osLine, boot, ok := c.fleet.view(d.ID, &c.policy)
	if !ok {
		// Stored an instant before the fleet heard of it.
		subj = policy.Subject{State: posturev1.DeviceState(d.State), StateReason: d.StateReason, Assurance: posturev1.IdentityAssurance(d.Assurance)}
	}
	checks, levels, score := pol.Explain(&subj, now)
	out := &posturev1.DevicePosture{
		Device:       deviceProto(d, c.cfg.TrustDomain, osLine),
		Score:        score,
		Checks:       checks,
		Levels:       levels,
		MeasuredBoot: boot,
		Report:       report,
	}
	if subj.Assessment != nil {
		out.RawScore = subj.Assessment.RawScore()
		out.ReportAge = durationpbOf(subj.ReportAge(now))
	}
	return out
}

func (f *fleet) count() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.devices)
}

func (f *fleet) ids() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ids := make([]string, 0, len(f.devices))
	for id := range f.devices {
		ids = append(ids, id)
	}
	return ids
}

// decodeReport decodes stored report bytes; they were verified before they
// were kept.
func decodeReport(body []byte) *posturev1.PostureReport {
	if body == nil {
		return nil
	}
	var r posturev1.PostureReport
	if err := proto.Unmarshal(body, &r); err != nil {
		return nil
	}
	return &r
}

func deviceProto(d store.Device, trustDomain, osLine string) *posturev1.Device {
	out := &posturev1.Device{
		Id:          d.ID,
		SpiffeId:    pki.SPIFFEID(trustDomain, pki.RoleDevice, d.ID).String(),
		Hostname:    d.Hostname,
		Platform:    d.Platform,
		Assurance:   posturev1.IdentityAssurance(d.Assurance),
		State:       posturev1.DeviceState(d.State),
		StateReason: d.StateReason,
		EnrolledAt:  timestamppb.New(d.EnrolledAt),
		LastSeq:     d.LastSeq,
		EkSha256:    d.EKSHA256,
		Reboots:     d.Reboots,
	}
	if !d.LastSeen.IsZero() {
		out.LastSeen = timestamppb.New(d.LastSeen)
	}
	out.Os = osLine
	return out
}

// addStream registers a device's report stream, so that revocation can
// close it, and returns the device's streams registered before it.
func (f *fleet) addStream(id string, s *reportStream) (older []*reportStream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.streams[id] == nil {
		f.streams[id] = map[*reportStream]struct{}{}
	}
	for o := range f.streams[id] {
		older = append(older, o)
	}
	f.streams[id][s] = struct{}{}
	return older
}

func (f *fleet) removeStream(id string, s *reportStream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.streams[id], s)
	if len(f.streams[id]) == 0 {
		delete(f.streams, id)
	}
}

func (f *fleet) closeStreams(id string, cause error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.streams[id] {
		s.cancel(cause)
	}
}

func (f *fleet) streamCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := 0
	for _, m := range f.streams {
		n += len(m)
	}
	return n
}

func (f *fleet) closeAllStreams(cause error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.streams {
		for s := range m {
			s.cancel(cause)
		}
	}
}

// measuredOf turns the collector's measured boot into policy evidence.
func measuredOf(boot *posturev1.MeasuredBoot) *policy.Measured {
	if boot.GetStatus() != posturev1.Status_STATUS_OK {
		return nil
	}
	return &policy.Measured{SecureBootKnown: boot.GetSecureBootKnown(), SecureBoot: boot.GetSecureBoot(), Reason: boot.GetReason()}
}

// reassess assesses every device's latest report under a new policy and
// swaps it in. It reads and assesses every device's latest stored report
// without holding the fleet; meanwhile the fleet assesses every report it
// records under the new policy too (see recordReport), so the catch-up
// needs no reading. Then, under the fleet lock, every device's assessment
// is replaced by the one of its newest report found either way, and swap
// puts the policy in force, together: no decision mixes the old policy
// with new assessments, and decisions wait only for the swap. A failure
// changes nothing. Reloads run one at a time (ReloadPolicy holds
// c.reloading).
func (c *Collector) reassess(ctx context.Context, p *policy.Policy, swap func()) error {
	f := c.fleet
	if err := f.beginReload(p); err != nil {
		return err
	}
	defer f.endReload()
	workers := runtime.GOMAXPROCS(0)
	found := make([]map[string]reassessed, workers)
	for i := range found {
		found[i] = map[string]reassessed{}
	}
	// A report recorded before beginReload was stored before the scan
	// begins, so the scan reads it or a newer one; one recorded after was
	// assessed under p by recordReport.
	err := c.store.ScanFleet(ctx, workers, func(part int, row *store.FleetRow) error {
		if row.Report == nil {
			return nil
		}
		rep, boot, err := decodeLatest(row)
		if err != nil {
			return err
		}
		found[part][row.ID] = reassessed{row.Report.Seq, p.AssessWith(rep, row.Report.ReceivedAt, measuredOf(boot.boot))}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read latest reports: %w", err)
	}
	return f.finishReload(found, swap)
}

// reassessed is a device's report, by sequence number, assessed under a
// policy being reloaded.
type reassessed struct {
	seq uint64
	a   *policy.Assessment
}

// pendingReload is a policy reload under way: its policy, and the reports
// the fleet recorded since it began, assessed under it.
type pendingReload struct {
	pol      *policy.Policy
	recorded map[string]reassessed
}

func (f *fleet) beginReload(p *policy.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reload != nil {
		return errors.New("another policy reload is under way")
	}
	f.reload = &pendingReload{pol: p, recorded: map[string]reassessed{}}
	return nil
}

func (f *fleet) endReload() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reload = nil
}

// finishReload gives every assessed device the assessment of its newest
// report under the reload's policy and calls swap, under the fleet lock.
// found is what the scan read.
func (f *fleet) finishReload(found []map[string]reassessed, swap func()) error {
	type change struct {
		e *deviceEntry
		a *policy.Assessment
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	changes := make([]change, 0, len(f.devices))
	for id, e := range f.devices {
		if e.subject.Assessment == nil {
			continue // nothing assessed under the old policy; the next report is, under the new one
		}
		var best reassessed
		ok := false
		for _, m := range found {
			if got, in := m[id]; in {
				best, ok = got, true
				break
			}
		}
		if got, in := f.reload.recorded[id]; in && (!ok || got.seq > best.seq) {
			best, ok = got, true
		}
		if !ok {
			// Every assessment comes from a report the scan or the fleet
			// saw since the reload began; should one not, a device would
			// keep an assessment under the old policy.
			return fmt.Errorf("device %s: its latest report was neither read nor recorded during the reload; reload again", id)
		}
		changes = append(changes, change{e, best.a})
	}
	for _, ch := range changes {
		ch.e.subject.Assessment = ch.a
	}
	swap()
	return nil
}
