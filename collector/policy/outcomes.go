package policy

import (
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Outcome is the verdict of the check named name in the assessment, and
// whether the assessment has such a check.
func (a *Assessment) Outcome(name string) (posturev1.Outcome, bool) {
	if a == nil {
		return 0, false
	}
	for i, c := range a.checks {
		if a.name(i) == name {
			return c.result, true
		}
	}
	return 0, false
}

// Failing calls fn with the name of every check of the assessment that
// did not pass (failed, or unknown: unknown never passes); checks that do
// not apply are not failing.
func (a *Assessment) Failing(fn func(name string)) {
	if a == nil {
		return
	}
	for i, c := range a.checks {
		if c.result != posturev1.Outcome_OUTCOME_PASS && c.result != posturev1.Outcome_OUTCOME_NOT_APPLICABLE {
			fn(a.name(i))
		}
	}
}
