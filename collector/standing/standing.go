// Package standing keeps each device's recorded standing (store.Standing:
// since when each of its checks fails, which levels it meets) in step with
// what the policy says of it.
//
// A standing is derived: from the policy, the device's reports and the
// clock. It is recorded so that every collector sharing the database
// counts a grace from the same moment, so that a restart keeps it, and so
// that every change of it (a level gained or lost, a check that starts
// failing, a grace about to end) leaves Posture exactly once, through the
// outbox message its record writes. One collector at a time records
// standings: the holder of the "standing" lease. The others apply its
// events like any other; their decisions never wait for it (a failure not
// recorded yet counts from the report that showed it, which is what the
// holder records).
package standing

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
)

// LeaseName is the lease whose holder records standings.
const LeaseName = "standing"

// Defaults of Config.
const (
	DefaultLease    = 15 * time.Second
	DefaultInterval = 15 * time.Second
	// workers record standings at once, so that the store can commit
	// several in one transaction (a policy reload changes many).
	workers = 8
)

// Store is what the keeper writes.
type Store interface {
	RecordStanding(ctx context.Context, id string, prev, next store.Standing, reasons map[string]string, now time.Time) (store.Event, error)
	ClaimLease(ctx context.Context, name, holder string, until, now time.Time) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Fleet is what the keeper judges.
type Fleet interface {
	Standing(id string) (policy.Subject, *policy.Policy, store.Standing, bool)
	IDs() []string
}

// Applier applies what the store committed (feed.Feed).
type Applier interface {
	Apply(ev store.Event, pre *fleet.Assessed)
}

// Config configures a Keeper.
type Config struct {
	Store  Store
	Fleet  Fleet
	Feed   Applier
	Holder string // this collector's replica ID
	Logger *slog.Logger
	// Lease is how long a claim of the lease lasts (renewed at a third of
	// it); Interval how often every device is judged again (grace ends
	// and evidence ages without an event). Zero means the defaults.
	Lease, Interval time.Duration
	// Now is the clock of judgements; nil means time.Now.
	Now func() time.Time
}

// Keeper records standings while it holds the lease.
type Keeper struct {
	cfg Config

	mu      sync.Mutex
	holding bool
	queued  map[string]bool // devices to judge
	order   []string        // queued, in order
	busy    map[string]bool // being judged; queued again when observed meanwhile
	wake    chan struct{}
	// Recorded counts standings recorded; Conflicts those another
	// recorded first. For tests and metrics.
	recorded, conflicts int64
}

// New makes a keeper.
func New(cfg Config) *Keeper {
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Keeper{cfg: cfg, queued: map[string]bool{}, busy: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// Desired is the standing the policy gives a device at now, from its
// subject and its recorded standing: a failing check keeps the time it
// was recorded failing since, a new failure fails since the report that
// showed it, a grace's end is announced once, the policy's
// notify.before_block ahead of it, and the levels are those the device
// meets among the enforced ones (block and warn). reasons say why each
// failing check fails.
func Desired(subj *policy.Subject, pol *policy.Policy, recorded store.Standing, now time.Time) (next store.Standing, reasons map[string]string) {
	reasons = map[string]string{}
	for _, f := range subj.Failures() {
		fc := store.FailingCheck{Check: f.Check, Since: f.Since, BlocksAt: f.BlocksAt}
		if old, ok := recorded.Failure(f.Check); ok && old.Since.Equal(f.Since) {
			fc.Warned = old.Warned
		}
		if !fc.Warned && !f.BlocksAt.IsZero() && now.Before(f.BlocksAt) && !now.Before(f.BlocksAt.Add(-pol.NotifyBeforeBlock())) {
			fc.Warned = true
		}
		reasons[f.Check] = f.Reason
		next.Failing = append(next.Failing, fc)
	}
	_, met, _, _ := pol.Sets(subj, now)
	for i, l := range pol.Levels {
		if met&(1<<i) != 0 && l.Enforcement() != policy.EnforceOff {
			next.Levels = append(next.Levels, l.Name)
		}
	}
	return next.Normalize(), reasons
}

// Observe asks for a device to be judged again soon: something changed
// it (an event was applied).
func (k *Keeper) Observe(id string) {
	k.mu.Lock()
	if !k.holding {
		k.mu.Unlock()
		return
	}
	k.enqueue(id)
	k.mu.Unlock()
	k.signal()
}

// ObserveAll asks for every device to be judged again (a policy reload).
func (k *Keeper) ObserveAll() {
	ids := k.cfg.Fleet.IDs()
	k.mu.Lock()
	if k.holding {
		for _, id := range ids {
			k.enqueue(id)
		}
	}
	k.mu.Unlock()
	k.signal()
}

// enqueue requires mu. A device being judged is marked queued only:
// done puts it back in order once its judgement ends.
func (k *Keeper) enqueue(id string) {
	if !k.queued[id] && !k.busy[id] {
		k.order = append(k.order, id)
	}
	k.queued[id] = true
}

func (k *Keeper) signal() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// take hands a worker the next device to judge that no other worker is
// judging.
func (k *Keeper) take() (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for len(k.order) > 0 {
		id := k.order[0]
		k.order = k.order[1:]
		if !k.queued[id] {
			continue
		}
		delete(k.queued, id)
		k.busy[id] = true
		return id, true
	}
	return "", false
}

// done ends a worker's judgement of id, queueing it again when it was
// observed meanwhile.
func (k *Keeper) done(id string) {
	k.mu.Lock()
	delete(k.busy, id)
	again := k.queued[id]
	if again {
		k.order = append(k.order, id)
	}
	k.mu.Unlock()
	if again {
		k.signal()
	}
}

// Holding says whether this collector holds the lease.
func (k *Keeper) Holding() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.holding
}

// Counts are the standings recorded, and those another recorded first.
func (k *Keeper) Counts() (recorded, conflicts int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.recorded, k.conflicts
}

// Run claims and renews the lease, and while it holds it judges observed
// devices at once and every device every Interval, until ctx ends; then
// it releases the lease.
func (k *Keeper) Run(ctx context.Context) {
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				for {
					id, ok := k.take()
					if !ok {
						break
					}
					k.judge(ctx, id)
					k.done(id)
				}
			}
		}()
	}
	defer func() {
		close(work)
		wg.Wait()
		k.mu.Lock()
		holding := k.holding
		k.holding = false
		k.mu.Unlock()
		if holding {
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = k.cfg.Store.ReleaseLease(rctx, LeaseName, k.cfg.Holder)
			cancel()
		}
	}()
	renew := time.NewTicker(k.cfg.Lease / 3)
	defer renew.Stop()
	pass := time.NewTicker(k.cfg.Interval)
	defer pass.Stop()
	k.claim(ctx)
	kick := func() {
		select {
		case work <- struct{}{}:
		default:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			k.claim(ctx)
		case <-pass.C:
			k.ObserveAll()
		case <-k.wake:
		}
		// Wake every idle worker: each takes devices until none is left.
		for range workers {
			kick()
		}
	}
}

// claim takes or renews the lease. A collector that gains it judges every
// device: the previous holder may have stopped before recording what
// changed.
func (k *Keeper) claim(ctx context.Context) {
	now := k.cfg.Now()
	held, err := k.cfg.Store.ClaimLease(ctx, LeaseName, k.cfg.Holder, time.Now().Add(k.cfg.Lease), time.Now())
	if err != nil {
		if ctx.Err() == nil {
			k.cfg.Logger.Error("claim the standing lease; retrying", "err", err)
		}
		held = false
	}
	k.mu.Lock()
	gained := held && !k.holding
	lost := !held && k.holding
	k.holding = held
	if lost {
		clear(k.queued)
		k.order = nil
	}
	k.mu.Unlock()
	switch {
	case gained:
		k.cfg.Logger.Info("recording device standings (this collector holds the standing lease)", "at", now.UTC().Format(time.RFC3339))
		k.ObserveAll()
	case lost:
		k.cfg.Logger.Info("another collector records device standings now")
	}
}

// judge records a device's standing when the policy says otherwise than
// what is recorded.
func (k *Keeper) judge(ctx context.Context, id string) {
	subj, pol, recorded, ok := k.cfg.Fleet.Standing(id)
	if !ok {
		return
	}
	now := k.cfg.Now()
	next, reasons := Desired(&subj, pol, recorded, now)
	if next.Equal(recorded) {
		return
	}
	ev, err := k.cfg.Store.RecordStanding(ctx, id, recorded, next, reasons, now)
	switch {
	case errors.Is(err, store.ErrStandingChanged):
		// Recorded meanwhile by another pass or collector; its event
		// brings the device here again.
		k.mu.Lock()
		k.conflicts++
		k.mu.Unlock()
		return
	case errors.Is(err, store.ErrNotFound):
		return
	case err != nil:
		if ctx.Err() == nil {
			k.cfg.Logger.Error("record device standing; judged again at the next pass", "device", id, "err", err)
		}
		return
	}
	k.mu.Lock()
	k.recorded++
	k.mu.Unlock()
	k.cfg.Feed.Apply(ev, nil)
}
