// Package policy turns a device's latest verified report into a trust score
// and access-level decisions. Every outcome carries its reason; evidence that
// is missing or could not be measured never passes.
package policy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

//go:embed default.yaml
var defaultYAML []byte

// Policy is a parsed, validated policy file.
type Policy struct {
	Freshness Freshness `yaml:"freshness"`
	Checks    []Check   `yaml:"checks"`
	Levels    []Level   `yaml:"levels"`
	// Notify says how often devices tell their users about failing
	// checks, and how long before a grace ends they warn.
	Notify Notify `yaml:"notify"`

	setKeys  sync.Map // LevelSet → SetKey's string
	hasGrace bool     // some check has a grace
}

// Freshness sets how trust decays when a device goes silent.
type Freshness struct {
	StaleAfter  time.Duration `yaml:"stale_after"`
	ExpireAfter time.Duration `yaml:"expire_after"`
}

// Notify bounds what devices show their users (agent desktop
// notifications) and when the collector announces a grace ending.
type Notify struct {
	// Every is the shortest time between two notifications of one
	// failing check on a device (DefaultNotifyEvery when zero).
	Every time.Duration `yaml:"every"`
	// BeforeBlock is how long before a check's grace ends the device's
	// user is warned, and a grace_ending event goes out
	// (DefaultNotifyBeforeBlock when zero).
	BeforeBlock time.Duration `yaml:"before_block"`
}

// Defaults of Notify.
const (
	DefaultNotifyEvery       = 4 * time.Hour
	DefaultNotifyBeforeBlock = 24 * time.Hour
	// minNotifyEvery keeps a policy from making devices nag their users.
	minNotifyEvery = 10 * time.Minute
)

// NotifyEvery is Notify.Every, or its default.
func (p *Policy) NotifyEvery() time.Duration {
	if p.Notify.Every > 0 {
		return p.Notify.Every
	}
	return DefaultNotifyEvery
}

// NotifyBeforeBlock is Notify.BeforeBlock, or its default.
func (p *Policy) NotifyBeforeBlock() time.Duration {
	if p.Notify.BeforeBlock > 0 {
		return p.Notify.BeforeBlock
	}
	return DefaultNotifyBeforeBlock
}

// Check is one weighted check. Its name selects what it examines.
type Check struct {
	Name   string `yaml:"name"`
	Weight uint32 `yaml:"weight"`
	// Grace is how long a failing check does not count against a device:
	// from the first report that failed it (the device's failing-since
	// time for the check, which every collector shares) until then, the
	// check counts as passing for the score and for levels that require
	// it, and every decision says when it will block. Zero blocks at once.
	Grace time.Duration `yaml:"grace"`
	// MaxSecurityPending is the most pending security updates that pass
	// (security_updates).
	MaxSecurityPending uint32 `yaml:"max_security_pending"`
	// MinVersions maps an OS name (as reported: debian, ubuntu, darwin,
	// windows) to the lowest version that passes (os_version). An OS not
	// listed is unknown.
	MinVersions map[string]string `yaml:"min_versions"`
	// MaxScreenLockTimeout is the longest inactivity before the screen must
	// lock (screen_lock); 0 accepts any enabled lock.
	MaxScreenLockTimeout time.Duration `yaml:"max_timeout"`
	// Measured says how secure_boot treats the collector's own reading of
	// PCR 7 from a TPM event log: prefer (the default: measured when
	// available, else reported), require (measured or unknown), ignore.
	Measured string `yaml:"measured"`
}

// Measured is evidence the collector derived itself from a verified TPM
// quote and event log, rather than what the agent reported.
type Measured struct {
	SecureBootKnown bool
	SecureBoot      bool
	// Reason explains an unknown measured secure boot state.
	Reason string
}

// Level is a named access level.
type Level struct {
	Name        string   `yaml:"name"`
	Description string   `yaml:"description"`
	MinScore    uint32   `yaml:"min_score"`
	Require     []string `yaml:"require"`
	// MinAssurance is the weakest identity assurance allowed: software,
	// tpm_ek_pinned or tpm_ek_verified. Empty allows any.
	MinAssurance string `yaml:"min_assurance"`
	// Expr is a CEL expression over `device` that must also hold, e.g.
	// device.score >= 80 && device.disk.system_encrypted &&
	// device.evidence_age("os") < duration("24h").
	Expr string `yaml:"expr"`
	// Enforce says what a device that does not meet the level is told:
	// block (the default) denies; warn allows and says so (a header for
	// gateways, a field of CheckAccess, the decision log); off allows
	// without a word and only records the decision, for rolling a new
	// level out.
	Enforce string `yaml:"enforce"`

	program     cel.Program
	enforcement Enforcement
}

// Enforcement is what a level's decision does when a device does not meet
// it (Level.Enforce).
type Enforcement uint8

// The enforcements.
const (
	EnforceBlock Enforcement = iota
	EnforceWarn
	EnforceOff
)

var enforcementNames = map[string]Enforcement{"": EnforceBlock, "block": EnforceBlock, "warn": EnforceWarn, "off": EnforceOff}

// String is the name a policy gives the enforcement.
func (e Enforcement) String() string {
	switch e {
	case EnforceWarn:
		return "warn"
	case EnforceOff:
		return "off"
	}
	return "block"
}

// Proto is the enforcement as the wire contract names it.
func (e Enforcement) Proto() posturev1.Enforcement {
	switch e {
	case EnforceWarn:
		return posturev1.Enforcement_ENFORCEMENT_WARN
	case EnforceOff:
		return posturev1.Enforcement_ENFORCEMENT_OFF
	}
	return posturev1.Enforcement_ENFORCEMENT_BLOCK
}

// Enforcement is the level's enforcement.
func (l Level) Enforcement() Enforcement { return l.enforcement }

// checkKinds maps check names to what they examine and the options they
// read. An option set on a check that does not read it is an error: the
// check would ignore it, and a policy would say more than it enforces.
var checkKinds = map[string]checkKind{
	"disk_encryption":     {eval: checkDisk},
	"security_updates":    {eval: checkUpdates, options: []string{"max_security_pending"}},
	"secure_boot":         {eval: checkSecureBoot, options: []string{"measured"}},
	"os_version":          {eval: checkOSVersion, options: []string{"min_versions"}},
	"firewall":            {eval: checkFirewall},
	"screen_lock":         {eval: checkScreenLock, options: []string{"max_timeout"}},
	"endpoint_protection": {eval: checkEndpoint},
	"auto_update":         {eval: checkAutoUpdate},
}

type checkKind struct {
	eval    func(Check, *posturev1.PostureReport, *Measured) outcome
	options []string // YAML keys besides name and weight
}

// maxWeight is the largest weight of a check. Weights are relative, so
// this loses nothing, and scores are computed far from overflow.
const maxWeight = 1000

var assuranceNames = map[string]posturev1.IdentityAssurance{
	"software":        posturev1.IdentityAssurance_IDENTITY_ASSURANCE_SOFTWARE,
	"tpm_ek_pinned":   posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_PINNED,
	"tpm_ek_verified": posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED,
}

// AssuranceName is the policy name of an assurance value.
func AssuranceName(a posturev1.IdentityAssurance) string {
	for k, v := range assuranceNames {
		if v == a {
			return k
		}
	}
	return "unknown"
}

// Default returns the built-in policy.
func Default() *Policy {
	p, err := Parse(defaultYAML)
	if err != nil {
		panic("built-in policy is invalid: " + err.Error())
	}
	return p
}

// Load reads and validates a policy file.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// Parse decodes and validates policy YAML: one document, no unknown fields,
// and no setting that a check would ignore, so a typo cannot silently
// weaken a policy. Errors give the line in the file.
func Parse(data []byte) (*Policy, error) {
	lay, err := locate(data)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if err := p.validate(lay); err != nil {
		return nil, err
	}
	return &p, nil
}

// layout is where the parts of a policy are in its file, and which keys
// each check and level sets (after YAML merges and aliases).
type layout struct {
	freshness int
	notify    int
	checks    []entry
	levels    []entry
}

// entry is one item of a list: its line and the lines of its keys.
type entry struct {
	line int
	keys map[string]int
}

func (l layout) check(i int) entry {
	if i < len(l.checks) {
		return l.checks[i]
	}
	return entry{}
}

func (l layout) level(i int) entry {
	if i < len(l.levels) {
		return l.levels[i]
	}
	return entry{}
}

// keyLine is the line of key, or else of the item.
func (e entry) keyLine(key string) int {
	if n, ok := e.keys[key]; ok {
		return n
	}
	return e.line
}

// locate reads the layout of a policy and refuses a file of several YAML
// documents, of which the decoder would read only the first.
func locate(data []byte) (layout, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return layout{}, errors.New("parse: the policy is empty; it needs freshness, checks and levels (see the built-in policy, collector/policy/default.yaml)")
	} else if err != nil {
		return layout{}, fmt.Errorf("parse: %w", err)
	}
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return layout{}, fmt.Errorf("parse: %w", err)
		}
		// An empty document (a trailing ---) holds nothing to ignore.
		if len(more.Content) > 0 && more.Content[0].Tag != "!!null" {
			return layout{}, fmt.Errorf("line %d: a second YAML document (after ---): a policy file holds one document, and the rest would be ignored; merge it into the first or remove it", more.Content[0].Line)
		}
	}
	// Shape errors are left to the strict decode, which words them better.
	var raw struct {
		Freshness yaml.Node   `yaml:"freshness"`
		Notify    yaml.Node   `yaml:"notify"`
		Checks    []yaml.Node `yaml:"checks"`
		Levels    []yaml.Node `yaml:"levels"`
	}
	_ = doc.Decode(&raw)
	items := func(nodes []yaml.Node) []entry {
		var es []entry
		for _, n := range nodes {
			e := entry{line: n.Line, keys: map[string]int{}}
			var keys map[string]yaml.Node
			_ = n.Decode(&keys)
			for k, v := range keys {
				e.keys[k] = v.Line
			}
			es = append(es, e)
		}
		return es
	}
	return layout{freshness: raw.Freshness.Line, notify: raw.Notify.Line, checks: items(raw.Checks), levels: items(raw.Levels)}, nil
}

// at prefixes an error with its line in the policy file, when known.
func at(line int, format string, args ...any) error {
	if line > 0 {
		format = "line %d: " + format
		args = append([]any{line}, args...)
	}
	return fmt.Errorf(format, args...)
}

// versionPattern is a minimum version: dot-separated numbers.
var versionPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*$`)

func (p *Policy) validate(lay layout) error {
	var errs []error
	f := p.Freshness
	if f.StaleAfter <= 0 || f.ExpireAfter <= f.StaleAfter {
		errs = append(errs, at(lay.freshness, "freshness: need 0 < stale_after < expire_after, got %v and %v", f.StaleAfter, f.ExpireAfter))
	}
	if len(p.Checks) == 0 {
		errs = append(errs, errors.New("checks: at least one check is required"))
	}
	names := map[string]bool{}
	for i, c := range p.Checks {
		e := lay.check(i)
		where := fmt.Sprintf("checks[%d] %s", i, c.Name)
		kind, known := checkKinds[c.Name]
		if !known {
			errs = append(errs, at(e.keyLine("name"), "checks[%d]: unknown check %q (known: %s)", i, c.Name, strings.Join(knownChecks(), ", ")))
		}
		if names[c.Name] {
			errs = append(errs, at(e.line, "checks[%d]: %q listed twice", i, c.Name))
		}
		names[c.Name] = true
		_, hasWeight := e.keys["weight"]
		switch {
		case c.Weight == 0 && !hasWeight && e.keys != nil:
			errs = append(errs, at(e.line, "%s: weight is missing: give every check a weight from 1 to %d", where, maxWeight))
		case c.Weight == 0:
			errs = append(errs, at(e.keyLine("weight"), "%s: weight 0: a check must weigh 1 to %d, or it could never lower a score; remove the check rather than weigh it nothing", where, maxWeight))
		case c.Weight > maxWeight:
			errs = append(errs, at(e.keyLine("weight"), "%s: weight %d is above %d: weights are relative, so scale them down to 1 to %d", where, c.Weight, maxWeight, maxWeight))
		}
		if known {
			for _, opt := range c.optionsSet(e) {
				if !slices.Contains(kind.options, opt) {
					errs = append(errs, at(e.keyLine(opt), "%s: %s is not an option of %s, which would ignore it (%s); remove it or move it to that check", where, opt, c.Name, optionOwner(opt)))
				}
			}
		}
		switch c.Measured {
		case "", "prefer", "require", "ignore":
		default:
			errs = append(errs, at(e.keyLine("measured"), "%s: measured %q: want prefer, require or ignore", where, c.Measured))
		}
		p.hasGrace = p.hasGrace || c.Grace > 0
		if c.Grace < 0 {
			errs = append(errs, at(e.keyLine("grace"), "%s: grace %v is negative: give how long a failing check is tolerated, such as 72h (0 blocks at once)", where, c.Grace))
		}
		if c.MaxScreenLockTimeout < 0 {
			errs = append(errs, at(e.keyLine("max_timeout"), "%s: max_timeout %v is negative: give the longest inactivity allowed before the screen locks, such as 15m (0 accepts any enabled lock)", where, c.MaxScreenLockTimeout))
		}
		oses := slices.Sorted(maps.Keys(c.MinVersions))
		for _, osName := range oses {
			v := c.MinVersions[osName]
			switch {
			case osName == "" || osName != strings.ToLower(osName):
				errs = append(errs, at(e.keyLine("min_versions"), "%s: min_versions: OS name %q: write it in lower case as devices report it (debian, ubuntu, darwin, windows)", where, osName))
			case !versionPattern.MatchString(v):
				errs = append(errs, at(e.keyLine("min_versions"), "%s: min_versions %s: %q is not a version: write dot-separated numbers, such as \"22.04\"", where, osName, v))
			}
		}
	}
	if n := p.Notify; n.Every < 0 || (n.Every > 0 && n.Every < minNotifyEvery) {
		errs = append(errs, at(lay.notify, "notify: every %v: give at least %v between two notifications of a check (default %v)", n.Every, minNotifyEvery, DefaultNotifyEvery))
	}
	if p.Notify.BeforeBlock < 0 {
		errs = append(errs, at(lay.notify, "notify: before_block %v is negative: give how long before a grace ends users are warned, such as 24h", p.Notify.BeforeBlock))
	}
	if len(p.Levels) == 0 {
		errs = append(errs, errors.New("levels: at least one access level is required"))
	}
	if len(p.Levels) > maxLevels {
		errs = append(errs, fmt.Errorf("levels: %d defined, at most %d are allowed", len(p.Levels), maxLevels))
	}
	var schema *deviceSchema
	levels := map[string]bool{}
	for i := range p.Levels {
		l := &p.Levels[i]
		e := lay.level(i)
		if l.Expr != "" {
			if schema == nil {
				schema = newDeviceSchema(p)
			}
			prg, err := compileExpr(l.Expr, schema)
			if err != nil {
				errs = append(errs, at(e.keyLine("expr"), "levels[%d] %s: expr: %w", i, l.Name, err))
			}
			l.program = prg
		}
		if l.Name == "" {
			errs = append(errs, at(e.line, "levels[%d]: name is required", i))
		}
		if strings.IndexFunc(l.Name, unicode.IsControl) >= 0 {
			errs = append(errs, at(e.keyLine("name"), "levels[%d]: name %q contains a control character", i, l.Name))
		}
		if levels[l.Name] {
			errs = append(errs, at(e.line, "levels[%d]: %q defined twice", i, l.Name))
		}
		levels[l.Name] = true
		if l.MinScore > 100 {
			errs = append(errs, at(e.keyLine("min_score"), "levels[%d] %s: min_score %d is above 100", i, l.Name, l.MinScore))
		}
		for _, r := range l.Require {
			if !names[r] {
				errs = append(errs, at(e.keyLine("require"), "levels[%d] %s: requires check %q, which the policy does not define", i, l.Name, r))
			}
		}
		if en, ok := enforcementNames[l.Enforce]; ok {
			l.enforcement = en
		} else {
			errs = append(errs, at(e.keyLine("enforce"), "levels[%d] %s: enforce %q: want block, warn or off", i, l.Name, l.Enforce))
		}
		if _, ok := assuranceNames[l.MinAssurance]; l.MinAssurance != "" && !ok {
			errs = append(errs, at(e.keyLine("min_assurance"), "levels[%d] %s: min_assurance %q is not one of software, tpm_ek_pinned, tpm_ek_verified", i, l.Name, l.MinAssurance))
		}
	}
	return errors.Join(errs...)
}

// optionsSet lists the options a check sets: the keys of its entry besides
// name and weight, and, should the layout lack one, any option with a
// value.
func (c Check) optionsSet(e entry) []string {
	set := map[string]bool{}
	for k := range e.keys {
		if k != "name" && k != "weight" && k != "grace" {
			set[k] = true
		}
	}
	set["max_security_pending"] = set["max_security_pending"] || c.MaxSecurityPending != 0
	set["min_versions"] = set["min_versions"] || c.MinVersions != nil
	set["max_timeout"] = set["max_timeout"] || c.MaxScreenLockTimeout != 0
	set["measured"] = set["measured"] || c.Measured != ""
	var opts []string
	for k, v := range set {
		if v {
			opts = append(opts, k)
		}
	}
	slices.Sort(opts)
	return opts
}

// optionOwner says which check reads an option.
func optionOwner(opt string) string {
	for _, name := range knownChecks() {
		if slices.Contains(checkKinds[name].options, opt) {
			return "it is an option of " + name
		}
	}
	return "no check reads it"
}

func knownChecks() []string {
	var k []string
	for n := range checkKinds {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

// HasGrace says whether a check of the policy has a grace.
func (p *Policy) HasGrace() bool { return p.hasGrace }

// Check returns the named check.
func (p *Policy) Check(name string) (Check, bool) {
	for _, c := range p.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// Level returns the named level.
func (p *Policy) Level(name string) (Level, bool) {
	for _, l := range p.Levels {
		if l.Name == name {
			return l, true
		}
	}
	return Level{}, false
}

// secureBootMode is the measured setting of the policy's secure_boot
// check; empty (prefer) without one.
func (p *Policy) secureBootMode() string {
	for _, c := range p.Checks {
		if c.Name == "secure_boot" {
			return c.Measured
		}
	}
	return ""
}

// LevelNames lists the levels in policy order.
func (p *Policy) LevelNames() []string {
	var n []string
	for _, l := range p.Levels {
		n = append(n, l.Name)
	}
	return n
}

// compareVersions compares dotted numeric versions ("22.04" < "24.04",
// "10.0.19045" < "10.0.22631"); a non-numeric part compares as text.
func compareVersions(a, b string) int {
	for a != "" || b != "" {
		var x, y string
		x, a, _ = strings.Cut(a, ".")
		y, b, _ = strings.Cut(b, ".")
		xi, errX := strconv.Atoi(x)
		yi, errY := strconv.Atoi(y)
		if x == "" {
			xi, errX = 0, nil
		}
		if y == "" {
			yi, errY = 0, nil
		}
		if errX == nil && errY == nil {
			if c := xi - yi; c != 0 {
				return c
			}
			continue
		}
		if c := strings.Compare(x, y); c != 0 {
			return c
		}
	}
	return 0
}
