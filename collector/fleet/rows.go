package fleet

import (
	"github.com/posture-project/posture/collector/policy"
)

// Row is one device as the console lists it, copied from memory.
type Row struct {
	ID       string
	Hostname string
	OSLine   string
	Subject  policy.Subject
}

// Rows copies every device into dst (reused from its start; pass the
// previous result to spare the allocation) with the policy in force, in
// no order. The copy is taken under the fleet's read lock, which it holds
// only as long as copying takes: filtering and deciding happen on the
// copy. Subjects share their assessments with the fleet, which never
// changes one in place.
func (f *Fleet) Rows(dst []Row) ([]Row, *policy.Policy) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if cap(dst) < len(f.devices) {
		dst = make([]Row, 0, len(f.devices)+len(f.devices)/8)
	}
	dst = dst[:0]
	for id, e := range f.devices {
		dst = append(dst, Row{ID: id, Hostname: e.hostname, OSLine: e.osLine, Subject: e.subject})
	}
	return dst, f.pol.Load()
}
