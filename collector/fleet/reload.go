package fleet

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
)

// Reload assesses every device's latest report under a new policy and puts
// it in force. It reads and assesses every device's latest stored report
// without holding the fleet; meanwhile the fleet assesses every report it
// applies under the new policy too (see applyReport), so the catch-up
// needs no reading. Then, under the fleet lock, every device's assessment
// is replaced by the one of its newest report found either way, and the
// policy is swapped in, together: no decision mixes the old policy with
// new assessments, and decisions wait only for the swap. A failure changes
// nothing. Reloads run one at a time.
func (f *Fleet) Reload(ctx context.Context, st Scanner, p *policy.Policy) error {
	if err := f.beginReload(p); err != nil {
		return err
	}
	defer f.endReload()
	workers := runtime.GOMAXPROCS(0)
	found := make([]map[string]reassessed, workers)
	for i := range found {
		found[i] = map[string]reassessed{}
	}
	// A report applied before beginReload was stored before the scan
	// begins, so the scan reads it or a newer one; one applied after was
	// assessed under p by applyReport.
	err := st.ScanFleet(ctx, workers, func(part int, row *store.FleetRow) error {
		if row.Report == nil {
			return nil
		}
		rep, boot, err := DecodeLatest(row)
		if err != nil {
			return err
		}
		found[part][row.ID] = reassessed{row.Report.Seq, p.AssessWith(rep, row.Report.ReceivedAt, MeasuredOf(boot.boot))}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read latest reports: %w", err)
	}
	return f.finishReload(found)
}

// reassessed is a device's report, by sequence number, assessed under a
// policy being reloaded.
type reassessed struct {
	seq uint64
	a   *policy.Assessment
}

// pendingReload is a policy reload under way: its policy, and the reports
// the fleet applied since it began, assessed under it.
type pendingReload struct {
	pol      *policy.Policy
	recorded map[string]reassessed
}

func (f *Fleet) beginReload(p *policy.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reload != nil {
		return errors.New("another policy reload is under way")
	}
	f.reload = &pendingReload{pol: p, recorded: map[string]reassessed{}}
	return nil
}

func (f *Fleet) endReload() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reload = nil
}

// finishReload gives every assessed device the assessment of its newest
// report under the reload's policy and puts the policy in force, under the
// fleet lock. found is what the scan read.
func (f *Fleet) finishReload(found []map[string]reassessed) error {
	type change struct {
		e *entry
		a *policy.Assessment
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	changes := make([]change, 0, len(f.devices))
	for id, e := range f.devices {
		if e.subject.Assessment == nil {
			continue // nothing assessed under the old policy; the next report is, under the new one
		}
		var best reassessed
		ok := false
		for _, m := range found {
			if got, in := m[id]; in {
				best, ok = got, true
				break
			}
		}
		if got, in := f.reload.recorded[id]; in && (!ok || got.seq > best.seq) {
			best, ok = got, true
		}
		if !ok {
			// Every assessment comes from a report the scan or the fleet
			// saw since the reload began; should one not, a device would
			// keep an assessment under the old policy.
			return fmt.Errorf("device %s: its latest report was neither read nor applied during the reload; reload again", id)
		}
		changes = append(changes, change{e, best.a})
	}
	for _, ch := range changes {
		ch.e.subject.Assessment = ch.a
	}
	f.pol.Store(f.reload.pol)
	return nil
}
