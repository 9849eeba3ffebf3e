package policy

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/traits"

	"google.golang.org/protobuf/types/known/durationpb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Assessment is a policy's verdict on one verified report. It does not
// depend on the clock, only on when the report arrived, so the collector
// computes it once per report and answers every later decision from it. A
// collector keeps one per device, so it is kept small: check names and
// weights stay with the policy, and equal reason texts are shared between
// devices.
type Assessment struct {
	policy   *Policy // the policy that made it: names and weights of checks
	checks   []assessed
	rawScore uint32
	celVars  traits.Mapper // what level expressions see, less the decision's own values
}

// assessed is one check's verdict as kept per device: small, and holding
// nothing of the decoded report, so the report can be let go. checks[i] of
// an Assessment is the verdict of policy.Checks[i].
type assessed struct {
	// observedSec and observedNsec are when the evidence was observed, as
	// EvidenceTime has it, in Unix seconds and nanoseconds; observedNsec
	// is -1 when the evidence has no time. Unix nanoseconds in one int64
	// would end in 2262, and a device may send any year up to 9999; the
	// nanoseconds sit in what would be padding, so this costs nothing.
	observedSec  int64
	text         *checkText // reason and remediation
	observedNsec int32
	result       posturev1.Outcome
}

// noTime is observedNsec of evidence without a time.
const noTime = -1

// observed is when the evidence was observed; ok is false when it has no
// time.
func (c *assessed) observed() (t time.Time, ok bool) {
	if c.observedNsec == noTime {
		return time.Time{}, false
	}
	return time.Unix(c.observedSec, int64(c.observedNsec)), true
}

// checkText is a verdict's reason and remediation. Most devices of a fleet
// share a handful of them, so equal texts are one value (see shareText).
type checkText struct {
	reason, remediation string
}

// Bounds of the table of shared texts. Texts that embed values from a
// report (a version, a count, a name) could otherwise grow it without
// end; past a bound a text is simply kept by the device it belongs to.
// Texts are bounded by the report's (envelope's limits): a reason quotes
// at most a 1 KiB text of the agent's, and a remediation a name, so every
// text a real agent causes is under maxSharedTextLen. A fleet's shared
// texts, a few hundred bytes each, take well under maxSharedTextBytes.
const (
	maxSharedTexts     = 1 << 16
	maxSharedTextLen   = 2 << 10 // reason and remediation together, in bytes
	maxSharedTextBytes = 4 << 20 // every shared text's reason and remediation
)

// sharedTexts maps a checkText to its one shared copy. Assessments run on
// every core at once at start, so lookups take no lock; additions racing
// past a bound pass it by at most one text each.
var sharedTexts struct {
	m     sync.Map
	n     atomic.Int64
	bytes atomic.Int64
}

func shareText(t checkText) *checkText {
	// t is copied to the heap only when it is kept: taking its address
	// at the top would allocate on every call, most of which find a
	// shared copy (the map's lookup does not keep its key).
	own := func() *checkText { c := t; return &c }
	size := int64(len(t.reason) + len(t.remediation))
	if size > maxSharedTextLen {
		return own()
	}
	if s, ok := sharedTexts.m.Load(t); ok {
		return s.(*checkText)
	}
	if sharedTexts.n.Load() >= maxSharedTexts || sharedTexts.bytes.Load()+size > maxSharedTextBytes {
		return own()
	}
	s, loaded := sharedTexts.m.LoadOrStore(t, own())
	if !loaded {
		sharedTexts.n.Add(1)
		sharedTexts.bytes.Add(size)
	}
	return s.(*checkText)
}

// name and weight of the i-th check of an assessment.
func (a *Assessment) name(i int) string   { return a.policy.Checks[i].Name }
func (a *Assessment) weight(i int) uint32 { return a.policy.Checks[i].Weight }

// RawScore is the score before freshness decay.
func (a *Assessment) RawScore() uint32 { return a.rawScore }

// Assess evaluates every check against a verified report that the
// collector received at receivedAt.
func (p *Policy) Assess(r *posturev1.PostureReport, receivedAt time.Time) *Assessment {
	return p.AssessWith(r, receivedAt, nil)
}

// AssessWith evaluates every check against a verified report that the
// collector received at receivedAt and the evidence the collector measured
// itself (nil when there is none). No evidence of the report counts as
// observed after receivedAt (see EvidenceTime); a zero receivedAt dates all
// of it to year 1, older than any freshness limit.
func (p *Policy) AssessWith(r *posturev1.PostureReport, receivedAt time.Time, m *Measured) *Assessment {
	a := &Assessment{policy: p, checks: make([]assessed, 0, len(p.Checks))}
	var total, passed uint64 // weights are at most maxWeight; no sum overflows
	for _, c := range p.Checks {
		o := checkKinds[c.Name].eval(c, r, m)
		as := assessed{result: o.result, text: shareText(checkText{reason: o.reason, remediation: o.remediation}), observedNsec: noTime}
		if t, ok := EvidenceTime(o.meta.GetObservedAt(), receivedAt); ok {
			as.observedSec, as.observedNsec = t.Unix(), int32(t.Nanosecond())
		}
		a.checks = append(a.checks, as)
		if o.result == posturev1.Outcome_OUTCOME_NOT_APPLICABLE {
			continue // weighs nothing either way
		}
		total += uint64(c.Weight)
		if o.result == posturev1.Outcome_OUTCOME_PASS {
			passed += uint64(c.Weight)
		}
	}
	if total > 0 {
		// Rounded down: a device that passes 79.5% does not meet 80.
		a.rawScore = uint32(passed * 100 / total)
	}
	if p.hasExprs() {
		a.celVars = types.DefaultTypeAdapter.NativeToValue(deviceVars(r, receivedAt, m, a, false)).(traits.Mapper)
	}
	return a
}

// Subject is everything a decision about one device depends on.
type Subject struct {
	State       posturev1.DeviceState
	StateReason string
	Assurance   posturev1.IdentityAssurance
	// Assessment of the latest verified report; nil before the first.
	Assessment *Assessment
	// ReportAt is when the latest verified report was measured, never
	// later than when it was received (see EvidenceTime); its age is
	// ReportAge.
	ReportAt time.Time
}

// freshness is the decay factor in [0, 1] for evidence of the given age.
func (p *Policy) freshness(age time.Duration) float64 {
	f := p.Freshness
	switch {
	case age <= f.StaleAfter:
		return 1
	case age >= f.ExpireAfter:
		return 0
	}
	return float64(f.ExpireAfter-age) / float64(f.ExpireAfter-f.StaleAfter)
}

// Score is the subject's trust score at now: the raw score decayed by the
// age of its latest report, and zero for a device that is not active or has
// never reported.
func (p *Policy) Score(s *Subject, now time.Time) uint32 {
	if s.Assessment == nil || s.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		return 0
	}
	return uint32(float64(s.Assessment.rawScore) * p.freshness(s.ReportAge(now))) // rounded down, as the raw score
}

// Decide says whether the subject meets the named level at now, and why not.
// An unknown level denies.
func (p *Policy) Decide(s *Subject, level string, now time.Time) (allowed bool, score uint32, reasons []string) {
	score = p.Score(s, now)
	l, ok := p.Level(level)
	if !ok {
		return false, score, []string{fmt.Sprintf("access level %q is not defined by the collector's policy (defined: %v)", level, p.LevelNames())}
	}
	return p.decideLevel(s, l, score, now)
}

// LevelSet is a set of a policy's levels: bit i stands for Levels[i].
type LevelSet uint64

// maxLevels is how many levels a policy may define: as many as a LevelSet
// holds.
const maxLevels = 64

// AllowedSet is the set of levels the subject meets at now, and its score,
// without the reasons for those it does not: what watchers are told.
func (p *Policy) AllowedSet(s *Subject, now time.Time) (score uint32, set LevelSet) {
	score = p.Score(s, now)
	for i, l := range p.Levels {
		if ok, _, _ := p.judge(s, l, score, now, false); ok {
			set |= 1 << i
		}
	}
	return score, set
}

// Names lists the levels of a set in policy order.
func (p *Policy) Names(set LevelSet) []string {
	var names []string
	for i, l := range p.Levels {
		if set&(1<<i) != 0 {
			names = append(names, l.Name)
		}
	}
	return names
}

// SetKey is the names of a set's levels joined by NUL (names hold no
// control character), to compare sets made under different policies by
// what they mean. Equal sets of one policy share one string.
func (p *Policy) SetKey(set LevelSet) string {
	if k, ok := p.setKeys.Load(set); ok {
		return k.(string)
	}
	k, _ := p.setKeys.LoadOrStore(set, strings.Join(p.Names(set), "\x00"))
	return k.(string)
}

func (p *Policy) decideLevel(s *Subject, l Level, score uint32, now time.Time) (bool, uint32, []string) {
	return p.judge(s, l, score, now, true)
}

// judge decides one level. With explain unset it stops at the first unmet
// condition and says nothing about it, which saves formatting reasons no
// one reads.
func (p *Policy) judge(s *Subject, l Level, score uint32, now time.Time, explain bool) (bool, uint32, []string) {
	var reasons []string
	switch s.State {
	case posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return false, score, []string{"device is revoked: " + s.StateReason}
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return false, score, []string{"device is suspect: " + s.StateReason + "; an admin must investigate and revoke it or re-enroll it"}
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return false, score, []string{pendingReason(s.StateReason)}
	case posturev1.DeviceState_DEVICE_STATE_ACTIVE:
	default:
		return false, score, []string{"device state is unknown"}
	}
	if s.Assessment == nil {
		return false, score, []string{"no verified posture report yet: is posture-agent running on the device?"}
	}
	// Expired evidence meets no level, whatever the level asks: a level
	// without a minimum score (only required checks, or an expression)
	// would otherwise go on reading a silent device's last report forever.
	if age := s.ReportAge(now); age >= p.Freshness.ExpireAfter {
		if !explain {
			return false, score, nil
		}
		return false, score, []string{fmt.Sprintf("latest report is %s old, past expire_after %s: the device's posture is unknown; is posture-agent running on it?",
			age.Round(time.Second), p.Freshness.ExpireAfter)}
	}
	if score < l.MinScore {
		if !explain {
			return false, score, nil
		}
		r := fmt.Sprintf("score %d is below %d required by %s", score, l.MinScore, l.Name)
		if age := s.ReportAge(now); age > p.Freshness.StaleAfter {
			r += fmt.Sprintf(" (latest report is %s old; trust decays after %s)", age.Round(time.Second), p.Freshness.StaleAfter)
		}
		reasons = append(reasons, r)
	}
	for _, name := range l.Require {
		found := false
		for i, c := range s.Assessment.checks {
			if s.Assessment.name(i) != name {
				continue
			}
			found = true
			if c.result != posturev1.Outcome_OUTCOME_PASS {
				if !explain {
					return false, score, nil
				}
				reasons = append(reasons, fmt.Sprintf("%s requires %s: %s", l.Name, name, c.text.reason))
			}
		}
		if !found {
			// Assessed under a policy without this check: unknown, which
			// never passes.
			if !explain {
				return false, score, nil
			}
			reasons = append(reasons, fmt.Sprintf("%s requires %s, which the device's latest assessment does not include", l.Name, name))
		}
	}
	if l.MinAssurance != "" && s.Assurance < assuranceNames[l.MinAssurance] {
		if !explain {
			return false, score, nil
		}
		reasons = append(reasons, fmt.Sprintf("%s requires identity assurance %s or stronger, device has %s", l.Name, l.MinAssurance, AssuranceName(s.Assurance)))
	}
	if l.program != nil {
		if ok, why := evalExpr(l.program, s, score, now); !ok {
			reasons = append(reasons, fmt.Sprintf("%s: %s (%s)", l.Name, why, l.Expr))
		}
	}
	return len(reasons) == 0, score, reasons
}

// Explain renders every check and every level for the subject at now.
func (p *Policy) Explain(s *Subject, now time.Time) (checks []*posturev1.CheckResult, levels []*posturev1.LevelResult, score uint32) {
	score = p.Score(s, now)
	if s.Assessment != nil {
		for i, c := range s.Assessment.checks {
			cr := &posturev1.CheckResult{
				Name:        s.Assessment.name(i),
				Outcome:     c.result,
				Reason:      c.text.reason,
				Weight:      s.Assessment.weight(i),
				Remediation: c.text.remediation,
			}
			if at, ok := c.observed(); ok {
				cr.EvidenceAge = durationpb.New(evidenceAge(now, at).Round(time.Second))
			}
			checks = append(checks, cr)
		}
	}
	for _, l := range p.Levels {
		ok, _, reasons := p.decideLevel(s, l, score, now)
		levels = append(levels, &posturev1.LevelResult{Name: l.Name, Allowed: ok, Reasons: reasons})
	}
	return checks, levels, score
}

// FailedChecks lists the checks that did not pass, for a denial's details.
func (p *Policy) FailedChecks(s *Subject, now time.Time) []*posturev1.CheckResult {
	checks, _, _ := p.Explain(s, now)
	var failed []*posturev1.CheckResult
	for _, c := range checks {
		if c.Outcome != posturev1.Outcome_OUTCOME_PASS && c.Outcome != posturev1.Outcome_OUTCOME_NOT_APPLICABLE {
			failed = append(failed, c)
		}
	}
	return failed
}

func (p *Policy) hasExprs() bool {
	for _, l := range p.Levels {
		if l.program != nil {
			return true
		}
	}
	return false
}

// pendingReason is the denial of every level to a pending device (a TPM
// whose endorsement key is neither verified nor pinned). Its reports are
// verified and kept meanwhile, so that an admin can judge the device
// before approving it, but none of them opens anything until then.
func pendingReason(stateReason string) string {
	r := "device is pending approval: every level is denied until an admin approves it; ask an admin to approve this device"
	if stateReason != "" {
		r += " (" + stateReason + ")"
	}
	return r
}
