package collector

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sync"
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
}

type deviceEntry struct {
	dev store.Device
	key *ecdsa.PublicKey // software identity
	ak  *attest.AK       // TPM identity
	// report is the latest verified report's bytes (nil before the first):
	// kept encoded, since a decoded report costs several times as much
	// and decisions need only the assessment.
	report  []byte
	osLine  string                  // "debian 12", from that report
	boot    *posturev1.MeasuredBoot // the collector's reading of that report's quote
	subject policy.Subject
}

func newFleet() *fleet {
	return &fleet{devices: map[string]*deviceEntry{}, streams: map[string]map[*reportStream]struct{}{}}
}

// load fills the fleet from the store, assessing each device's latest report.
func (f *fleet) load(ctx context.Context, st *store.Store, pol *policy.Policy) error {
	devs, err := st.Devices(ctx)
	if err != nil {
		return fmt.Errorf("load devices: %w", err)
	}
	latest, err := st.LatestReports(ctx)
	if err != nil {
		return fmt.Errorf("load latest reports: %w", err)
	}
	// Parsing keys and assessing reports is the cost of a large fleet's
	// start: spread it over the cores.
	entries := make([]*deviceEntry, len(devs))
	workers := runtime.GOMAXPROCS(0)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(devs); i += workers {
				var r *store.Report
				if rep, ok := latest[devs[i].ID]; ok {
					r = &rep
				}
				if entries[i], errs[w] = loadEntry(devs[i], r, pol); errs[w] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range entries {
		f.devices[e.dev.ID] = e
	}
	return nil
}

// loadEntry rebuilds one device's entry from the store. Stored reports were
// verified before they were stored.
func loadEntry(d store.Device, r *store.Report, pol *policy.Policy) (*deviceEntry, error) {
	e, err := newEntry(d)
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", d.ID, err)
	}
	if r == nil {
		return e, nil
	}
	var rep posturev1.PostureReport
	if err := proto.Unmarshal(r.Body, &rep); err != nil {
		return nil, fmt.Errorf("load report %s/%d: %w", d.ID, r.Seq, err)
	}
	boot := measuredBoot(nil, nil)
	if e.ak != nil {
		var q posturev1.TPMQuote
		if err := proto.Unmarshal(r.Proof, &q); err != nil {
			return nil, fmt.Errorf("load quote %s/%d: %w", d.ID, r.Seq, err)
		}
		pcrs, _ := envelope.PCRMap(q.GetPcrs())
		boot = measuredBoot(&q, pcrs)
	}
	e.setReport(&rep, r.Body, boot, r.ReceivedAt, pol)
	return e, nil
}

func newEntry(d store.Device) (*deviceEntry, error) {
	e := &deviceEntry{dev: d}
	if d.Identity == "tpm" {
		ak, err := attest.ParseAK(d.IdentityKey)
		if err != nil {
			return nil, fmt.Errorf("parse attestation key: %w", err)
		}
		e.ak = ak
	} else {
		pub, err := x509.ParsePKIXPublicKey(d.IdentityKey)
		if err != nil {
			return nil, fmt.Errorf("parse identity key: %w", err)
		}
		key, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("identity key is %T, want ECDSA", pub)
		}
		e.key = key
	}
	e.subject = policy.Subject{
		State:       posturev1.DeviceState(d.State),
		StateReason: d.StateReason,
		Assurance:   posturev1.IdentityAssurance(d.Assurance),
	}
	return e, nil
}

// verify checks a report's proof with the device's enrolled identity.
// quote is set for TPM identities.
func (e *deviceEntry) verify(sr *posturev1.SignedReport) (*envelope.Verified, *attest.QuoteResult, error) {
	if e.ak != nil {
		return envelope.VerifyTPM(e.ak, sr)
	}
	v, err := envelope.VerifySoftware(e.key, sr)
	return v, nil, err
}

func (e *deviceEntry) setReport(r *posturev1.PostureReport, body []byte, boot *posturev1.MeasuredBoot, at time.Time, pol *policy.Policy) {
	e.report, e.boot = body, boot
	e.osLine = ""
	if o := r.GetOs(); o.GetMeta().GetStatus() == posturev1.Status_STATUS_OK {
		e.osLine = fmt.Sprintf("%s %s", o.GetName(), o.GetVersion())
	}
	e.subject.Assessment = pol.AssessWith(r, measuredOf(boot))
	e.subject.ReportAt = at
}

// measuredBoot replays a quote's event log against its verified PCR values.
func measuredBoot(q *posturev1.TPMQuote, pcrs map[uint32][]byte) *posturev1.MeasuredBoot {
	if q == nil {
		return &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "software identity: no TPM quote"}
	}
	if len(q.GetEventLog()) == 0 {
		return &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "no TPM event log (the agent reads it as root from /sys/kernel/security/tpm0/binary_bios_measurements)"}
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
	case e.dev.State == int32(posturev1.DeviceState_DEVICE_STATE_REVOKED):
		return fmt.Errorf("device %s is revoked (%s); enroll it again with a new identity if this is a mistake", id, e.dev.StateReason)
	}
	return nil
}

func (f *fleet) put(d store.Device) error {
	e, err := newEntry(d)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.devices[d.ID]; ok {
		e.report, e.osLine, e.boot = old.report, old.osLine, old.boot
		e.subject.Assessment, e.subject.ReportAt = old.subject.Assessment, old.subject.ReportAt
	}
	f.devices[d.ID] = e
	return nil
}

// head is the device's report chain head.
func (f *fleet) head(id string) (seq uint64, digest []byte, state int32) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e := f.devices[id]
	return e.dev.LastSeq, e.dev.LastDigest, e.dev.State
}

// tpmClock is the TPM clock info of the device's latest quote.
func (f *fleet) tpmClock(id string) store.TPMClock {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.devices[id].dev.TPMClock
}

func (f *fleet) recordReport(id string, v *store.Report, r *posturev1.PostureReport, boot *posturev1.MeasuredBoot, pol *policy.Policy) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.devices[id]
	e.dev.LastSeq, e.dev.LastDigest, e.dev.LastSeen = v.Seq, v.Digest, v.ReceivedAt
	if v.TPM != nil {
		e.dev.TPMClock = *v.TPM
		if v.Reboot {
			e.dev.Reboots++
		}
	}
	e.setReport(r, v.Body, boot, v.ReceivedAt, pol)
}

func (f *fleet) setState(id string, state posturev1.DeviceState, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.devices[id]; ok {
		e.dev.State, e.dev.StateReason = int32(state), reason
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

// posture renders one device for admins and gateways.
func (f *fleet) posture(id, trustDomain string, pol *policy.Policy, now time.Time, withReport bool) (*posturev1.DevicePosture, bool) {
	f.mu.RLock()
	e, ok := f.devices[id]
	if !ok {
		f.mu.RUnlock()
		return nil, false
	}
	d, subj, body, osLine, boot := e.dev, e.subject, e.report, e.osLine, e.boot
	f.mu.RUnlock()

	checks, levels, score := pol.Explain(&subj, now)
	out := &posturev1.DevicePosture{
		Device:       deviceProto(d, trustDomain, osLine),
		Score:        score,
		Checks:       checks,
		Levels:       levels,
		MeasuredBoot: boot,
	}
	if withReport {
		out.Report = decodeReport(body)
	}
	if subj.Assessment != nil {
		out.RawScore = subj.Assessment.RawScore()
		out.ReportAge = durationpbOf(now.Sub(subj.ReportAt))
	}
	return out, true
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

// addStream registers an open report stream so revocation can close it.
func (f *fleet) addStream(id string, s *reportStream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.streams[id] == nil {
		f.streams[id] = map[*reportStream]struct{}{}
	}
	f.streams[id][s] = struct{}{}
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
// swaps it in, all under the fleet lock, so no decision mixes the old
// policy with new assessments.
func (f *fleet) reassess(p *policy.Policy, swap func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.devices {
		if r := decodeReport(e.report); r != nil {
			e.subject.Assessment = p.AssessWith(r, measuredOf(e.boot))
		}
	}
	swap()
}

// evidence copies what a policy needs to judge a device afresh.
func (f *fleet) evidence(id string) (policy.Subject, *posturev1.PostureReport, *posturev1.MeasuredBoot, string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.devices[id]
	if !ok {
		return policy.Subject{}, nil, nil, "", false
	}
	return e.subject, decodeReport(e.report), e.boot, e.dev.Hostname, true
}
