package fleet

import (
	"strings"
	"sync"
)

// interner keeps one copy of equal strings that many devices carry alike
// (OS lines, measured-boot reasons). Strings taken from reports could
// otherwise grow it without end, so it is bounded three ways: it takes
// strings of at most maxLen bytes, at most max of them, and at most
// maxBytes in all. Past a bound a string is simply kept as it is, by the
// device it belongs to.
type interner struct {
	mu                    sync.Mutex
	m                     map[string]string
	max, maxLen, maxBytes int
	bytes                 int
}

func newInterner(max, maxLen, maxBytes int) *interner {
	return &interner{m: map[string]string{}, max: max, maxLen: maxLen, maxBytes: maxBytes}
}

func (in *interner) get(s string) string {
	if len(s) > in.maxLen {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if t, ok := in.m[s]; ok {
		return t
	}
	if len(in.m) < in.max && in.bytes+len(s) <= in.maxBytes {
		s = strings.Clone(s) // not the rest of whatever s was cut from
		in.m[s] = s
		in.bytes += len(s)
	}
	return s
}
