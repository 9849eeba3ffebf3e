package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
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
// latest verified posture, device.evidence_age(section),
// device.failing_since(check) and device.in_grace(check).
var celEnv = mustEnv()

func mustEnv() *cel.Env {
	deviceType := cel.MapType(cel.StringType, cel.DynType)
	env, err := cel.NewEnv(
		cel.Variable("device", deviceType),
		cel.Function("evidence_age",
			cel.MemberOverload("device_evidence_age_string",
				[]*cel.Type{deviceType, cel.StringType}, cel.DurationType,
				cel.BinaryBinding(evidenceAgeOf))),
		cel.Function("failing_since",
			cel.MemberOverload("device_failing_since_string",
				[]*cel.Type{deviceType, cel.StringType}, cel.TimestampType,
				cel.BinaryBinding(failingSinceOf))),
		cel.Function("in_grace",
			cel.MemberOverload("device_in_grace_string",
				[]*cel.Type{deviceType, cel.StringType}, cel.BoolType,
				cel.BinaryBinding(inGraceOf))),
	)
	if err != nil {
		panic("policy CEL environment: " + err.Error())
	}
	return env
}

// evidenceAgeOf is device.evidence_age("os"): how old that section's
// measurement is (evidenceAge), from its observed_at capped at the report's
// arrival (EvidenceTime). A section that was not measured, or whose
// observed_at is missing or invalid, has no age, and the expression errors,
// which denies.
func evidenceAgeOf(dev, section ref.Val) ref.Val {
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
		return types.NewErr("evidence_age: no measured evidence with a valid observed_at for %v", section)
	}
	return types.Duration{Duration: evidenceAge(now.(types.Timestamp).Time, at.(types.Timestamp).Time)}
}

// checkOf finds a check of the decision's subject for failing_since and
// in_grace: the device value a decision made, and the check's index in
// its assessment.
func checkOf(dev, check ref.Val, fn string) (*deviceValue, int, ref.Val) {
	d, ok := dev.(*deviceValue)
	if !ok || d.subject == nil || d.subject.Assessment == nil {
		return nil, 0, types.NewErr("%s: receiver is not the device", fn)
	}
	name, ok := check.(types.String)
	if !ok {
		return nil, 0, types.NewErr("%s: the check name is not a string", fn)
	}
	a := d.subject.Assessment
	for i := range a.checks {
		if a.name(i) == string(name) {
			return d, i, nil
		}
	}
	return nil, 0, types.NewErr("%s: the device's assessment has no check %q", fn, string(name))
}

// failingSinceOf is device.failing_since("disk_encryption"): since when
// the check has been failing (recorded, shared by every collector, and
// kept across restarts). For a check that passes it is an error, which
// denies unless the expression asks first: device.checks.x != "pass" &&
// device.failing_since("x") < timestamp(…), or with ||, whose other side
// decides.
func failingSinceOf(dev, check ref.Val) ref.Val {
	d, i, err := checkOf(dev, check, "failing_since")
	if err != nil {
		return err
	}
	since, failing := d.subject.failingSince(i)
	if !failing {
		return types.NewErr("failing_since: check %v does not fail", check)
	}
	return types.Timestamp{Time: since}
}

// inGraceOf is device.in_grace("disk_encryption"): the check fails, and
// its grace has not ended at the decision's time.
func inGraceOf(dev, check ref.Val) ref.Val {
	d, i, err := checkOf(dev, check, "in_grace")
	if err != nil {
		return err
	}
	return types.Bool(d.subject.inGrace(i, d.now, d.except))
}

// compileExpr compiles a level expression and checks every path it reads
// under device against schema. Errors give line and column within the
// expression.
func compileExpr(expr string, schema *deviceSchema) (cel.Program, error) {
	src := common.NewTextSource(expr)
	ast, iss := celEnv.CompileSource(src)
	if iss.Err() != nil {
		return nil, exprError(src, iss.Errors())
	}
	if errs := schema.check(ast.NativeRep(), expr); len(errs) > 0 {
		return nil, exprError(src, errs)
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

// exprError renders errors in an expression, each with its position and
// the expression's line with a caret under it.
func exprError(src common.Source, errs []*common.Error) error {
	var b strings.Builder
	for i, e := range errs {
		if i > 0 {
			b.WriteString("\n")
		}
		line, col := e.Location.Line(), e.Location.Column()
		if line < 1 || col < 0 {
			b.WriteString(e.Message)
			continue
		}
		fmt.Fprintf(&b, "at line %d, column %d of the expression: %s", line, col+1, e.Message)
		snippet, ok := src.Snippet(line)
		if !ok {
			continue
		}
		snippet = strings.ReplaceAll(snippet, "\t", " ")
		fmt.Fprintf(&b, "\n | %s\n | ", snippet)
		for range min(col, utf8.RuneCountInString(snippet)) {
			b.WriteByte('.')
		}
		b.WriteByte('^')
	}
	return errors.New(b.String())
}

// fieldTree is the names `device` holds, nested; a value without fields
// has a nil tree.
type fieldTree map[string]fieldTree

// deviceSchema is what a policy's expressions may name under device. It is
// made by the code that builds the runtime value, so the two agree.
type deviceSchema struct {
	fields   fieldTree
	sections map[string]bool // what device.evidence_age accepts
	checks   map[string]bool // what device.failing_since and device.in_grace accept
}

// decisionKeys are the keys of device that each decision supplies (see
// deviceValue.dynamic).
var decisionKeys = []string{"score", "state", "identity", "report_age"}

func newDeviceSchema(p *Policy) *deviceSchema {
	a := &Assessment{policy: p, checks: make([]assessed, len(p.Checks))}
	vars := deviceVars(&posturev1.PostureReport{}, time.Time{}, nil, a, true)
	s := &deviceSchema{
		fields:   fieldsOf(types.DefaultTypeAdapter.NativeToValue(vars)),
		sections: map[string]bool{},
		checks:   map[string]bool{},
	}
	for _, c := range p.Checks {
		s.checks[c.Name] = true
	}
	sample := &deviceValue{identity: identityValues[posturev1.IdentityAssurance_IDENTITY_ASSURANCE_UNSPECIFIED]}
	for _, k := range decisionKeys {
		v, ok := sample.dynamic(types.String(k))
		if !ok {
			panic("policy: device." + k + " is not answered by the decision")
		}
		s.fields[k] = fieldsOf(v)
	}
	for sec := range vars[keyObserved].(map[string]time.Time) {
		s.sections[sec] = true
	}
	return s
}

// fieldsOf is the tree of a CEL value, without the keys expressions
// cannot name.
func fieldsOf(v ref.Val) fieldTree {
	m, ok := v.(traits.Mapper)
	if !ok {
		return nil
	}
	t := fieldTree{}
	for it := m.Iterator(); it.HasNext() == types.True; {
		k := it.Next()
		name, _ := k.Value().(string)
		if strings.HasPrefix(name, "@") {
			continue
		}
		t[name] = fieldsOf(m.Get(k))
	}
	return t
}

// check reports every name under device that the device view does not
// have: device.scor, has(device.firewal), device.checks.disk_encrytion,
// "firewal" in device, device.evidence_age("sceen_lock"). A typo would
// otherwise compile, and then deny everyone or, under has() or !, allow.
func (s *deviceSchema) check(a *celast.AST, src string) []*common.Error {
	w := pathChecker{schema: s, info: a.SourceInfo(), src: src}
	w.visit(a.Expr(), false)
	return w.errs
}

type pathChecker struct {
	schema *deviceSchema
	info   *celast.SourceInfo
	src    string
	errs   []*common.Error
}

// visit walks e. shadowed is set inside a comprehension whose own variable
// is named device.
func (w *pathChecker) visit(e celast.Expr, shadowed bool) {
	switch e.Kind() {
	case celast.SelectKind:
		sel := e.AsSelect()
		w.field(e, sel.Operand(), sel.FieldName(), shadowed)
		w.visit(sel.Operand(), shadowed)
	case celast.CallKind:
		call := e.AsCall()
		args := call.Args()
		switch name := call.FunctionName(); {
		case name == operators.Index && len(args) == 2:
			if k, ok := literalString(args[1]); ok {
				w.field(args[1], args[0], k, shadowed)
			}
		case name == operators.In && len(args) == 2:
			if k, ok := literalString(args[0]); ok {
				w.field(args[0], args[1], k, shadowed)
			}
		case name == "evidence_age" && call.IsMemberFunction() && len(args) == 1:
			if _, path, ok := w.lookup(call.Target(), shadowed); ok && path == "device" {
				if sec, ok := literalString(args[0]); ok && !w.schema.sections[sec] {
					w.report(args[0], "device.evidence_age has no section %q; sections are %s", sec, names(w.schema.sections))
				}
			}
		case (name == "failing_since" || name == "in_grace") && call.IsMemberFunction() && len(args) == 1:
			if _, path, ok := w.lookup(call.Target(), shadowed); ok && path == "device" {
				if check, ok := literalString(args[0]); ok && !w.schema.checks[check] {
					w.report(args[0], "device.%s has no check %q; the policy's checks are %s", name, check, names(w.schema.checks))
				}
			}
		}
		if call.IsMemberFunction() {
			w.visit(call.Target(), shadowed)
		}
		for _, a := range args {
			w.visit(a, shadowed)
		}
	case celast.ComprehensionKind:
		c := e.AsComprehension()
		w.visit(c.IterRange(), shadowed)
		w.visit(c.AccuInit(), shadowed)
		inner := shadowed || c.IterVar() == "device" || c.IterVar2() == "device" || c.AccuVar() == "device"
		w.visit(c.LoopCondition(), inner)
		w.visit(c.LoopStep(), inner)
		w.visit(c.Result(), inner)
	case celast.ListKind:
		for _, el := range e.AsList().Elements() {
			w.visit(el, shadowed)
		}
	case celast.MapKind:
		for _, en := range e.AsMap().Entries() {
			w.visit(en.AsMapEntry().Key(), shadowed)
			w.visit(en.AsMapEntry().Value(), shadowed)
		}
	case celast.StructKind:
		for _, f := range e.AsStruct().Fields() {
			w.visit(f.AsStructField().Value(), shadowed)
		}
	}
}

// field checks that the path operand has the field name; at is where to
// report it.
func (w *pathChecker) field(at, operand celast.Expr, name string, shadowed bool) {
	t, path, ok := w.lookup(operand, shadowed)
	switch {
	case !ok:
	case t == nil:
		w.report(at, "%s is a value without fields, so it has no %q", path, name)
	case path == "device.checks":
		if _, found := t[name]; !found {
			w.report(at, "device.checks has no check %q; the policy's checks are %s", name, names(t))
		}
	default:
		if _, found := t[name]; !found {
			w.report(at, "%s has no field %q; it has %s", path, name, names(t))
		}
	}
}

// lookup resolves e as a path from device (device, device.os,
// device["os"].name), giving what it holds; ok is false when e is not
// such a path or names something that does not exist.
func (w *pathChecker) lookup(e celast.Expr, shadowed bool) (t fieldTree, path string, ok bool) {
	var operand celast.Expr
	var name string
	switch e.Kind() {
	case celast.IdentKind:
		if e.AsIdent() == "device" && !shadowed {
			return w.schema.fields, "device", true
		}
		return nil, "", false
	case celast.SelectKind:
		if e.AsSelect().IsTestOnly() { // has() is a bool
			return nil, "", false
		}
		operand, name = e.AsSelect().Operand(), e.AsSelect().FieldName()
	case celast.CallKind:
		call := e.AsCall()
		k, isLiteral := "", false
		if call.FunctionName() == operators.Index && len(call.Args()) == 2 {
			k, isLiteral = literalString(call.Args()[1])
		}
		if !isLiteral {
			return nil, "", false
		}
		operand, name = call.Args()[0], k
	default:
		return nil, "", false
	}
	pt, pp, ok := w.lookup(operand, shadowed)
	if !ok || pt == nil {
		return nil, "", false
	}
	sub, found := pt[name]
	if !found {
		return nil, "", false
	}
	return sub, pp + "." + name, true
}

func (w *pathChecker) report(at celast.Expr, format string, args ...any) {
	loc := w.info.GetStartLocation(at.ID())
	if at.Kind() == celast.SelectKind {
		loc = w.fieldLocation(at)
	}
	w.errs = append(w.errs, common.NewError(at.ID(), fmt.Sprintf(format, args...), loc))
}

// fieldLocation is where a select's field name is. A select starts at its
// dot, so the name is after the first dot from there; one made by has()
// starts at the macro's parenthesis, and the name is after the last dot
// inside it.
func (w *pathChecker) fieldLocation(sel celast.Expr) common.Location {
	start := w.info.GetStartLocation(sel.ID())
	r, ok := w.info.GetOffsetRange(sel.ID())
	if !ok {
		return start
	}
	text := []rune(w.src)
	name := []rune(sel.AsSelect().FieldName())
	found, depth := -1, 0
	for i := int(r.Start); i >= 0 && i < len(text); i++ {
		switch text[i] {
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case '.':
			j := i + 1
			for j < len(text) && unicode.IsSpace(text[j]) {
				j++
			}
			if j+len(name) <= len(text) && slices.Equal(text[j:j+len(name)], name) {
				found = j
			}
		}
		if found >= 0 && (!sel.AsSelect().IsTestOnly() || depth <= 0) {
			return w.info.GetLocationByOffset(int32(found))
		}
	}
	return start
}

func literalString(e celast.Expr) (string, bool) {
	if e.Kind() != celast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// names lists a set's keys in order.
func names[V any](m map[string]V) string {
	return strings.Join(slices.Sorted(maps.Keys(m)), ", ")
}

// deviceVars is the time-independent part of the device map, built once
// per verified report, received at receivedAt. Sections that were not
// measured are absent, so an expression that reads them errors and denies:
// unknown never passes. A measured section whose observed_at is missing or
// invalid is present, without an evidence time (see EvidenceTime). With
// every set, sections are present whatever their status: that is the
// schema expressions are checked against.
func deviceVars(r *posturev1.PostureReport, receivedAt time.Time, m *Measured, a *Assessment, every bool) map[string]any {
	observed := map[string]time.Time{}
	ok := func(name string, meta *posturev1.SignalMeta) bool {
		if every {
			observed[name] = time.Time{}
			return true
		}
		if meta.GetStatus() != posturev1.Status_STATUS_OK {
			return false
		}
		if t, ok := EvidenceTime(meta.GetObservedAt(), receivedAt); ok {
			observed[name] = t
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
	// What the secure_boot check judges, measured or reported.
	if s := secureBootFrom(a.policy.secureBootMode(), r, m); ok("secure_boot", s.meta) {
		v["secure_boot"] = s.view()
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
	// subject and except are the decision's, for failing_since and
	// in_grace.
	subject *Subject
	except  int
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

// evalExpr evaluates a level expression for the subject at now (except
// names a check judged as if its grace were over, or is -1). Any
// evaluation error denies, with the error as the reason.
func evalExpr(prg cel.Program, s *Subject, score uint32, now time.Time, except int) (bool, string) {
	dev := &deviceValue{
		Mapper:    s.Assessment.celVars,
		score:     int64(score),
		state:     strings.ToLower(strings.TrimPrefix(s.State.String(), "DEVICE_STATE_")),
		identity:  identityValues[s.Assurance],
		reportAge: s.ReportAge(now),
		now:       now,
		subject:   s,
		except:    except,
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
