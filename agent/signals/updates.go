package signals

import (
	"context"
	"sync"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/proto"
)

// failedUpdatesRetry caps how long a failed or unavailable slow measurement
// is reused: a transient failure (no network, a held package lock) should
// not hide the real state for a whole UpdatesInterval.
const failedUpdatesRetry = 10 * time.Minute

// slowCache keeps the last result of a slow measurement (package managers,
// the Windows hotfix list), which takes seconds to minutes while the state
// changes slowly.
type slowCache[T section] struct {
	mu         sync.Mutex
	last       T
	measuredAt time.Time
	ok         bool // the last measurement succeeded
	have       bool
	refreshing bool
	first      chan struct{} // closed when the first measurement is in
}

// get returns the last measurement. The first call starts the measurement
// and waits for it at most FirstSlowWait; if it is not done by then, get
// returns pending() and the measurement finishes in the background, so a
// slow package manager cannot stall a report. Later calls return a copy of
// the cached result and, when it is older than UpdatesInterval (or
// failedUpdatesRetry after a failure, a status other than OK or not
// applicable), start one background refresh.
func (s *slowCache[T]) get(ctx context.Context, c *Collector, measure func(context.Context) T, pending func() T) T {
	s.mu.Lock()
	if !s.have {
		if s.first == nil {
			// Concurrent first calls share one measurement.
			s.first, s.refreshing = make(chan struct{}), true
			go s.refresh(context.WithoutCancel(ctx), c, measure)
		}
		first := s.first
		s.mu.Unlock()
		select {
		case <-first:
		case <-time.After(c.firstSlowWait):
		case <-ctx.Done():
		}
		s.mu.Lock()
		if !s.have {
			s.mu.Unlock()
			return pending()
		}
	} else if !s.refreshing && s.stale(c) {
		s.refreshing = true
		// The refresh outlives this call, so it must not die with ctx.
		go s.refresh(context.WithoutCancel(ctx), c, measure)
	}
	defer s.mu.Unlock()
	return proto.Clone(s.last).(T)
}

func (s *slowCache[T]) refresh(ctx context.Context, c *Collector, measure func(context.Context) T) {
	at := c.now()
	fresh := measure(ctx)
	st := fresh.GetMeta().GetStatus()
	ok := st == posturev1.Status_STATUS_OK || st == posturev1.Status_STATUS_NOT_APPLICABLE
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.ok, s.measuredAt = fresh, ok, at
	s.refreshing = false
	if !s.have {
		s.have = true
		close(s.first)
	}
}

// stale reports whether the cached result should be measured again.
func (s *slowCache[T]) stale(c *Collector) bool {
	maxAge := c.updatesInterval
	if !s.ok {
		maxAge = min(maxAge, failedUpdatesRetry)
	}
	return c.now().Sub(s.measuredAt) >= maxAge
}

// cachedUpdates returns the last pending-updates measurement, with the
// observed_at of its real measurement.
func (c *Collector) cachedUpdates(ctx context.Context) *posturev1.Updates {
	return c.updates.get(ctx, c, c.measureUpdates, func() *posturev1.Updates {
		return &posturev1.Updates{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"the first package-manager check is still running; the next report carries its result")}
	})
}

// cachedLastInstalled returns the last measurement of the newest installed
// update, which is as slow to list as pending updates are to find.
func (c *Collector) cachedLastInstalled(ctx context.Context) *posturev1.InstalledUpdate {
	return c.lastInstalled.get(ctx, c, c.measureLastInstalled, func() *posturev1.InstalledUpdate {
		return &posturev1.InstalledUpdate{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"the first listing of installed updates is still running; the next report carries its result")}
	})
}
