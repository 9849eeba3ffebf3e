package policy

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"

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
	for _, c := range a.checks {
		checks[c.check.Name] = strings.ToLower(strings.TrimPrefix(c.result.String(), "OUTCOME_"))
	}
	v["checks"] = checks
	v["raw_score"] = int64(a.rawScore)
	v[keyObserved] = observed
	return v
}

// evalExpr evaluates a level expression for the subject at now. Any
// evaluation error denies, with the error as the reason.
func evalExpr(prg cel.Program, s *Subject, score uint32, now time.Time) (bool, string) {
	vars := make(map[string]any, len(s.Assessment.vars)+6)
	maps.Copy(vars, s.Assessment.vars)
	vars["score"] = int64(score)
	vars["state"] = strings.ToLower(strings.TrimPrefix(s.State.String(), "DEVICE_STATE_"))
	vars["identity"] = map[string]any{"assurance": AssuranceName(s.Assurance)}
	vars["report_age"] = now.Sub(s.ReportAt)
	vars[keyNow] = now
	out, _, err := prg.Eval(map[string]any{"device": vars})
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
