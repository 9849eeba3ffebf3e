package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrStandingChanged is returned by RecordStanding when the stored
// standing is no longer the one the change was made from: another
// collector (or another pass) recorded one meanwhile. Nothing changed;
// the caller judges the device again once it applied the newer event.
var ErrStandingChanged = errors.New("the device's recorded standing changed meanwhile")

// Standing is what the collectors recorded of a device under the policy:
// since when each of its failing checks has failed, and which access
// levels it meets. It derives from the policy, the device's reports and
// the clock; it is recorded so that every collector shares it (a grace
// runs from the first failing report, whichever collector took it), so
// that it survives restarts, and so that each of its changes leaves
// Posture once (the outbox). The zero Standing records nothing: no check
// failing, no level met.
type Standing struct {
	// Failing lists the failing checks, by name.
	Failing []FailingCheck `json:"failing,omitempty"`
	// Levels lists the levels met (enforced ones: block and warn), by
	// name.
	Levels []string `json:"levels,omitempty"`
}

// FailingCheck is one failing check of a Standing.
type FailingCheck struct {
	Check string    `json:"check"`
	Since time.Time `json:"since"` // the first report that failed it
	// BlocksAt is when its grace ends; zero for a check without one.
	BlocksAt time.Time `json:"blocks_at,omitzero"`
	// Warned is set once the grace's end was announced (grace.ending).
	Warned bool `json:"warned,omitempty"`
}

// Normalize puts a standing in its one canonical form: sorted, times in
// UTC, no empty lists. Two standings that mean the same are then equal
// (Equal) and encode to the same bytes.
func (s Standing) Normalize() Standing {
	out := Standing{}
	for _, f := range s.Failing {
		f.Since, f.BlocksAt = f.Since.UTC(), f.BlocksAt.UTC()
		if f.BlocksAt.IsZero() {
			f.BlocksAt = time.Time{}
		}
		out.Failing = append(out.Failing, f)
	}
	slices.SortFunc(out.Failing, func(a, b FailingCheck) int { return strings.Compare(a.Check, b.Check) })
	out.Failing = slices.CompactFunc(out.Failing, func(a, b FailingCheck) bool { return a.Check == b.Check })
	if len(s.Levels) > 0 {
		out.Levels = slices.Compact(slices.Sorted(slices.Values(s.Levels)))
	}
	return out
}

// Equal says whether two standings record the same.
func (s Standing) Equal(o Standing) bool {
	a, b := s.Normalize(), o.Normalize()
	return slices.Equal(a.Levels, b.Levels) && slices.EqualFunc(a.Failing, b.Failing, func(x, y FailingCheck) bool {
		return x.Check == y.Check && x.Since.Equal(y.Since) && x.BlocksAt.Equal(y.BlocksAt) && x.Warned == y.Warned
	})
}

// Failure returns the named failing check.
func (s Standing) Failure(check string) (FailingCheck, bool) {
	for _, f := range s.Failing {
		if f.Check == check {
			return f, true
		}
	}
	return FailingCheck{}, false
}

// EncodeStanding is how backends store a standing: the JSON of its
// normal form (nil for the zero standing).
func EncodeStanding(s Standing) ([]byte, error) {
	s = s.Normalize()
	if len(s.Failing) == 0 && len(s.Levels) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode standing: %w", err)
	}
	return b, nil
}

// DecodeStanding reads what EncodeStanding wrote; empty is the zero
// standing.
func DecodeStanding(b []byte) (Standing, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return Standing{}, nil
	}
	var s Standing
	if err := json.Unmarshal(b, &s); err != nil {
		return Standing{}, fmt.Errorf("decode standing: %w", err)
	}
	return s.Normalize(), nil
}

// StandingChange is one change between two standings of a device, as it
// leaves Posture (OutboxKind).
type StandingChange struct {
	Kind  string // OutboxLevelGained, OutboxLevelLost, OutboxCheckFailing, OutboxCheckPassing or OutboxGraceEnding
	Level string // for level changes
	Check FailingCheck
}

// StandingChanges lists what changed from prev to next, in a fixed
// order: checks that started failing, grace endings announced, checks
// that passed again, levels lost, levels gained.
func StandingChanges(prev, next Standing) []StandingChange {
	prev, next = prev.Normalize(), next.Normalize()
	var out []StandingChange
	for _, f := range next.Failing {
		old, was := prev.Failure(f.Check)
		if !was {
			out = append(out, StandingChange{Kind: OutboxCheckFailing, Check: f})
		}
		if f.Warned && (!was || !old.Warned) {
			out = append(out, StandingChange{Kind: OutboxGraceEnding, Check: f})
		}
	}
	for _, f := range prev.Failing {
		if _, still := next.Failure(f.Check); !still {
			out = append(out, StandingChange{Kind: OutboxCheckPassing, Check: f})
		}
	}
	for _, l := range prev.Levels {
		if !slices.Contains(next.Levels, l) {
			out = append(out, StandingChange{Kind: OutboxLevelLost, Level: l})
		}
	}
	for _, l := range next.Levels {
		if !slices.Contains(prev.Levels, l) {
			out = append(out, StandingChange{Kind: OutboxLevelGained, Level: l})
		}
	}
	return out
}

// StandingInState is a device's standing once its state is state: a
// device that is not active meets no level (a revoked, suspect or pending
// device is denied everything), so a change of state that ends its
// activity loses its levels in the same transaction. changed says whether
// the standing changed.
func StandingInState(s Standing, state int32) (Standing, bool) {
	if state == StateActive || len(s.Levels) == 0 {
		return s, false
	}
	s.Levels = nil
	return s, true
}
