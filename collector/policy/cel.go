package policy

import (
	"fmt"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Keys of the device map that expressions do not name directly.
const (
	keyNow      = "@now"
	keyObserved = "@observed"
)

// celEnv declares what a level expression sees: `device`, a map of the
// latest verified posture, and device.evidence_age(section).
var celEnv = mustEnv()

func mustEnv() *cel.Env {
	env, err := cel.NewEnv(
		cel.Variable("device", cel.MapType(cel.StringType, cel.DynType)),
		cel.Function("evidence_age",
			cel.MemberOverload("device_evidence_age_string",
				[]*cel.Type{cel.MapType(cel.StringType, cel.DynType), cel.StringType}, cel.DurationType,
				cel.BinaryBinding(evidenceAge))),
	)
	if err != nil {
		panic("policy CEL environment: " + err.Error())
	}
	return env
}

// evidenceAge is device.evidence_age("os"): how old that section's
// measurement is. A section that was not measured has no age, and the
// expression errors, which denies.
func evidenceAge(dev, section ref.Val) ref.Val {
	m, ok := dev.(traits.Mapper)
	if !ok {
		return types.NewErr("evidence_age: receiver is not the device")
	}
	now, ok := m.Find(types.String(keyNow))
	if !ok {
		return types.NewErr("evidence_age: no evaluation time")
	}
	observed, ok := m.Find(types.String(keyObserved))
	if !ok {
		return types.NewErr("evidence_age: no evidence")
	}
	om, ok := observed.(traits.Mapper)
	if !ok {
		return types.NewErr("evidence_age: no evidence")
	}
	at, ok := om.Find(section)
	if !ok {
		return types.NewErr("evidence_age: no measured evidence for %v", section)
	}
	return types.Duration{Duration: now.(types.Timestamp).Time.Sub(at.(types.Timestamp).Time)}
}

// compileExpr compiles a level expression; errors carry line and column.
func compileExpr(expr string) (cel.Program, error) {
	ast, iss := celEnv.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("%s", strings.ReplaceAll(iss.Err().Error(), "\n", "; "))
	}
	if t := ast.OutputType(); t != cel.BoolType && t != cel.DynType {
		return nil, fmt.Errorf("expression has type %s, want bool", ast.OutputType())
	}
	prg, err := celEnv.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, err
	}
	return prg, nil
}

// deviceVars is the time-independent part of the device map, built once
// per verified report. Sections that were not measured are absent, so an
// expression that reads them errors and denies: unknown never passes.
func deviceVars(r *posturev1.PostureReport, a *Assessment) map[string]any {
	observed := map[string]time.Time{}
	ok := func(name string, m *posturev1.SignalMeta) bool {
		if m.GetStatus() != posturev1.Status_STATUS_OK {
			return false
		}
		if t := m.GetObservedAt(); t != nil {
			observed[name] = t.AsTime()
		}
		return true
	}
	v := map[string]any{}
	if o := r.GetOs(); ok("os", o.GetMeta()) {
		v["os"] = map[string]any{"platform": o.GetPlatform(), "name": o.GetName(), "version": o.GetVersion(), "kernel_version": o.GetKernelVersion()}
	}
	if d := r.GetDisk(); ok("disk", d.GetMeta()) {
		v["disk"] = map[string]any{"system_encrypted": d.GetSystemEncrypted()}
	}
	if s := r.GetSecureBoot(); ok("secure_boot", s.GetMeta()) {
		v["secure_boot"] = map[string]any{"enabled": s.GetEnabled(), "setup_mode": s.GetSetupMode(), "legacy_bios": s.GetLegacyBios()}
	}
	if u := r.GetUpdates(); ok("updates", u.GetMeta()) {
		v["updates"] = map[string]any{"manager": u.GetManager(), "pending": int64(u.GetPending()), "security_pending": int64(u.GetSecurityPending()), "reboot_required": u.GetRebootRequired()}
	}
	if f := r.GetFirewall(); ok("firewall", f.GetMeta()) {
		v["firewall"] = map[string]any{"enabled": f.GetEnabled(), "product": f.GetProduct()}
	}
	if s := r.GetScreenLock(); ok("screen_lock", s.GetMeta()) {
		v["screen_lock"] = map[string]any{"enabled": s.GetEnabled(), "timeout_seconds": int64(s.GetTimeoutSeconds())}
	}
	checks := map[string]any{}
	for i, c := range a.checks {
		checks[a.name(i)] = strings.ToLower(strings.TrimPrefix(c.result.String(), "OUTCOME_"))
	}
	v["checks"] = checks
	v["raw_score"] = int64(a.rawScore)
	v[keyObserved] = observed
	return v
}

// deviceValue is `device` as one decision sees it: the assessment's
// clock-independent map (converted to a CEL value once per report) with the
// decision's own values in front. Answering these without copying the map
// keeps a CEL decision near the cost of the evaluation itself.
type deviceValue struct {
	traits.Mapper // the static part
	score         int64
	state         string
	identity      ref.Val
	reportAge     time.Duration
	now           time.Time
}

func (d *deviceValue) dynamic(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return nil, false
	}
	switch string(k) {
	case "score":
		return types.Int(d.score), true
	case "state":
		return types.String(d.state), true
	case "identity":
		return d.identity, true
	case "report_age":
		return types.Duration{Duration: d.reportAge}, true
	case keyNow:
		return types.Timestamp{Time: d.now}, true
	}
	return nil, false
}

// Find looks the decision's values up first.
func (d *deviceValue) Find(key ref.Val) (ref.Val, bool) {
	if v, ok := d.dynamic(key); ok {
		return v, true
	}
	return d.Mapper.Find(key)
}

// Get is Find with CEL's missing-key error.
func (d *deviceValue) Get(key ref.Val) ref.Val {
	if v, ok := d.dynamic(key); ok {
		return v
	}
	return d.Mapper.Get(key)
}

// Contains reports whether key is present.
func (d *deviceValue) Contains(key ref.Val) ref.Val {
	if _, ok := d.dynamic(key); ok {
		return types.True
	}
	return d.Mapper.Contains(key)
}

// identityValues are the `device.identity` maps, one per assurance.
var identityValues = func() map[posturev1.IdentityAssurance]ref.Val {
	m := map[posturev1.IdentityAssurance]ref.Val{}
	for a := range posturev1.IdentityAssurance_name {
		as := posturev1.IdentityAssurance(a)
		m[as] = types.DefaultTypeAdapter.NativeToValue(map[string]any{"assurance": AssuranceName(as)})
	}
	return m
}()

// deviceActivation resolves the single variable `device`.
type deviceActivation struct{ device *deviceValue }

func (a deviceActivation) ResolveName(name string) (any, bool) {
	if name == "device" {
		return a.device, true
	}
	return nil, false
}

func (a deviceActivation) Parent() interpreter.Activation { return nil }

// evalExpr evaluates a level expression for the subject at now. Any
// evaluation error denies, with the error as the reason.
func evalExpr(prg cel.Program, s *Subject, score uint32, now time.Time) (bool, string) {
	dev := &deviceValue{
		Mapper:    s.Assessment.celVars,
		score:     int64(score),
		state:     strings.ToLower(strings.TrimPrefix(s.State.String(), "DEVICE_STATE_")),
		identity:  identityValues[s.Assurance],
		reportAge: now.Sub(s.ReportAt),
		now:       now,
	}
	out, _, err := prg.Eval(deviceActivation{device: dev})
	if err != nil {
		return false, "expression could not be evaluated (unknown evidence denies): " + err.Error()
	}
	b, isBool := out.Value().(bool)
	if !isBool {
		return false, fmt.Sprintf("expression returned %v, not a bool", out.Value())
	}
	if !b {
		return false, "expression is false"
	}
	return true, ""
}
