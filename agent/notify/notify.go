// Package notify tells a device's user, with a desktop notification, what
// the collector's policy says of the device: when a check starts failing,
// again at most every notify.every while it fails, and once more when its
// grace is about to end (notify.before_block). The limits come from the
// collector with every report's acknowledgement (DeviceStanding); what was
// shown is kept in the agent's state directory, so that a restart does not
// repeat it.
//
// Where no graphical session exists nothing is shown: a server, or a
// laptop nobody is logged in to, gets no notification and loses nothing
// (the checks' state is in every decision and on the collector).
package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// ErrNoSession means no graphical session is there to show a notification
// in: nothing was shown, and nothing is wrong.
var ErrNoSession = errors.New("no graphical session to notify")

// Desktop shows notifications on this machine's desktop (desktop_*.go).
type Desktop interface {
	Notify(title, body string) error
}

// Note is one notification.
type Note struct {
	Title, Body string
	// Checks are the checks it is about.
	Checks []string
}

// shown is what was shown of one failing check.
type shown struct {
	Since  time.Time `json:"since"`  // the failure it was about
	Last   time.Time `json:"last"`   // when it was last shown
	Warned bool      `json:"warned"` // the grace's end was announced
}

// minEvery is the least time between two notifications of one check,
// whatever a collector says.
const minEvery = 10 * time.Minute

// Planner decides what to show, within the collector's limits.
type Planner struct {
	mu    sync.Mutex
	path  string // where the state is kept; empty keeps it in memory
	state map[string]shown
}

// NewPlanner reads what was shown from path (a file in the agent's state
// directory), if it exists.
func NewPlanner(path string) (*Planner, error) {
	p := &Planner{path: path, state: map[string]shown{}}
	if path == "" {
		return p, nil
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return p, nil
	case err != nil:
		return nil, fmt.Errorf("read notification state: %w", err)
	}
	if err := json.Unmarshal(data, &p.state); err != nil {
		// A damaged file costs at most a repeated notification.
		p.state = map[string]shown{}
	}
	return p, nil
}

// Plan says what to show now that the collector sent st, and records it
// as shown (Forget undoes that when showing failed). Several checks to
// tell of at once make one notification.
func (p *Planner) Plan(st *posturev1.DeviceStanding, now time.Time) []Note {
	p.mu.Lock()
	defer p.mu.Unlock()
	every := max(st.GetNotifyEvery().AsDuration(), minEvery)
	before := st.GetNotifyBeforeBlock().AsDuration()
	failing := map[string]bool{}
	var fresh, again, ending []*posturev1.CheckResult
	for _, c := range st.GetFailing() {
		name := c.GetName()
		failing[name] = true
		since := c.GetFailingSince().AsTime()
		s, ok := p.state[name]
		if !ok || !s.Since.Equal(since) {
			s = shown{Since: since}
		}
		blocks := c.GetBlocksAt()
		switch {
		case s.Last.IsZero():
			fresh = append(fresh, c)
		case blocks != nil && !s.Warned && now.Before(blocks.AsTime()) && !now.Before(blocks.AsTime().Add(-before)):
			ending = append(ending, c)
			s.Warned = true
		case now.Sub(s.Last) >= every:
			again = append(again, c)
		default:
			p.state[name] = s
			continue
		}
		if blocks != nil && !now.Before(blocks.AsTime().Add(-before)) {
			s.Warned = true // a first or repeated notice inside the window says it too
		}
		s.Last = now
		p.state[name] = s
	}
	for name := range p.state {
		if !failing[name] {
			delete(p.state, name) // passes again: a new failure is news
		}
	}
	var notes []Note
	if n, ok := note("Device check failing", fresh, now); ok {
		notes = append(notes, n)
	}
	if n, ok := note("Access will be blocked soon", ending, now); ok {
		notes = append(notes, n)
	}
	if n, ok := note("Device check still failing", again, now); ok {
		notes = append(notes, n)
	}
	p.save()
	return notes
}

// Forget records that a note was not shown, so that it is planned again
// at the next acknowledgement.
func (p *Planner) Forget(n Note) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range n.Checks {
		if s, ok := p.state[c]; ok {
			s.Last, s.Warned = time.Time{}, false
			p.state[c] = s
		}
	}
	p.save()
}

// save writes the state; it requires mu. A failure only risks a repeat.
func (p *Planner) save() {
	if p.path == "" {
		return
	}
	data, err := json.Marshal(p.state)
	if err != nil {
		return
	}
	tmp := p.path + ".tmp"
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, p.path)
	}
}

// note words a notification about checks; ok is false for none.
func note(title string, checks []*posturev1.CheckResult, now time.Time) (Note, bool) {
	if len(checks) == 0 {
		return Note{}, false
	}
	var b strings.Builder
	var names []string
	for i, c := range checks {
		if i > 0 {
			b.WriteString("\n")
		}
		names = append(names, c.GetName())
		fmt.Fprintf(&b, "%s: %s.", strings.ReplaceAll(c.GetName(), "_", " "), c.GetReason())
		if fix := c.GetRemediation(); fix != "" {
			fmt.Fprintf(&b, " To fix: %s.", fix)
		}
		if blocks := c.GetBlocksAt(); blocks != nil {
			if at := blocks.AsTime(); at.After(now) {
				fmt.Fprintf(&b, " Access is blocked from %s unless fixed.", at.Local().Format("Mon 2 Jan 15:04"))
			} else {
				b.WriteString(" Access is blocked until it is fixed.")
			}
		} else {
			b.WriteString(" Access that requires it is blocked until it is fixed.")
		}
	}
	slices.Sort(names)
	return Note{Title: title, Body: b.String(), Checks: names}, true
}

// Notifier shows what the planner decides on a desktop.
type Notifier struct {
	Planner *Planner
	Desktop Desktop
	// Logf, when set, is told what was shown and what could not be.
	Logf func(format string, args ...any)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Update takes the standing of an acknowledgement and shows what is due.
// It does not block the agent for long: the desktop's calls are quick, and
// a failure is only logged.
func (n *Notifier) Update(st *posturev1.DeviceStanding) {
	if st == nil {
		return
	}
	now := time.Now
	if n.Now != nil {
		now = n.Now
	}
	for _, note := range n.Planner.Plan(st, now()) {
		err := n.Desktop.Notify(note.Title, note.Body)
		switch {
		case errors.Is(err, ErrNoSession):
			// Nobody to tell; the next failing report tries again after
			// notify.every.
		case err != nil:
			n.Planner.Forget(note)
			if n.Logf != nil {
				n.Logf("desktop notification not shown: %v", err)
			}
		case n.Logf != nil:
			n.Logf("desktop notification shown: %s (%s)", note.Title, strings.Join(note.Checks, ", "))
		}
	}
}
