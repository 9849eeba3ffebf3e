package console

import (
	"cmp"
	"container/heap"
	"encoding/base64"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// rows copies the fleet for one request, into a buffer reused between
// requests: a fleet of 100,000 devices is some 10 MB of rows.
func (c *Console) rows() (*[]fleet.Row, *policy.Policy) {
	buf, _ := c.rowsPool.Get().(*[]fleet.Row)
	if buf == nil {
		buf = new([]fleet.Row)
	}
	var pol *policy.Policy
	*buf, pol = c.cfg.Fleet.Rows(*buf)
	return buf, pol
}

func (c *Console) putRows(buf *[]fleet.Row) {
	// Rows hold strings and assessments of the fleet: clear them, so the
	// buffer does not keep a device's texts alive after it changed.
	clear(*buf)
	c.rowsPool.Put(buf)
}

// parallel runs fn over shares of rows on every core, and returns each
// share's result.
func parallel[T any](rows []fleet.Row, fn func(part []fleet.Row) T) []T {
	n := runtime.GOMAXPROCS(0)
	if len(rows) < 4096 {
		n = 1
	}
	out := make([]T, n)
	var wg sync.WaitGroup
	for i := range n {
		part := rows[len(rows)*i/n : len(rows)*(i+1)/n]
		wg.Go(func() { out[i] = fn(part) })
	}
	wg.Wait()
	return out
}

// overviewData is the fleet at a glance.
type overviewData struct {
	Devices int
	States  []count // by state
	Levels  []count // devices allowed each level
	Failing []count // the checks that fail most, most first
	Silent  []silentDevice
	// SilentCount is how many devices sent nothing for longer than the
	// policy keeps full trust (stale_after).
	SilentCount int
	StaleAfter  time.Duration
}

type count struct {
	Name string
	N    int
}

type silentDevice struct {
	ID, Hostname string
	ReportAt     time.Time
}

// maxSilentListed is how many silent devices the overview names.
const maxSilentListed = 20

// overview counts the fleet from memory.
func (c *Console) overviewOf(now time.Time) overviewData {
	buf, pol := c.rows()
	defer c.putRows(buf)
	rows := *buf
	type tally struct {
		states  map[posturev1.DeviceState]int
		levels  []int
		failing map[string]int
		silent  []silentDevice
		nSilent int
	}
	stale := pol.Freshness.StaleAfter
	parts := parallel(rows, func(part []fleet.Row) tally {
		t := tally{states: map[posturev1.DeviceState]int{}, levels: make([]int, len(pol.Levels)), failing: map[string]int{}}
		for i := range part {
			r := &part[i]
			t.states[r.Subject.State]++
			if r.Subject.State == posturev1.DeviceState_DEVICE_STATE_REVOKED {
				continue
			}
			_, set := pol.AllowedSet(&r.Subject, now)
			for l := range pol.Levels {
				if set&(1<<l) != 0 {
					t.levels[l]++
				}
			}
			r.Subject.Assessment.Failing(func(name string) { t.failing[name]++ })
			if r.Subject.Assessment != nil && now.Sub(r.Subject.ReportAt) > stale {
				t.nSilent++
				t.silent = append(t.silent, silentDevice{ID: r.ID, Hostname: r.Hostname, ReportAt: r.Subject.ReportAt})
				if len(t.silent) > 4*maxSilentListed {
					t.silent = oldestSilent(t.silent)
				}
			}
		}
		return t
	})
	out := overviewData{Devices: len(rows), StaleAfter: stale}
	states := map[posturev1.DeviceState]int{}
	levels := make([]int, len(pol.Levels))
	failing := map[string]int{}
	var silent []silentDevice
	for _, t := range parts {
		for k, v := range t.states {
			states[k] += v
		}
		for i, v := range t.levels {
			levels[i] += v
		}
		for k, v := range t.failing {
			failing[k] += v
		}
		silent = append(silent, t.silent...)
		out.SilentCount += t.nSilent
	}
	for _, st := range []posturev1.DeviceState{posturev1.DeviceState_DEVICE_STATE_ACTIVE, posturev1.DeviceState_DEVICE_STATE_PENDING,
		posturev1.DeviceState_DEVICE_STATE_SUSPECT, posturev1.DeviceState_DEVICE_STATE_REVOKED} {
		out.States = append(out.States, count{stateName(st), states[st]})
	}
	for i, l := range pol.Levels {
		out.Levels = append(out.Levels, count{l.Name, levels[i]})
	}
	for k, v := range failing {
		out.Failing = append(out.Failing, count{k, v})
	}
	slices.SortFunc(out.Failing, func(a, b count) int { return cmp.Or(cmp.Compare(b.N, a.N), strings.Compare(a.Name, b.Name)) })
	out.Silent = oldestSilent(silent)
	if len(out.Silent) > maxSilentListed {
		out.Silent = out.Silent[:maxSilentListed]
	}
	return out
}

// oldestSilent keeps the devices silent longest, longest first.
func oldestSilent(s []silentDevice) []silentDevice {
	slices.SortFunc(s, func(a, b silentDevice) int {
		return cmp.Or(a.ReportAt.Compare(b.ReportAt), strings.Compare(a.ID, b.ID))
	})
	if len(s) > maxSilentListed {
		s = s[:maxSilentListed]
	}
	return s
}

// listQuery is what the device list asks for.
type listQuery struct {
	Q         string // part of a hostname, or the start of an ID
	State     string // active, suspect, revoked, pending
	Level     string // allowed this level
	Assurance string // software, tpm_ek_pinned, tpm_ek_verified
	Failing   string // this check does not pass
	After     string // the page after this cursor (listCursor)
	Limit     int
}

// listRow is one device of the list.
type listRow struct {
	ID, Hostname, OS string
	State            posturev1.DeviceState
	Assurance        posturev1.IdentityAssurance
	Score            uint32
	Levels           []string
	Failing          []string
	ReportAt         time.Time
}

type listData struct {
	Query listQuery
	Rows  []listRow
	// Matches counts every device that matches, on every page.
	Matches int
	Total   int
	// Next is the cursor of the next page; empty on the last.
	Next string
	// Choices for the filters.
	Levels, Checks []string
}

// pageSize is how many devices a page of the list shows.
const pageSize = 100

// rowKey orders the list: by hostname, then ID.
type rowKey struct{ host, id string }

func (k rowKey) less(o rowKey) bool { return k.host < o.host || k.host == o.host && k.id < o.id }

func (k rowKey) cursor() string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.host + "\x00" + k.id))
}

func parseCursor(s string) (rowKey, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return rowKey{}, false
	}
	host, id, ok := strings.Cut(string(b), "\x00")
	return rowKey{host, id}, ok
}

// pageHeap keeps the smallest keys seen, largest on top.
type pageHeap []*fleet.Row

func (h pageHeap) Len() int { return len(h) }
func (h pageHeap) Less(i, j int) bool {
	return rowKey{h[j].Hostname, h[j].ID}.less(rowKey{h[i].Hostname, h[i].ID})
}
func (h pageHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pageHeap) Push(x any)   { *h = append(*h, x.(*fleet.Row)) }
func (h *pageHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// containsFold reports whether s contains sub, ignoring ASCII case
// (sub is lower case), without allocating.
func containsFold(s, sub string) bool {
	if sub == "" {
		return true
	}
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for ; j < len(sub); j++ {
			ch := s[i+j]
			if 'A' <= ch && ch <= 'Z' {
				ch += 'a' - 'A'
			}
			if ch != sub[j] {
				break
			}
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}

// list finds a page of devices in memory: one pass over the fleet on
// every core, keeping the page's devices in a heap, so a page costs the
// same wherever it is in a fleet of any size.
func (c *Console) list(q listQuery, now time.Time) listData {
	buf, pol := c.rows()
	defer c.putRows(buf)
	rows := *buf
	if q.Limit <= 0 || q.Limit > pageSize {
		q.Limit = pageSize
	}
	after, paged := parseCursor(q.After)
	needle := strings.ToLower(strings.TrimSpace(q.Q))
	level := -1
	for i, l := range pol.Levels {
		if l.Name == q.Level {
			level = i
		}
	}
	var state posturev1.DeviceState
	if q.State != "" {
		state = posturev1.DeviceState(posturev1.DeviceState_value["DEVICE_STATE_"+strings.ToUpper(q.State)])
	}
	match := func(r *fleet.Row) bool {
		switch {
		case needle != "" && !containsFold(r.Hostname, needle) && !strings.HasPrefix(r.ID, needle):
			return false
		case q.State != "" && r.Subject.State != state:
			return false
		case q.Assurance != "" && policy.AssuranceName(r.Subject.Assurance) != q.Assurance:
			return false
		case q.Failing != "":
			o, ok := r.Subject.Assessment.Outcome(q.Failing)
			if !ok || o == posturev1.Outcome_OUTCOME_PASS || o == posturev1.Outcome_OUTCOME_NOT_APPLICABLE {
				return false
			}
		}
		if q.Level != "" {
			if level < 0 {
				return false
			}
			if _, set := pol.AllowedSet(&r.Subject, now); set&(1<<level) == 0 {
				return false
			}
		}
		return true
	}
	type found struct {
		page    pageHeap
		matches int
	}
	parts := parallel(rows, func(part []fleet.Row) found {
		var f found
		for i := range part {
			r := &part[i]
			if !match(r) {
				continue
			}
			f.matches++
			k := rowKey{r.Hostname, r.ID}
			if paged && !after.less(k) {
				continue
			}
			switch {
			case len(f.page) < q.Limit+1:
				heap.Push(&f.page, r)
			case k.less(rowKey{f.page[0].Hostname, f.page[0].ID}):
				f.page[0] = r
				heap.Fix(&f.page, 0)
			}
		}
		return f
	})
	var page []*fleet.Row
	out := listData{Query: q, Total: len(rows), Levels: pol.LevelNames()}
	for _, f := range parts {
		out.Matches += f.matches
		page = append(page, f.page...)
	}
	slices.SortFunc(page, func(a, b *fleet.Row) int {
		return cmp.Or(strings.Compare(a.Hostname, b.Hostname), strings.Compare(a.ID, b.ID))
	})
	if len(page) > q.Limit {
		page = page[:q.Limit]
		last := page[len(page)-1]
		out.Next = rowKey{last.Hostname, last.ID}.cursor()
	}
	for _, ch := range pol.Checks {
		out.Checks = append(out.Checks, ch.Name)
	}
	for _, r := range page {
		score, set := pol.AllowedSet(&r.Subject, now)
		lr := listRow{ID: r.ID, Hostname: r.Hostname, OS: r.OSLine, State: r.Subject.State, Assurance: r.Subject.Assurance,
			Score: score, Levels: pol.Names(set), ReportAt: r.Subject.ReportAt}
		r.Subject.Assessment.Failing(func(name string) { lr.Failing = append(lr.Failing, name) })
		out.Rows = append(out.Rows, lr)
	}
	return out
}
