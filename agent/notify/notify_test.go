package notify

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var t0 = time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)

func standing(checks ...*posturev1.CheckResult) *posturev1.DeviceStanding {
	return &posturev1.DeviceStanding{Failing: checks, NotifyEvery: durationpb.New(4 * time.Hour), NotifyBeforeBlock: durationpb.New(24 * time.Hour)}
}

func disk(since time.Time, grace time.Duration) *posturev1.CheckResult {
	c := &posturev1.CheckResult{Name: "disk_encryption", Outcome: posturev1.Outcome_OUTCOME_FAIL, Reason: "not encrypted: /",
		Remediation: "encrypt the system disk", FailingSince: timestamppb.New(since)}
	if grace > 0 {
		c.BlocksAt, c.InGrace = timestamppb.New(since.Add(grace)), true
	}
	return c
}

// The planner tells of a check when it starts failing, again at most
// every notify.every, once more inside notify.before_block of its grace's
// end, and forgets a check that passes; what it showed survives a restart.
func TestPlanner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.json")
	p, err := NewPlanner(path)
	if err != nil {
		t.Fatal(err)
	}
	failing := standing(disk(t0, 72*time.Hour))
	steps := []struct {
		name  string
		st    *posturev1.DeviceStanding
		at    time.Time
		title string // "" for nothing shown
	}{
		{"starts failing", failing, t0, "Device check failing"},
		{"the next report", failing, t0.Add(time.Minute), ""},
		{"before notify.every", failing, t0.Add(3 * time.Hour), ""},
		{"after notify.every", failing, t0.Add(4 * time.Hour), "Device check still failing"},
		{"inside before_block of the end", failing, t0.Add(48 * time.Hour), "Access will be blocked soon"},
		{"announced once", failing, t0.Add(49 * time.Hour), ""},
		{"every still holds", failing, t0.Add(52 * time.Hour), "Device check still failing"},
		{"fixed", standing(), t0.Add(53 * time.Hour), ""},
		{"failing again: news", standing(disk(t0.Add(54*time.Hour), 72*time.Hour)), t0.Add(54 * time.Hour), "Device check failing"},
	}
	for _, s := range steps {
		notes := p.Plan(s.st, s.at)
		switch {
		case s.title == "" && len(notes) != 0:
			t.Errorf("%s: shown %+v, want nothing", s.name, notes)
		case s.title != "" && (len(notes) != 1 || notes[0].Title != s.title):
			t.Errorf("%s: shown %+v, want %q", s.name, notes, s.title)
		}
	}
	// Restarted: the failure was told of, and is not repeated.
	p2, err := NewPlanner(path)
	if err != nil {
		t.Fatal(err)
	}
	if notes := p2.Plan(standing(disk(t0.Add(54*time.Hour), 72*time.Hour)), t0.Add(55*time.Hour)); len(notes) != 0 {
		t.Errorf("after a restart: %+v, want nothing", notes)
	}
	// A note that was not shown is planned again.
	p3, _ := NewPlanner("")
	n := p3.Plan(failing, t0)
	p3.Forget(n[0])
	if again := p3.Plan(failing, t0.Add(time.Minute)); len(again) != 1 {
		t.Errorf("after Forget: %+v, want the note again", again)
	}
	// What a note says.
	body := n[0].Body
	for _, want := range []string{"disk encryption: not encrypted: /.", "To fix: encrypt the system disk.", "Access is blocked from"} {
		if !strings.Contains(body, want) {
			t.Errorf("body %q lacks %q", body, want)
		}
	}
	// A collector asking for a notification every minute gets one every
	// ten at most.
	pushy := &posturev1.DeviceStanding{Failing: []*posturev1.CheckResult{disk(t0, 0)}, NotifyEvery: durationpb.New(time.Minute)}
	p4, _ := NewPlanner("")
	p4.Plan(pushy, t0)
	if notes := p4.Plan(pushy, t0.Add(5*time.Minute)); len(notes) != 0 {
		t.Errorf("5 minutes later: %+v, want nothing", notes)
	}
}

type recorder struct {
	notes []string
	err   error
}

func (r *recorder) Notify(title, body string) error {
	if r.err != nil {
		return r.err
	}
	r.notes = append(r.notes, title)
	return nil
}

// Without a graphical session nothing is shown and nothing is retried
// early; a failure to show is retried at the next acknowledgement.
func TestNotifier(t *testing.T) {
	p, _ := NewPlanner("")
	d := &recorder{err: ErrNoSession}
	now := t0
	n := &Notifier{Planner: p, Desktop: d, Now: func() time.Time { return now }}
	n.Update(standing(disk(t0, 0)))
	now = now.Add(time.Minute)
	d.err = nil
	n.Update(standing(disk(t0, 0)))
	if len(d.notes) != 0 {
		t.Errorf("shown %v a minute after there was no session; want nothing before notify.every", d.notes)
	}
	p2, _ := NewPlanner("")
	d2 := &recorder{err: errors.New("dbus: broken pipe")}
	n2 := &Notifier{Planner: p2, Desktop: d2, Now: func() time.Time { return now }}
	n2.Update(standing(disk(t0, 0)))
	d2.err = nil
	n2.Update(standing(disk(t0, 0)))
	if len(d2.notes) != 1 {
		t.Errorf("after a failure: shown %v, want the note again", d2.notes)
	}
	n2.Update(nil) // an acknowledgement from a collector that sends none
}
