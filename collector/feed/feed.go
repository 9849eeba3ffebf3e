// Package feed keeps a collector's memory current with the database: every
// change, made by this collector or by another one sharing the database,
// reaches the fleet and the gateways watching through one function, Apply.
//
// A collector applies its own changes as they commit (so that what it
// answers next already reflects them), and a poller reads the events of
// every other collector from the database: at once when the database says
// something committed (store.Store.Wake; PostgreSQL's LISTEN/NOTIFY), and
// at least every PollInterval. Event IDs can commit out of order (a
// transaction that took a lower ID may commit after one with a higher
// ID), so the poller keeps the IDs it skipped as gaps and reads them again
// until they appear or GapTimeout passes.
package feed

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/store"
)

// Defaults of Config.
const (
	// DefaultPollInterval bounds how long a change another collector made
	// takes to reach this one when no notification arrives.
	DefaultPollInterval = time.Second
	// DefaultGapTimeout is how long an event ID that was skipped is read
	// again: longer than any transaction of a collector lasts.
	DefaultGapTimeout = 15 * time.Minute
	// page is how many event IDs one read asks for.
	page = 5000
	// maxGaps bounds the IDs tracked as gaps; past it the oldest go.
	maxGaps = 100000
)

// Store is what the feed reads of the database.
type Store interface {
	EventIDs(ctx context.Context, after uint64, limit int) ([]uint64, error)
	Events(ctx context.Context, ids []uint64) ([]store.Event, error)
	Wake() <-chan struct{}
}

// Fleet is where device events go.
type Fleet interface {
	Apply(ev store.Event, pre *fleet.Assessed) fleet.Applied
	CloseStreams(id string, cause error)
	RequestMeasure(id string) int
}

// Hub is where decision changes go.
type Hub interface {
	Publish(id, cause string, force bool, rev uint64)
	Applied(rev uint64)
}

// Gateways is where gateway revocations go.
type Gateways interface {
	Revoke(serials []string, reason string)
}

// Config configures a Feed.
type Config struct {
	Store    Store
	Fleet    Fleet
	Hub      Hub
	Gateways Gateways
	Logger   *slog.Logger
	// Applied, when set, is told of every event once it changed memory
	// (not of one applied again): what else follows the fleet (the
	// standing keeper, the outbox's deliveries) learns of changes here.
	Applied func(ev store.Event)
	// PollInterval and GapTimeout: zero means the defaults.
	PollInterval time.Duration
	GapTimeout   time.Duration
}

// Feed applies events.
type Feed struct {
	cfg Config

	reading sync.Mutex // one CatchUp at a time

	mu      sync.Mutex
	cursor  uint64               // every ID up to it was read or applied, except gaps
	local   map[uint64]struct{}  // applied as they committed, above cursor
	gaps    map[uint64]time.Time // IDs up to cursor not seen yet, since when
	applied uint64               // the newest ID applied
	read    time.Time            // when a catch-up last succeeded
}

// New makes a feed that continues after the event start: the newest
// event the loaded fleet reflects. skipped are IDs up to start that had
// not committed when start was read; they are read again as gaps.
func New(cfg Config, start uint64, skipped []uint64) *Feed {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.GapTimeout <= 0 {
		cfg.GapTimeout = DefaultGapTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Feed{cfg: cfg, cursor: start, applied: start, local: map[uint64]struct{}{}, gaps: map[uint64]time.Time{}, read: time.Now()}
	now := time.Now()
	for _, id := range skipped {
		f.gaps[id] = now
	}
	return f
}

// Apply brings one committed event into this collector's memory and tells
// watchers. The collector that made a change calls it as the change
// commits, with what it knows already of a report (pre); the poller calls
// it for everything else. Applying an event twice changes nothing.
func (f *Feed) Apply(ev store.Event, pre *fleet.Assessed) {
	if ev.ID == 0 {
		return
	}
	f.mu.Lock()
	if ev.ID > f.cursor {
		f.local[ev.ID] = struct{}{}
	} else {
		delete(f.gaps, ev.ID)
	}
	f.applied = max(f.applied, ev.ID)
	f.mu.Unlock()
	f.apply(ev, pre)
}

func (f *Feed) apply(ev store.Event, pre *fleet.Assessed) {
	if ev.Kind == store.EventMeasureRequested {
		// Whichever collector holds the device's stream asks its agent.
		f.cfg.Fleet.RequestMeasure(ev.DeviceID)
		f.cfg.Hub.Applied(ev.ID)
		return
	}
	if ev.Kind == store.EventGatewayRevoked {
		f.cfg.Gateways.Revoke(ev.Serials, ev.Reason)
		f.cfg.Hub.Applied(ev.ID)
		return
	}
	a := f.cfg.Fleet.Apply(ev, pre)
	if !a.Fresh {
		f.cfg.Hub.Applied(ev.ID)
		return
	}
	// Memory first (done), then watchers, then what the device has open:
	// from here no decision allows a revoked device.
	f.cfg.Hub.Publish(ev.DeviceID, a.Cause, a.Force, ev.ID)
	if a.Revoked {
		f.cfg.Fleet.CloseStreams(ev.DeviceID, fmt.Errorf("%w: %s", fleet.ErrRevoked, a.Reason))
	}
	if f.cfg.Applied != nil {
		f.cfg.Applied(ev)
	}
}

// Applied is the newest event ID applied.
func (f *Feed) Applied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// Gaps is how many skipped event IDs are being read again.
func (f *Feed) Gaps() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.gaps)
}

// Run reads events until ctx ends: whenever the store wakes it, and every
// PollInterval.
func (f *Feed) Run(ctx context.Context) {
	t := time.NewTicker(f.cfg.PollInterval)
	defer t.Stop()
	wake := f.cfg.Store.Wake()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-t.C:
		}
		err := f.CatchUp(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			f.cfg.Logger.Error("read changes from the database; retrying", "err", err)
		case err == nil && failing:
			failing = false
			f.cfg.Logger.Info("reading changes from the database again")
		}
	}
}

// CatchUp reads every event committed and not applied yet, and applies
// them in the order of their IDs.
func (f *Feed) CatchUp(ctx context.Context) error {
	f.reading.Lock()
	defer f.reading.Unlock()
	started := time.Now()
	for {
		more, err := f.readPage(ctx)
		if err != nil {
			return err
		}
		if !more {
			f.mu.Lock()
			f.read = started
			f.mu.Unlock()
			return nil
		}
	}
}

// LastRead is when a catch-up last read everything committed before it.
func (f *Feed) LastRead() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read
}

// readPage reads one page of event IDs past the cursor, with the gaps, and
// applies what it finds; more is set when the page was full.
func (f *Feed) readPage(ctx context.Context) (more bool, err error) {
	f.mu.Lock()
	// IDs this collector applied as they committed need no reading.
	for {
		if _, ok := f.local[f.cursor+1]; !ok {
			break
		}
		delete(f.local, f.cursor+1)
		f.cursor++
	}
	cursor := f.cursor
	gaps := make([]uint64, 0, len(f.gaps))
	for id := range f.gaps {
		gaps = append(gaps, id)
	}
	f.mu.Unlock()

	ids, err := f.cfg.Store.EventIDs(ctx, cursor, page)
	if err != nil {
		return false, fmt.Errorf("read event IDs after %d: %w", cursor, err)
	}
	now := time.Now()
	want := gaps
	f.mu.Lock()
	next := cursor
	for _, id := range ids {
		// IDs between the cursor and this one have not committed (yet).
		// A jump wider than the gaps kept is not transactions under way
		// (the database's sequence was moved on): nothing to wait for.
		for skipped := next + 1; skipped < id && id-next <= maxGaps; skipped++ {
			if _, ok := f.local[skipped]; !ok {
				f.gaps[skipped] = now
			}
		}
		if _, ok := f.local[id]; ok {
			delete(f.local, id)
		} else {
			want = append(want, id)
		}
		next = id
	}
	f.cursor = max(f.cursor, next)
	f.mu.Unlock()

	if len(want) > 0 {
		slices.Sort(want)
		evs, err := f.cfg.Store.Events(ctx, want)
		if err != nil {
			return false, fmt.Errorf("read %d events: %w", len(want), err)
		}
		for _, ev := range evs {
			f.mu.Lock()
			delete(f.gaps, ev.ID)
			f.applied = max(f.applied, ev.ID)
			f.mu.Unlock()
			f.apply(ev, nil)
		}
	}
	f.expireGaps(now)
	if next > cursor {
		f.cfg.Hub.Applied(next)
	}
	return len(ids) == page, nil
}

// expireGaps stops reading IDs that stayed missing for GapTimeout (a
// transaction that took an ID and rolled back never commits it), and the
// oldest beyond maxGaps.
func (f *Feed) expireGaps(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, since := range f.gaps {
		if now.Sub(since) > f.cfg.GapTimeout {
			delete(f.gaps, id)
		}
	}
	if len(f.gaps) > maxGaps {
		ids := make([]uint64, 0, len(f.gaps))
		for id := range f.gaps {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids[:len(ids)-maxGaps] {
			delete(f.gaps, id)
		}
	}
}
