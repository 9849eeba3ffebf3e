package signals

import (
	"context"
	"sync"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/proto"
)

// failedUpdatesRetry caps how long a failed or unavailable update check is
// reused: a transient failure (no network, a held package lock) should not
// hide the real state for a whole UpdatesInterval.
const failedUpdatesRetry = 10 * time.Minute

// updatesCache keeps the last package-manager result, because the queries
// take seconds to minutes and the state changes slowly.
type updatesCache struct {
	mu         sync.Mutex
	last       *posturev1.Updates
	refreshing bool
}

// cachedUpdates returns the last update measurement. The first call measures
// synchronously; later calls return the cached result (with its original
// observed_at) and, when it is stale, start one background refresh.
func (c *Collector) cachedUpdates(ctx context.Context) *posturev1.Updates {
	u := &c.updates
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.last == nil:
		// Holding the lock makes concurrent first calls wait for one
		// measurement instead of starting several.
		u.last = c.measureUpdates(ctx)
	case !u.refreshing && c.updatesStale(u.last):
		u.refreshing = true
		// The refresh outlives this call, so it must not die with ctx.
		go c.refreshUpdates(context.WithoutCancel(ctx))
	}
	return proto.Clone(u.last).(*posturev1.Updates)
}

func (c *Collector) refreshUpdates(ctx context.Context) {
	fresh := c.measureUpdates(ctx)
	u := &c.updates
	u.mu.Lock()
	defer u.mu.Unlock()
	u.last = fresh
	u.refreshing = false
}

// updatesStale reports whether a cached result should be measured again.
func (c *Collector) updatesStale(last *posturev1.Updates) bool {
	maxAge := c.updatesInterval
	if last.GetMeta().GetStatus() != posturev1.Status_STATUS_OK {
		maxAge = min(maxAge, failedUpdatesRetry)
	}
	return c.now().Sub(last.GetMeta().GetObservedAt().AsTime()) >= maxAge
}
