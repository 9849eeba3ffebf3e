package fleet

import (
	"context"
	"sync"
	"sync/atomic"
)

// Stream is one report stream open on this collector. Only a device's
// newest stream stores reports (a newer one ends the older ones here, and
// the store refuses reports of a stream that is not the newest, whichever
// collector it reached), so streams are registered per device.
type Stream struct {
	// Cancel ends the stream, saying why.
	Cancel context.CancelCauseFunc
	// Busy is held while a report of this stream is checked and stored,
	// so that a newer stream of the device can wait for it to finish.
	Busy sync.Mutex
	// Measure carries requests for a measurement now (RequestMeasure) to
	// the stream's sender; make it with room for one.
	Measure chan struct{}
	// AcceptsMeasure is set once the agent said it reads MeasureNow.
	AcceptsMeasure atomic.Bool
}

// AddStream registers a device's report stream, so that revocation can
// end it, and returns the device's streams registered before it.
func (f *Fleet) AddStream(id string, s *Stream) (older []*Stream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.streams[id] == nil {
		f.streams[id] = map[*Stream]struct{}{}
	}
	for o := range f.streams[id] {
		older = append(older, o)
	}
	f.streams[id][s] = struct{}{}
	return older
}

// RemoveStream forgets a stream that ended.
func (f *Fleet) RemoveStream(id string, s *Stream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.streams[id], s)
	if len(f.streams[id]) == 0 {
		delete(f.streams, id)
	}
}

// CloseStreams ends a device's open report streams with cause.
func (f *Fleet) CloseStreams(id string, cause error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.streams[id] {
		s.Cancel(cause)
	}
}

// StreamCount is how many report streams are open.
func (f *Fleet) StreamCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := 0
	for _, m := range f.streams {
		n += len(m)
	}
	return n
}

// CloseAllStreams ends every open report stream with cause.
func (f *Fleet) CloseAllStreams(cause error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.streams {
		for s := range m {
			s.Cancel(cause)
		}
	}
}
