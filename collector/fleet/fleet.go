// Package fleet is a collector's memory of every device: what decisions
// are answered from and what the next report of a device is checked
// against. The database is the source of truth; the fleet is loaded from
// it at start and changes only by applying the events the database
// committed (Apply), whichever collector made the change.
package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var (
	// ErrUnknownDevice reports a device ID the collector never enrolled.
	ErrUnknownDevice = errors.New("device is not enrolled with this collector")
	// ErrOldCertificate means a device certificate was replaced by one
	// issued at a later enrollment or renewal of the device.
	ErrOldCertificate = errors.New("this device certificate was replaced when the device enrolled again or renewed it, or the collector did not issue it with this serial and key; only its newest certificate counts (device.crt in the agent's state directory)")
	// ErrRevoked ends what a revoked device had open; it is wrapped with
	// the revocation's reason.
	ErrRevoked = errors.New("device revoked")
)

// Fleet is the in-memory view of every device.
type Fleet struct {
	mu      sync.RWMutex
	devices map[string]*entry
	pol     atomic.Pointer[policy.Policy] // swapped under mu by Reload
	streams map[string]map[*Stream]struct{}
	// browser holds the browser certificates by device and user
	// (browser.go); nil until one is recorded.
	browser map[string]map[string]browserCert
	// reload is the policy reload under way, if any (see Reload).
	reload *pendingReload
	budget Budget
	// started is the budgets' clock: seconds count from it.
	started time.Time
}

// entry is what a collector keeps in memory of one device: what it needs
// to check the device's next report and to decide on the device.
// Everything else (platform, enrollment time, the report itself) is read
// from the store when someone asks. A million of these must fit in well
// under a gigabyte, so an entry holds no parsed key (report streams parse
// it once per stream), no report bytes, and shares its texts.
type entry struct {
	identityKey []byte // PKIX DER of the software key, or the TPM AK's public area; never changed in place
	deviceEvent uint64 // the newest device event applied (Apply)
	reportEvent uint64 // the newest report event applied
	lastSeq     uint64 // with lastDigest, the chain head when hasHead
	lastDigest  [sha256.Size]byte
	tpmClock    store.TPMClock
	osLine      string                  // "debian 12", from the latest report
	hostname    string                  // as enrolled: the console lists and searches by it
	boot        *posturev1.MeasuredBoot // the collector's reading of that report's quote
	replay      *replayMemo             // the last event log replayed (BootState); nil for none, as for software devices
	subject     policy.Subject
	// standing is the device's recorded standing (nil for the zero one),
	// which subject.Failing mirrors for decisions; standingEvent is the
	// event that set it (0 when loaded).
	standing      *store.Standing
	standingEvent uint64
	certTag       uint64 // CertTag of the device certificate last issued: older ones no longer count
	prevCertTag   uint64 // CertTag of the one the last renewal replaced, which may only renew; 0 for none
	tpm           bool   // identity kind: TPM AK or software key
	hasHead       bool   // a report is stored
	reportsDue    uint32 // the report budget (SpendReport), in seconds of the fleet's clock; accessed atomically
}

// CertTag condenses a device certificate, by its serial (hex, as stored)
// and the SHA-256 of its public key (nil when not recorded), to what an
// entry keeps: 8 bytes rather than a string and a hash per device (see
// pki.CertTag). Only certificates of the collector's CA for this device
// reach the comparison, so a chance match of 64 bits does not matter. It
// is also the certificate_tag of watch events.
func CertTag(serialHex string, keySHA256 []byte) uint64 {
	return pki.CertTag(serialHex, keySHA256)
}

// prevCertTag is CertTag for a previous certificate, which may be none.
func prevCertTag(serialHex string, keySHA256 []byte) uint64 {
	if serialHex == "" {
		return 0
	}
	return CertTag(serialHex, keySHA256)
}

// Budget is how many reports a device may send: Burst at once, then one
// every Interval (whole seconds). The fleet keeps one number per device
// for it: the time, in seconds since the fleet started, by which the
// device's reports so far would have been spent at one per interval (the
// generic cell rate algorithm). Budgets are this collector's: a device
// reporting to two collectors has a budget with each.
type Budget struct {
	Burst    uint32
	Interval uint32 // seconds
}

// New makes an empty fleet judged by pol, whose report budgets start at
// started.
func New(pol *policy.Policy, budget Budget, started time.Time) *Fleet {
	f := &Fleet{devices: map[string]*entry{}, streams: map[string]map[*Stream]struct{}{}, budget: budget, started: started}
	f.pol.Store(pol)
	return f
}

// Policy is the policy in force.
func (f *Fleet) Policy() *policy.Policy { return f.pol.Load() }

// Loaded is told of every device Load read, from the goroutine of its
// share of the store (part), with its subject and the policy in force.
type Loaded func(part int, id string, subj *policy.Subject, pol *policy.Policy)

// Scanner reads every device with its latest report (store.Store's
// ScanFleet).
type Scanner interface {
	ScanFleet(ctx context.Context, parts int, fn func(part int, row *store.FleetRow) error) error
}

// Loader is what Load reads: every device with its latest report, and
// the recorded standings (store.Store's Standings).
type Loader interface {
	Scanner
	Standings(ctx context.Context, fn func(id string, s store.Standing) error) error
}

// Load fills the fleet from the store, assessing each device's latest
// report with its recorded standing, and tells seen of each. Decoding and
// assessing reports is the cost of a large fleet's start, so it runs on
// every core, each reading its own share of the store.
func (f *Fleet) Load(ctx context.Context, st Loader, seen Loaded) error {
	standings := map[string]*store.Standing{}
	if err := st.Standings(ctx, func(id string, s store.Standing) error {
		standings[id] = &s
		return nil
	}); err != nil {
		return fmt.Errorf("load standings: %w", err)
	}
	workers := runtime.GOMAXPROCS(0)
	type found struct {
		id string
		e  *entry
	}
	parts := make([][]found, workers)
	slabs := make([]slab, workers)
	pol := f.pol.Load()
	err := st.ScanFleet(ctx, workers, func(part int, row *store.FleetRow) error {
		e, err := loadEntry(row, pol, &slabs[part])
		if err != nil {
			return err
		}
		// Read-only: every part looks its own devices up.
		e.setStanding(standings[row.ID], 0)
		parts[part] = append(parts[part], found{row.ID, e})
		if seen != nil {
			seen(part, row.ID, &e.subject, pol)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load devices: %w", err)
	}
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices = make(map[string]*entry, n)
	for _, p := range parts {
		for _, l := range p {
			f.devices[l.id] = l.e
		}
	}
	return nil
}

// slab hands out entries and key bytes from large blocks while a fleet
// loads. Entries made one by one would sit among the garbage of decoding
// each report and pin it in partly used pages; packed together they do
// not. An entry is replaced only when its device enrolls again, so blocks
// stay almost fully used.
type slab struct {
	entries []entry
	bytes   []byte
}

func (s *slab) entry() *entry {
	if len(s.entries) == cap(s.entries) {
		s.entries = make([]entry, 0, 1024)
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
func loadEntry(row *store.FleetRow, pol *policy.Policy, sl *slab) (*entry, error) {
	e := sl.entry()
	*e = entry{
		tpm:         row.TPM,
		hostname:    row.Hostname,
		identityKey: sl.clone(row.IdentityKey),
		tpmClock:    row.TPMClock,
		certTag:     CertTag(row.CertSerial, row.CertKeySHA256),
		prevCertTag: prevCertTag(row.PrevCertSerial, row.PrevCertKeySHA256),
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
	rep, boot, err := DecodeLatest(row)
	if err != nil {
		return nil, err
	}
	e.setReport(rep, boot, row.Report.ReceivedAt, pol)
	return e, nil
}

// DecodeLatest decodes a scanned device's latest report and reads measured
// boot again (StoredBoot). Stored reports were verified before they were
// stored.
func DecodeLatest(row *store.FleetRow) (*posturev1.PostureReport, BootState, error) {
	var rep posturev1.PostureReport
	if err := proto.Unmarshal(row.Report.Body, &rep); err != nil {
		return nil, BootState{}, fmt.Errorf("report %s/%d: %w", row.ID, row.Report.Seq, err)
	}
	boot, err := StoredBoot(row)
	if err != nil {
		return nil, BootState{}, fmt.Errorf("quote %s/%d: %w", row.ID, row.Report.Seq, err)
	}
	return &rep, boot, nil
}

// setHead records the device's chain head; digest is nil before the first
// report.
func (e *entry) setHead(seq uint64, digest []byte) error {
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

// shared holds one copy of strings that many devices carry alike. OS
// lines are a few dozen bytes ("Windows 11 Pro 10.0.22631") and
// measured-boot reasons a few hundred; a fleet has a few hundred of them.
// Longer or further ones are one device's own, and it keeps them itself.
var shared = newInterner(4096, 512, 1<<20)

// replayMemo is the reading of the last event log a device's quotes
// brought and the PCR tag it was replayed for, and the last log that did
// not replay (BootState). Kept apart from the entry, so that devices
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

// setStanding records the device's standing, as event ev set it (0:
// loaded), and mirrors its failing-since times in the subject.
func (e *entry) setStanding(s *store.Standing, ev uint64) {
	e.standing, e.standingEvent = s, ev
	e.subject.Failing = nil
	if s == nil {
		return
	}
	for _, f := range s.Failing {
		e.subject.Failing = append(e.subject.Failing, policy.Failing{Check: f.Check, Since: f.Since, Warned: f.Warned})
	}
}

// bootState is what the entry knows of measured boot.
func (e *entry) bootState() BootState {
	b := BootState{boot: e.boot}
	if m := e.replay; m != nil {
		b.replayed, b.replayedFor = m.reading, m.pcrs
		if m.failed != nil {
			b.failed, b.failedFor = m.failed.reading, m.failed.pcrs
		}
	}
	return b
}

func (e *entry) setReport(r *posturev1.PostureReport, b BootState, at time.Time, pol *policy.Policy) {
	e.boot = b.boot
	e.replay = b.memo(e.replay)
	e.osLine = ""
	if o := r.GetOs(); o.GetMeta().GetStatus() == posturev1.Status_STATUS_OK {
		e.osLine = shared.get(o.GetName() + " " + o.GetVersion())
	}
	e.subject.Assessment = pol.AssessWith(r, at, MeasuredOf(b.boot))
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

// Identity is a device's enrolled identity key (PKIX DER of a software
// key, or a TPM AK's public area) and its kind.
func (f *Fleet) Identity(id string) (key []byte, tpm bool, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return nil, false, false
	}
	return e.identityKey, e.tpm, true
}

// Known says whether the fleet knows the device.
func (f *Fleet) Known(id string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, ok := f.devices[id]
	return ok
}

// CheckActive refuses devices that are unknown or revoked. Suspect devices
// may still connect: their reports are evidence an admin will want.
func (f *Fleet) CheckActive(id string) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	switch {
	case !ok:
		return fmt.Errorf("device %s: %w", id, ErrUnknownDevice)
	case e.subject.State == posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return fmt.Errorf("device %s is revoked (%s); enroll it again with a new identity if this is a mistake: %w", id, e.subject.StateReason, ErrRevoked)
	}
	return nil
}

// CurrentCert says whether the certificate with serialHex and public key
// hash keySHA256 (pki.KeySHA256) is the one the device was last issued. A
// nil keySHA256 checks the serial alone, which matches only a certificate
// whose key the collector has not recorded (pki.CertMatches).
func (f *Fleet) CurrentCert(id, serialHex string, keySHA256 []byte) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	switch {
	case !ok:
		return fmt.Errorf("device %s: %w", id, ErrUnknownDevice)
	case !pki.CertMatches(e.certTag, serialHex, keySHA256):
		return ErrOldCertificate
	}
	return nil
}

// CurrentCertTag is the CertTag of the certificate the device was last
// issued; 0 for a device the fleet does not know.
func (f *Fleet) CurrentCertTag(id string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if e, ok := f.devices[id]; ok {
		return e.certTag
	}
	return 0
}

// CertStanding says how a device certificate, by its serial and the
// SHA-256 of its public key, stands: the device's newest (nil), the one
// its last renewal replaced (previous: it may only ask for a renewal, in
// case the newest never reached the device), or neither
// (ErrOldCertificate): replaced, or minted with one of their serials but
// another key. unbound says that the certificate matched by its serial
// alone: the collector has not recorded its key yet (it was issued before
// keys were recorded), and the caller should (store.Store.BindCertKey).
func (f *Fleet) CertStanding(id, serialHex string, keySHA256 []byte) (previous, unbound bool, err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return false, false, fmt.Errorf("device %s: %w", id, ErrUnknownDevice)
	}
	bound, serialOnly := CertTag(serialHex, keySHA256), CertTag(serialHex, nil)
	switch {
	case e.certTag == bound:
		return false, false, nil
	case e.certTag == serialOnly:
		return false, true, nil
	case e.prevCertTag != 0 && e.prevCertTag == bound:
		return true, false, nil
	case e.prevCertTag != 0 && e.prevCertTag == serialOnly:
		return true, true, nil
	}
	return false, false, ErrOldCertificate
}

// Revoked says whether a device is known and revoked, and why.
func (f *Fleet) Revoked(id string) (bool, string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok || e.subject.State != posturev1.DeviceState_DEVICE_STATE_REVOKED {
		return false, ""
	}
	return true, e.subject.StateReason
}

// SpendReport takes cost reports from the device's budget at now and says
// whether there were that many, and if not, in how many seconds there
// will be.
func (f *Fleet) SpendReport(id string, now time.Time, cost uint32) (ok bool, wait uint32) {
	f.mu.RLock()
	e, known := f.devices[id]
	f.mu.RUnlock()
	if !known {
		return true, 0 // the report is refused as from an unknown device
	}
	b := f.budget
	at := uint32(max(now.Sub(f.started), 0) / time.Second)
	limit := uint64(b.Burst) * uint64(b.Interval) // how far ahead of now the budget may be spent
	for {
		due := atomic.LoadUint32(&e.reportsDue)
		next := uint64(max(due, at)) + uint64(cost)*uint64(b.Interval)
		if next-uint64(at) > limit {
			return false, uint32(next - uint64(at) - limit)
		}
		if next > math.MaxUint32 {
			next = math.MaxUint32
		}
		if atomic.CompareAndSwapUint32(&e.reportsDue, due, uint32(next)) {
			return true, 0
		}
	}
}

// Budget is the report budget the fleet gives each device.
func (f *Fleet) Budget() Budget { return f.budget }

// Head is the device's report chain head and state; ok is false for a
// device the fleet does not know.
func (f *Fleet) Head(id string) (seq uint64, digest []byte, state posturev1.DeviceState, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return 0, nil, 0, false
	}
	if e.hasHead {
		digest = bytes.Clone(e.lastDigest[:])
	}
	return e.lastSeq, digest, e.subject.State, true
}

// BootState is what the collector knows of the device's measured boot.
func (f *Fleet) BootState(id string) BootState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if e, ok := f.devices[id]; ok {
		return e.bootState()
	}
	return BootState{}
}

// TPMClock is the TPM clock info of the device's latest quote.
func (f *Fleet) TPMClock(id string) store.TPMClock {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if e, ok := f.devices[id]; ok {
		return e.tpmClock
	}
	return store.TPMClock{}
}

// Subject copies what a decision needs, so it is made outside the lock.
func (f *Fleet) Subject(id string) (policy.Subject, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, false
	}
	return e.subject, true
}

// Judged copies a device's subject together with the policy in force,
// which is what a decision needs: a reload swaps both under the fleet
// lock (see Reload), so the pair read under it always belongs together.
// A subject assessed under one policy and judged by another could meet a
// level through a check the other policy does not have.
func (f *Fleet) Judged(id string) (policy.Subject, *policy.Policy, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := f.pol.Load()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, p, false
	}
	return e.subject, p, true
}

// Standing copies a device's subject, the policy in force and the
// device's recorded standing: what the standing is judged from.
func (f *Fleet) Standing(id string) (policy.Subject, *policy.Policy, store.Standing, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := f.pol.Load()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, p, store.Standing{}, false
	}
	var st store.Standing
	if e.standing != nil {
		st = *e.standing
	}
	return e.subject, p, st, true
}

// View copies what a device's posture is rendered from, with the policy
// in force (as Judged does).
func (f *Fleet) View(id string) (subj policy.Subject, p *policy.Policy, osLine string, boot *posturev1.MeasuredBoot, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p = f.pol.Load()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, p, "", nil, false
	}
	return e.subject, p, e.osLine, e.boot, true
}

// Count is how many devices the fleet knows.
func (f *Fleet) Count() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.devices)
}

// IDs lists every device the fleet knows, in no order.
func (f *Fleet) IDs() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ids := make([]string, 0, len(f.devices))
	for id := range f.devices {
		ids = append(ids, id)
	}
	return ids
}

// DecodeReport decodes stored report bytes; they were verified before they
// were kept. Nil bytes, or bytes that do not decode, give nil.
func DecodeReport(body []byte) *posturev1.PostureReport {
	if body == nil {
		return nil
	}
	var r posturev1.PostureReport
	if err := proto.Unmarshal(body, &r); err != nil {
		return nil
	}
	return &r
}

// MeasuredOf turns the collector's measured boot into policy evidence.
func MeasuredOf(boot *posturev1.MeasuredBoot) *policy.Measured {
	if boot.GetStatus() != posturev1.Status_STATUS_OK {
		return nil
	}
	return &policy.Measured{SecureBootKnown: boot.GetSecureBootKnown(), SecureBoot: boot.GetSecureBoot(), Reason: boot.GetReason()}
}
