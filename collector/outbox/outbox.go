// Package outbox delivers the database's outbox (store.OutboxMessage) to
// receivers outside Posture: webhooks, SIEM exports and Shared Signals
// streams.
//
// Delivery is at least once. Each receiver has a cursor in the database,
// moved only after its messages went out, so a collector that stops (or is
// killed) between a delivery and recording it sends those messages again,
// with the same IDs, when delivery resumes. One collector at a time
// delivers to each receiver: the holder of the receiver's lease, renewed
// while it delivers and taken over by another collector once it runs out.
// Receivers have a goroutine each, so one that is down holds back only
// itself: its attempts are retried with growing pauses, and after
// DownAfter of failing it is marked down (Status, metrics, stats).
package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// Defaults of Config.
const (
	DefaultLease      = 30 * time.Second
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
	DefaultDownAfter  = 10 * time.Minute
	DefaultRetention  = 7 * 24 * time.Hour
	// batch is how many messages a receiver's worker reads at once.
	batch = 100
	// poll is how often a worker looks for messages nobody woke it for:
	// those another collector wrote (decisions, which carry no event).
	poll = time.Second
)

// ErrRejected marks a delivery error after which retrying cannot help:
// the receiver refused the message itself (an HTTP 400 to a SET, a
// webhook's 4xx other than 408 and 429). The message is passed over and
// counted as rejected; the receiver's failure is recorded.
var ErrRejected = errors.New("the receiver rejected the message")

// Sender delivers messages to one receiver.
type Sender interface {
	// Send delivers msgs in order and returns how many went out before it
	// failed; an error wrapping ErrRejected means msgs[n] was refused for
	// good.
	Send(ctx context.Context, msgs []store.OutboxMessage) (n int, err error)
}

// Receiver is one receiver this collector can deliver to.
type Receiver struct {
	ID   string // as stored: "webhook:NAME", "siem:NAME", "ssf:STREAM"
	Kind string
	// Wants says which messages it takes; the others are passed over. Nil
	// takes every message.
	Wants  func(m store.OutboxMessage) bool
	Sender Sender
}

// Store is what delivery reads and records.
type Store interface {
	OutboxAfter(ctx context.Context, after uint64, receiver string, limit int) ([]store.OutboxMessage, error)
	ClaimReceivers(ctx context.Context, holder string, ids []string, until, now time.Time) ([]store.Receiver, error)
	ReleaseReceivers(ctx context.Context, holder string) error
	ReceiverDelivered(ctx context.Context, id, holder string, through uint64, delivered int, now time.Time) error
	ReceiverFailed(ctx context.Context, id, holder, why string, now time.Time) error
	Receivers(ctx context.Context) ([]store.Receiver, error)
	LastOutboxSeq(ctx context.Context) (uint64, error)
	PruneOutbox(ctx context.Context, cutoff time.Time) (int, error)
}

// Config configures a Dispatcher.
type Config struct {
	Store  Store
	Holder string // this collector's replica ID
	// Receivers lists the receivers this collector can deliver to now:
	// those configured on it, and those the database defines (Shared
	// Signals streams). It is called at every lease renewal and after
	// Reconfigure.
	Receivers func(ctx context.Context) ([]Receiver, error)
	Logger    *slog.Logger
	// Lease, MinBackoff, MaxBackoff, DownAfter, Retention: zero means the
	// defaults. A lease is renewed at a third of its length.
	Lease, MinBackoff, MaxBackoff, DownAfter, Retention time.Duration
	// Delivered, when set, is told of every message delivered (receiver
	// ID, how long after it was written) and every failure, for metrics.
	Delivered func(receiver string, latency time.Duration)
	Failed    func(receiver string, rejected bool)
}

// Dispatcher runs delivery on one collector.
type Dispatcher struct {
	cfg Config

	mu      sync.Mutex
	wake    chan struct{} // closed and replaced by Wake
	workers map[string]*worker
	again   chan struct{} // Reconfigure
}

// New makes a dispatcher.
func New(cfg Config) *Dispatcher {
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = DefaultDownAfter
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Dispatcher{cfg: cfg, wake: make(chan struct{}), workers: map[string]*worker{}, again: make(chan struct{}, 1)}
}

// Wake tells every worker that messages may have been written.
func (d *Dispatcher) Wake() {
	d.mu.Lock()
	close(d.wake)
	d.wake = make(chan struct{})
	d.mu.Unlock()
}

func (d *Dispatcher) woken() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wake
}

// Reconfigure asks for the receivers to be listed and claimed again now
// (a Shared Signals stream was created or deleted).
func (d *Dispatcher) Reconfigure() {
	select {
	case d.again <- struct{}{}:
	default:
	}
}

// Held lists the receivers this collector delivers to now.
func (d *Dispatcher) Held() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for id := range d.workers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Run claims receivers and delivers to those it holds until ctx ends,
// then releases them (another collector takes them at once).
func (d *Dispatcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		d.mu.Lock()
		for id, w := range d.workers {
			w.cancel()
			delete(d.workers, id)
		}
		d.mu.Unlock()
		wg.Wait()
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := d.cfg.Store.ReleaseReceivers(rctx, d.cfg.Holder); err != nil {
			d.cfg.Logger.Warn("release receivers", "err", err)
		}
	}()
	renew := time.NewTicker(d.cfg.Lease / 3)
	defer renew.Stop()
	prune := time.NewTicker(10 * time.Minute)
	defer prune.Stop()
	for {
		d.claim(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
		case <-d.again:
		case <-prune.C:
			if n, err := d.cfg.Store.PruneOutbox(ctx, time.Now().Add(-d.cfg.Retention)); err != nil && ctx.Err() == nil {
				d.cfg.Logger.Warn("prune the outbox; retrying later", "err", err)
			} else if n > 0 {
				d.cfg.Logger.Info("outbox pruned", "messages", n)
			}
		}
	}
}

// claim lists this collector's receivers, claims their leases, and starts
// or stops workers to match what it holds.
func (d *Dispatcher) claim(ctx context.Context, wg *sync.WaitGroup) {
	rs, err := d.cfg.Receivers(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.cfg.Logger.Error("list receivers; retrying", "err", err)
		}
		return
	}
	byID := map[string]Receiver{}
	ids := make([]string, 0, len(rs))
	for _, r := range rs {
		byID[r.ID] = r
		ids = append(ids, r.ID)
	}
	now := time.Now()
	held := map[string]store.Receiver{}
	if len(ids) > 0 {
		got, err := d.cfg.Store.ClaimReceivers(ctx, d.cfg.Holder, ids, now.Add(d.cfg.Lease), now)
		if err != nil {
			if ctx.Err() == nil {
				d.cfg.Logger.Error("claim receivers; retrying", "err", err)
			}
			return
		}
		for _, r := range got {
			held[r.ID] = r
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, w := range d.workers {
		if _, ok := held[id]; !ok {
			w.cancel()
			delete(d.workers, id)
			d.cfg.Logger.Info("no longer delivering to receiver (another collector holds it, or it was removed)", "receiver", id)
		}
	}
	for id, stored := range held {
		if w, ok := d.workers[id]; ok {
			w.setSender(byID[id])
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		w := &worker{d: d, id: id, r: byID[id], cursor: stored.Cursor, failingSince: stored.FailingSince, attempts: stored.Attempts, cancel: cancel}
		d.workers[id] = w
		wg.Add(1)
		go func() { defer wg.Done(); w.run(wctx) }()
		d.cfg.Logger.Info("delivering to receiver", "receiver", id, "from", stored.Cursor)
	}
}

// worker delivers to one receiver while this collector holds its lease.
type worker struct {
	d      *Dispatcher
	id     string
	cancel context.CancelFunc

	mu           sync.Mutex
	r            Receiver
	cursor       uint64
	failingSince time.Time
	attempts     uint32
}

func (w *worker) setSender(r Receiver) {
	w.mu.Lock()
	w.r = r
	w.mu.Unlock()
}

func (w *worker) receiver() Receiver {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.r
}

// run delivers until ctx ends or the lease is lost.
func (w *worker) run(ctx context.Context) {
	d := w.d
	for ctx.Err() == nil {
		wake := d.woken() // before reading, so that a write after the read wakes the wait
		more, err := w.step(ctx)
		switch {
		case errors.Is(err, store.ErrLeaseLost):
			d.cfg.Logger.Info("receiver taken over by another collector", "receiver", w.id)
			d.mu.Lock()
			if d.workers[w.id] == w {
				delete(d.workers, w.id)
			}
			d.mu.Unlock()
			return
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			pause := w.backoff()
			d.cfg.Logger.Warn("delivery failed; retrying", "receiver", w.id, "attempts", w.attempts, "in", pause.Round(time.Millisecond).String(), "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
			continue
		case more:
			continue
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-time.After(poll):
		}
	}
}

// backoff is the pause before the next attempt: doubling from MinBackoff
// to MaxBackoff with the failed attempts in a row, with some jitter so
// that collectors' retries do not march in step.
func (w *worker) backoff() time.Duration {
	cfg := w.d.cfg
	p := cfg.MinBackoff
	for i := uint32(1); i < w.attempts && p < cfg.MaxBackoff; i++ {
		p *= 2
	}
	p = min(p, cfg.MaxBackoff)
	return p/2 + rand.N(p/2+1)
}

// step reads one batch past the cursor and delivers what the receiver
// wants of it; more says whether a full batch was read.
func (w *worker) step(ctx context.Context) (more bool, err error) {
	d := w.d
	r := w.receiver()
	msgs, err := d.cfg.Store.OutboxAfter(ctx, w.cursor, r.ID, batch)
	if err != nil {
		return false, fmt.Errorf("read the outbox: %w", err)
	}
	if len(msgs) == 0 {
		return false, nil
	}
	var wanted []store.OutboxMessage
	for _, m := range msgs {
		if r.Wants == nil || r.Wants(m) {
			wanted = append(wanted, m)
		}
	}
	through := msgs[len(msgs)-1].Seq
	var sent int
	var sendErr error
	if len(wanted) > 0 {
		sent, sendErr = r.Sender.Send(ctx, wanted)
		sent = min(max(sent, 0), len(wanted))
	}
	now := time.Now()
	for _, m := range wanted[:sent] {
		if d.cfg.Delivered != nil {
			d.cfg.Delivered(r.ID, now.Sub(m.At))
		}
	}
	if sendErr != nil {
		rejected := errors.Is(sendErr, ErrRejected)
		// What went out, and what was passed over before the message that
		// failed, is done; a rejected message is done too.
		next := sent
		if rejected {
			next++
			d.cfg.Logger.Error("receiver rejected a message; passed over", "receiver", r.ID, "message", wanted[sent].ID, "kind", wanted[sent].Kind, "err", sendErr)
		}
		if d.cfg.Failed != nil {
			d.cfg.Failed(r.ID, rejected)
		}
		limit := wanted[min(next, len(wanted)-1)].Seq - 1
		if next == len(wanted) {
			limit = through
		}
		if next > 0 || limit > w.cursor {
			if err := d.cfg.Store.ReceiverDelivered(ctx, r.ID, d.cfg.Holder, limit, sent, now); err != nil {
				return false, err
			}
			w.cursor = max(w.cursor, limit)
		}
		w.attempts++
		if w.failingSince.IsZero() {
			w.failingSince = now
		}
		if err := d.cfg.Store.ReceiverFailed(ctx, r.ID, d.cfg.Holder, truncate(sendErr.Error(), 1000), now); err != nil {
			return false, err
		}
		if rejected && next < len(wanted) {
			return true, nil // go on with the next message at once
		}
		if rejected {
			return len(msgs) == batch, nil
		}
		return false, sendErr
	}
	if err := d.cfg.Store.ReceiverDelivered(ctx, r.ID, d.cfg.Holder, through, sent, now); err != nil {
		return false, err
	}
	w.cursor, w.attempts, w.failingSince = through, 0, time.Time{}
	return len(msgs) == batch, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Status is how delivery to one receiver stands.
type Status struct {
	store.Receiver
	// State is ok, failing, down or idle (see ReceiverState).
	State string
	// Pending counts the messages written after its cursor (those for
	// other receivers among them: a bound, read without a scan).
	Pending uint64
}

// ReceiverState says how delivery to a receiver stands at now: idle when
// no collector holds its lease, down when its attempts have failed for
// longer than downAfter, failing when they fail, ok otherwise.
func ReceiverState(r store.Receiver, now time.Time, downAfter time.Duration) string {
	switch {
	case !r.FailingSince.IsZero() && now.Sub(r.FailingSince) >= downAfter:
		return "down"
	case r.Holder == "" || !r.LeaseUntil.After(now):
		return "idle"
	case !r.FailingSince.IsZero():
		return "failing"
	}
	return "ok"
}

// Status lists every receiver in the database with how delivery to it
// stands.
func (d *Dispatcher) Status(ctx context.Context) ([]Status, error) {
	rs, err := d.cfg.Store.Receivers(ctx)
	if err != nil {
		return nil, err
	}
	last, err := d.cfg.Store.LastOutboxSeq(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([]Status, 0, len(rs))
	for _, r := range rs {
		s := Status{Receiver: r, State: ReceiverState(r, now, d.cfg.DownAfter)}
		if last > r.Cursor {
			s.Pending = last - r.Cursor
		}
		out = append(out, s)
	}
	return out, nil
}

// DownAfter is how long a receiver fails before it is marked down.
func (d *Dispatcher) DownAfter() time.Duration { return d.cfg.DownAfter }
