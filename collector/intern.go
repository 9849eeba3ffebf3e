package collector

import "sync"

// interner keeps one copy of equal strings, up to a bound: strings taken
// from reports could otherwise grow it without end, and past the bound a
// string is simply kept as it is.
type interner struct {
	mu  sync.Mutex
	m   map[string]string
	max int
}

func newInterner(max int) *interner { return &interner{m: map[string]string{}, max: max} }

func (in *interner) get(s string) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if t, ok := in.m[s]; ok {
		return t
	}
	if len(in.m) < in.max {
		in.m[s] = s
	}
	return s
}
