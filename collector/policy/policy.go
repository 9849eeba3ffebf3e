// Package policy turns a device's latest verified report into a trust score
// and access-level decisions. Every outcome carries its reason; evidence that
// is missing or could not be measured never passes.
package policy

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
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

	setKeys sync.Map // LevelSet → SetKey's string
}

// Freshness sets how trust decays when a device goes silent.
type Freshness struct {
	StaleAfter  time.Duration `yaml:"stale_after"`
	ExpireAfter time.Duration `yaml:"expire_after"`
}

// Check is one weighted check. Its name selects what it examines.
type Check struct {
	Name   string `yaml:"name"`
	Weight uint32 `yaml:"weight"`
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

	program cel.Program
}

// checkFuncs maps check names to what they examine.
var checkFuncs = map[string]func(Check, *posturev1.PostureReport, *Measured) outcome{
	"disk_encryption":     checkDisk,
	"security_updates":    checkUpdates,
	"secure_boot":         checkSecureBoot,
	"os_version":          checkOSVersion,
	"firewall":            checkFirewall,
	"screen_lock":         checkScreenLock,
	"endpoint_protection": checkEndpoint,
	"auto_update":         checkAutoUpdate,
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

// Parse decodes and validates policy YAML. Unknown fields are errors, so a
// typo cannot silently weaken a policy.
func Parse(data []byte) (*Policy, error) {
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func (p *Policy) validate() error {
	var errs []error
	f := p.Freshness
	if f.StaleAfter <= 0 || f.ExpireAfter <= f.StaleAfter {
		errs = append(errs, fmt.Errorf("freshness: need 0 < stale_after < expire_after, got %v and %v", f.StaleAfter, f.ExpireAfter))
	}
	if len(p.Checks) == 0 {
		errs = append(errs, errors.New("checks: at least one check is required"))
	}
	names := map[string]bool{}
	for i, c := range p.Checks {
		if _, ok := checkFuncs[c.Name]; !ok {
			errs = append(errs, fmt.Errorf("checks[%d]: unknown check %q (known: %s)", i, c.Name, strings.Join(knownChecks(), ", ")))
		}
		switch c.Measured {
		case "", "prefer", "require", "ignore":
		default:
			errs = append(errs, fmt.Errorf("checks[%d]: measured %q: want prefer, require or ignore", i, c.Measured))
		}
		if names[c.Name] {
			errs = append(errs, fmt.Errorf("checks[%d]: %q listed twice", i, c.Name))
		}
		names[c.Name] = true
		switch {
		case c.Weight == 0:
			errs = append(errs, fmt.Errorf("checks[%d] %s: weight is 0 or missing: a check must weigh 1 to %d, or it could never lower a score; remove the check rather than weigh it nothing", i, c.Name, maxWeight))
		case c.Weight > maxWeight:
			errs = append(errs, fmt.Errorf("checks[%d] %s: weight %d is above %d: weights are relative, so scale them down to 1 to %d", i, c.Name, c.Weight, maxWeight, maxWeight))
		}
	}
	if len(p.Levels) == 0 {
		errs = append(errs, errors.New("levels: at least one access level is required"))
	}
	if len(p.Levels) > maxLevels {
		errs = append(errs, fmt.Errorf("levels: %d defined, at most %d are allowed", len(p.Levels), maxLevels))
	}
	levels := map[string]bool{}
	for i := range p.Levels {
		l := &p.Levels[i]
		if l.Expr != "" {
			prg, err := compileExpr(l.Expr)
			if err != nil {
				errs = append(errs, fmt.Errorf("levels[%d] %s: expr: %w", i, l.Name, err))
			}
			l.program = prg
		}
		if l.Name == "" {
			errs = append(errs, fmt.Errorf("levels[%d]: name is required", i))
		}
		if strings.IndexFunc(l.Name, unicode.IsControl) >= 0 {
			errs = append(errs, fmt.Errorf("levels[%d]: name %q contains a control character", i, l.Name))
		}
		if levels[l.Name] {
			errs = append(errs, fmt.Errorf("levels[%d]: %q defined twice", i, l.Name))
		}
		levels[l.Name] = true
		if l.MinScore > 100 {
			errs = append(errs, fmt.Errorf("levels[%d] %s: min_score %d is above 100", i, l.Name, l.MinScore))
		}
		for _, r := range l.Require {
			if !names[r] {
				errs = append(errs, fmt.Errorf("levels[%d] %s: requires check %q, which the policy does not define", i, l.Name, r))
			}
		}
		if _, ok := assuranceNames[l.MinAssurance]; l.MinAssurance != "" && !ok {
			errs = append(errs, fmt.Errorf("levels[%d] %s: min_assurance %q is not one of software, tpm_ek_pinned, tpm_ek_verified", i, l.Name, l.MinAssurance))
		}
	}
	return errors.Join(errs...)
}

func knownChecks() []string {
	var k []string
	for n := range checkFuncs {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
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
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y string
		if i < len(as) {
			x = as[i]
		}
		if i < len(bs) {
			y = bs[i]
		}
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
