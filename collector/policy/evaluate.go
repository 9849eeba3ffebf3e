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
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Assessment is a policy's verdict on one verified report. It does not
// depend on the clock, only on when the report arrived, so the collector
// computes it once per report and answers every later decision from it. A
// collector keeps one per device, so it is kept small: check names and
// weights stay with the policy, and equal reason texts are shared between
// devices.
type Assessment struct {
	policy   *Policy // the policy that made it: names, weights and graces of checks
	checks   []assessed
	rawScore uint32
	// passed and total are the weights behind rawScore: a check inside
	// its grace counts as passed at a decision (Subject.rawScoreAt).
	passed, total uint32
	failing       uint8         // how many checks fail (fail or unknown)
	celVars       traits.Mapper // what level expressions see, less the decision's own values
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
		} else if a.failing < 255 {
			a.failing++
		}
	}
	a.passed, a.total = uint32(passed), uint32(total)
	a.rawScore = percent(passed, total)
	if p.hasExprs() {
		a.celVars = types.DefaultTypeAdapter.NativeToValue(deviceVars(r, receivedAt, m, a, false)).(traits.Mapper)
	}
	return a
}

// percent is passed of total in whole percent, rounded down: a device
// that passes 79.5% does not meet 80. No weight at all scores 0.
func percent(passed, total uint64) uint32 {
	if total == 0 {
		return 0
	}
	return uint32(passed * 100 / total)
}

// fails says whether a check's verdict counts against the device: it
// failed or is unknown. A check that does not apply never fails.
func (c *assessed) fails() bool {
	return c.result != posturev1.Outcome_OUTCOME_PASS && c.result != posturev1.Outcome_OUTCOME_NOT_APPLICABLE
}

// Failing is since when a check has been failing on a device, as the
// collectors recorded it (the device's standing, shared by every
// collector through the database): from the first report that did not
// pass the check until one that does.
type Failing struct {
	Check string
	Since time.Time
	// Warned is set once the collectors announced that the check's grace
	// ends soon (Notify.BeforeBlock), so that it is announced once.
	Warned bool
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
	// Failing is the recorded failing-since time of each failing check,
	// by check name. A check the assessment fails that is not recorded
	// (yet) fails since ReportAt.
	Failing []Failing
}

// FailingSince is since when the subject's named check has been failing:
// as recorded, or since the latest report for a failure not recorded yet.
// ok is false when the latest assessment does not fail the check.
func (s *Subject) FailingSince(check string) (since time.Time, ok bool) {
	a := s.Assessment
	if a == nil {
		return time.Time{}, false
	}
	for i := range a.checks {
		if a.name(i) == check {
			return s.failingSince(i)
		}
	}
	return time.Time{}, false
}

// CheckFailure is one check the subject's latest assessment fails (fails
// or does not know).
type CheckFailure struct {
	Check   string
	Outcome posturev1.Outcome // fail or unknown
	// Since is when it began failing: recorded, or the latest report's
	// time for a failure not recorded yet.
	Since time.Time
	// BlocksAt is when its grace ends; zero for a check without one.
	BlocksAt    time.Time
	Reason      string
	Remediation string
}

// Failures lists the checks the subject's latest assessment fails, in
// policy order; none before the first report.
func (s *Subject) Failures() []CheckFailure {
	a := s.Assessment
	if a == nil || a.failing == 0 {
		return nil
	}
	var out []CheckFailure
	for i, c := range a.checks {
		since, failing := s.failingSince(i)
		if !failing {
			continue
		}
		f := CheckFailure{Check: a.name(i), Outcome: c.result, Since: since, Reason: c.text.reason, Remediation: c.text.remediation}
		if end, ok := s.graceEnd(i); ok {
			f.BlocksAt = end
		}
		out = append(out, f)
	}
	return out
}

// failingSince is FailingSince for the i-th check of the assessment.
func (s *Subject) failingSince(i int) (time.Time, bool) {
	a := s.Assessment
	if !a.checks[i].fails() {
		return time.Time{}, false
	}
	name := a.name(i)
	for _, f := range s.Failing {
		if f.Check == name {
			return f.Since, true
		}
	}
	return s.ReportAt, true
}

// graceEnd is when the i-th check's grace ends for the subject: ok is
// false when the check does not fail or has no grace.
func (s *Subject) graceEnd(i int) (end time.Time, ok bool) {
	g := s.Assessment.policy.Checks[i].Grace
	if g <= 0 {
		return time.Time{}, false
	}
	since, failing := s.failingSince(i)
	if !failing {
		return time.Time{}, false
	}
	return since.Add(g), true
}

// inGrace says whether the i-th check fails but inside its grace at now,
// so that it does not count against the device. except names a check
// judged as if its grace were over (-1 for none).
func (s *Subject) inGrace(i int, now time.Time, except int) bool {
	if i == except {
		return false
	}
	end, ok := s.graceEnd(i)
	return ok && now.Before(end)
}

// rawScoreAt is the raw score at now: a failing check inside its grace
// counts as passed.
func (s *Subject) rawScoreAt(now time.Time, except int) uint32 {
	a := s.Assessment
	if a.failing == 0 || !a.policy.hasGrace {
		return a.rawScore
	}
	passed := uint64(a.passed)
	for i := range a.checks {
		if s.inGrace(i, now, except) {
			passed += uint64(a.weight(i))
		}
	}
	return percent(passed, uint64(a.total))
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

// Score is the subject's trust score at now: the raw score (a failing
// check inside its grace counting as passed) decayed by the age of its
// latest report, and zero for a device that is not active or has never
// reported.
func (p *Policy) Score(s *Subject, now time.Time) uint32 {
	return p.scoreExcept(s, now, -1)
}

func (p *Policy) scoreExcept(s *Subject, now time.Time, except int) uint32 {
	if s.Assessment == nil || s.State != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		return 0
	}
	return uint32(float64(s.rawScoreAt(now, except)) * p.freshness(s.ReportAge(now))) // rounded down, as the raw score
}

// Decide says whether the subject meets the named level at now, and why not.
// An unknown level denies. It says nothing of the level's enforcement:
// Judge does.
func (p *Policy) Decide(s *Subject, level string, now time.Time) (met bool, score uint32, reasons []string) {
	v := p.Judge(s, level, now)
	return v.Met, v.Score, v.Reasons
}

// Verdict is a decision on one level with everything it says.
type Verdict struct {
	Level   string
	Defined bool // the policy defines the level
	Enforce Enforcement
	// Met says whether the device meets the level; a failing check inside
	// its grace does not count against it.
	Met bool
	// Allowed is the answer gateways get: Met, or a level that is not
	// enforced (warn, off) for a device that is active. A revoked,
	// suspect or pending device is denied whatever the enforcement.
	Allowed bool
	Score   uint32
	// Reasons say why the device does not meet the level.
	Reasons []string
	// Grace lists the failing checks inside their grace that the level
	// will deny for when their grace ends: the decision stands until the
	// earliest BlocksAt, unless the device is fixed.
	Grace []GraceNotice
}

// GraceNotice is a failing check inside its grace.
type GraceNotice struct {
	Check       string
	Since       time.Time // failing since
	BlocksAt    time.Time // when its grace ends
	Reason      string
	Remediation string
}

// Warned says whether the gateway is to warn: the device does not meet a
// level in warn mode, or meets it only inside a grace.
func (v Verdict) Warned() bool {
	return v.Allowed && ((!v.Met && v.Enforce == EnforceWarn) || len(v.Grace) > 0)
}

// Warnings are what a warned decision says, for people: the level not met
// in warn mode, and each check inside its grace, with when it blocks.
func (v Verdict) Warnings() []string {
	var w []string
	if v.Allowed && !v.Met && v.Enforce == EnforceWarn {
		w = append(w, fmt.Sprintf("the device does not meet %s, which only warns for now (enforce: warn): %s", v.Level, strings.Join(v.Reasons, "; ")))
	}
	for _, g := range v.Grace {
		w = append(w, g.String())
	}
	return w
}

// String says what a grace notice means, in the words every decision and
// page uses.
func (g GraceNotice) String() string {
	s := fmt.Sprintf("%s failing since %s, blocks at %s", g.Check, g.Since.UTC().Format(time.RFC3339), g.BlocksAt.UTC().Format(time.RFC3339))
	if g.Reason != "" {
		s += ": " + g.Reason
	}
	if g.Remediation != "" {
		s += "; fix: " + g.Remediation
	}
	return s
}

// Judge decides the named level for the subject at now, with its
// enforcement and grace notices. An unknown level denies.
func (p *Policy) Judge(s *Subject, level string, now time.Time) Verdict {
	score := p.Score(s, now)
	l, ok := p.Level(level)
	if !ok {
		return Verdict{Level: level, Score: score, Reasons: []string{fmt.Sprintf("access level %q is not defined by the collector's policy (defined: %v)", level, p.LevelNames())}}
	}
	return p.verdict(s, l, score, now)
}

func (p *Policy) verdict(s *Subject, l Level, score uint32, now time.Time) Verdict {
	j := p.judge(s, l, score, now, true, -1)
	v := Verdict{Level: l.Name, Defined: true, Enforce: l.enforcement, Met: j.met, Score: score, Reasons: j.reasons}
	v.Allowed = j.met || (l.enforcement != EnforceBlock && !j.byState)
	if j.met {
		v.Grace = p.graceNotices(s, l, now)
	}
	return v
}

// graceNotices lists the subject's checks inside their grace without
// which it would not meet l at now: those whose grace ending blocks.
func (p *Policy) graceNotices(s *Subject, l Level, now time.Time) []GraceNotice {
	a := s.Assessment
	if a == nil || a.failing == 0 || !a.policy.hasGrace {
		return nil
	}
	var out []GraceNotice
	for i := range a.checks {
		if !s.inGrace(i, now, -1) {
			continue
		}
		if p.judge(s, l, p.scoreExcept(s, now, i), now, false, i).met {
			continue // its grace ending changes nothing for this level
		}
		since, _ := s.failingSince(i)
		end, _ := s.graceEnd(i)
		out = append(out, GraceNotice{Check: a.name(i), Since: since, BlocksAt: end, Reason: a.checks[i].text.reason, Remediation: a.checks[i].text.remediation})
	}
	return out
}

// LevelSet is a set of a policy's levels: bit i stands for Levels[i].
type LevelSet uint64

// maxLevels is how many levels a policy may define: as many as a LevelSet
// holds.
const maxLevels = 64

// AllowedSet is the set of levels gateways allow the subject at now (the
// levels it meets, and those not enforced: Verdict.Allowed), and its
// score, without the reasons: what watchers are told.
func (p *Policy) AllowedSet(s *Subject, now time.Time) (score uint32, set LevelSet) {
	score, _, set, _ = p.Sets(s, now)
	return score, set
}

// Sets judges every level at now without reasons: the levels the subject
// meets, those gateways allow it (met, or not enforced), and those they
// warn about (allowed but not met in warn mode, or met only inside a
// grace).
func (p *Policy) Sets(s *Subject, now time.Time) (score uint32, met, allowed, warned LevelSet) {
	score = p.Score(s, now)
	for i, l := range p.Levels {
		j := p.judge(s, l, score, now, false, -1)
		switch {
		case j.met:
			met |= 1 << i
			allowed |= 1 << i
			if p.hasGrace && len(p.graceNotices(s, l, now)) > 0 {
				warned |= 1 << i
			}
		case l.enforcement != EnforceBlock && !j.byState:
			allowed |= 1 << i
			if l.enforcement == EnforceWarn {
				warned |= 1 << i
			}
		}
	}
	return score, met, allowed, warned
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

// judgement is what judge found.
type judgement struct {
	met bool
	// byState: the device's state denies (revoked, suspect, pending),
	// which no enforcement mode allows.
	byState bool
	reasons []string
}

// judge decides one level. With explain unset it stops at the first unmet
// condition and says nothing about it, which saves formatting reasons no
// one reads. except names a check judged as if its grace were over (-1
// for none); score must have been computed with the same.
func (p *Policy) judge(s *Subject, l Level, score uint32, now time.Time, explain bool, except int) judgement {
	var reasons []string
	byState := func(reason string) judgement { return judgement{byState: true, reasons: []string{reason}} }
	switch s.State {
	case posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return byState("device is revoked: " + s.StateReason)
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return byState("device is suspect: " + s.StateReason + "; an admin must investigate and revoke it or re-enroll it")
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return byState(pendingReason(s.StateReason))
	case posturev1.DeviceState_DEVICE_STATE_ACTIVE:
	default:
		return byState("device state is unknown")
	}
	if s.Assessment == nil {
		return judgement{reasons: []string{"no verified posture report yet: is posture-agent running on the device?"}}
	}
	// Expired evidence meets no level, whatever the level asks: a level
	// without a minimum score (only required checks, or an expression)
	// would otherwise go on reading a silent device's last report forever.
	if age := s.ReportAge(now); age >= p.Freshness.ExpireAfter {
		if !explain {
			return judgement{}
		}
		return judgement{reasons: []string{fmt.Sprintf("latest report is %s old, past expire_after %s: the device's posture is unknown; is posture-agent running on it?",
			age.Round(time.Second), p.Freshness.ExpireAfter)}}
	}
	if score < l.MinScore {
		if !explain {
			return judgement{}
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
			if c.result != posturev1.Outcome_OUTCOME_PASS && !s.inGrace(i, now, except) {
				if !explain {
					return judgement{}
				}
				reasons = append(reasons, fmt.Sprintf("%s requires %s: %s", l.Name, name, c.text.reason))
			}
		}
		if !found {
			// Assessed under a policy without this check: unknown, which
			// never passes.
			if !explain {
				return judgement{}
			}
			reasons = append(reasons, fmt.Sprintf("%s requires %s, which the device's latest assessment does not include", l.Name, name))
		}
	}
	if l.MinAssurance != "" && s.Assurance < assuranceNames[l.MinAssurance] {
		if !explain {
			return judgement{}
		}
		reasons = append(reasons, fmt.Sprintf("%s requires identity assurance %s or stronger, device has %s", l.Name, l.MinAssurance, AssuranceName(s.Assurance)))
	}
	if l.program != nil {
		if ok, why := evalExpr(l.program, s, score, now, except); !ok {
			reasons = append(reasons, fmt.Sprintf("%s: %s (%s)", l.Name, why, l.Expr))
		}
	}
	return judgement{met: len(reasons) == 0, reasons: reasons}
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
			if since, failing := s.failingSince(i); failing {
				cr.FailingSince = timestamppb.New(since)
				if end, ok := s.graceEnd(i); ok {
					cr.BlocksAt = timestamppb.New(end)
					cr.InGrace = now.Before(end)
				}
			}
			checks = append(checks, cr)
		}
	}
	for _, l := range p.Levels {
		v := p.verdict(s, l, score, now)
		lr := &posturev1.LevelResult{Name: l.Name, Allowed: v.Met, Reasons: v.Reasons, Enforcement: v.Enforce.Proto()}
		if v.Warned() {
			lr.Warnings = v.Warnings()
		}
		levels = append(levels, lr)
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
