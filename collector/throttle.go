package collector

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// failThrottle throttles the enrollment attempts of peers that keep
// failing: a token bucket per peer filled with burst failures, one more
// every interval. A peer whose bucket is empty is refused before its token
// is looked up; failures of one peer never refuse another, and successes
// cost nothing, so a building behind one NAT enrolls as fast as it likes
// until it fails burst times. Attempts already admitted may fail at once
// and take the bucket below empty (down to -burst), which the peer then
// waits off: so however many calls it opens at once, a peer fails at most
// burst times and then once per interval. It tracks at most max peers,
// forgetting those that failed least recently first, and forgets a peer
// whose bucket is full again.
type failThrottle struct {
	mu       sync.Mutex
	burst    float64
	interval time.Duration
	max      int
	peers    map[peerAddr]*list.Element // of *failBucket
	lru      list.List                  // most recently failed first
}

type failBucket struct {
	peer   peerAddr
	tokens float64 // failures it may make, as of at
	at     time.Time
}

func newFailThrottle(burst int, interval time.Duration, max int) *failThrottle {
	return &failThrottle{burst: float64(burst), interval: interval, max: max, peers: map[peerAddr]*list.Element{}}
}

// refill brings b to now, and says whether it is full (nothing to
// remember).
func (t *failThrottle) refill(b *failBucket, now time.Time) bool {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = math.Min(t.burst, b.tokens+float64(d)/float64(t.interval))
		b.at = now
	}
	return b.tokens >= t.burst
}

// admit says whether p may attempt an enrollment now, and if not, how long
// until it may.
func (t *failThrottle) admit(p peerAddr, now time.Time) (wait time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, tracked := t.peers[p]
	if !tracked {
		return 0, true
	}
	b := e.Value.(*failBucket)
	if t.refill(b, now) {
		t.lru.Remove(e)
		delete(t.peers, p)
		return 0, true
	}
	if b.tokens >= 1 {
		return 0, true
	}
	return time.Duration((1 - b.tokens) * float64(t.interval)), false
}

// failed counts a failed attempt of p.
func (t *failThrottle) failed(p peerAddr, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, tracked := t.peers[p]
	if !tracked {
		if len(t.peers) >= t.max {
			oldest := t.lru.Back()
			t.lru.Remove(oldest)
			delete(t.peers, oldest.Value.(*failBucket).peer)
		}
		e = t.lru.PushFront(&failBucket{peer: p, tokens: t.burst, at: now})
		t.peers[p] = e
	} else {
		t.lru.MoveToFront(e)
	}
	b := e.Value.(*failBucket)
	t.refill(b, now)
	b.tokens = math.Max(b.tokens-1, -t.burst)
}

// forget drops the peers whose buckets are full again.
func (t *failThrottle) forget(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for e := t.lru.Front(); e != nil; {
		next := e.Next()
		if b := e.Value.(*failBucket); t.refill(b, now) {
			t.lru.Remove(e)
			delete(t.peers, b.peer)
		}
		e = next
	}
}

// tracked is how many peers are remembered.
func (t *failThrottle) tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers)
}
