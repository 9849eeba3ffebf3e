package e2e

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// switchable reports a healthy machine whose disk encryption a test turns
// on and off.
type switchable struct {
	encrypted atomic.Bool
	n         atomic.Int64
}

func (m *switchable) Collect(context.Context) *posturev1.PostureReport {
	return healthyReport(m.encrypted.Load(), "s-"+string(rune('a'+m.n.Add(1)%26)))
}

const gracePolicyE2E = `
freshness: {stale_after: 1000h, expire_after: 2000h}
checks:
  - {name: disk_encryption, weight: 50, grace: 72h}
  - {name: firewall, weight: 50}
levels:
  - {name: corp, min_score: 100, require: [disk_encryption]}
`

// TestGrace: a device failing disk encryption under grace: 72h is allowed,
// each decision saying since when it fails and when it blocks, for 72 h of
// (injected) collector time, then denied; the failing-since time is the
// first failing report's and survives a restart of the collector; fixing
// the check clears it, and failing again starts a new grace.
func TestGrace(t *testing.T) {
	pol, err := policy.Parse([]byte(gracePolicyE2E))
	if err != nil {
		t.Fatal(err)
	}
	e := startCollectorWith(t, func(c *collector.Config) {
		c.Policy = pol
		c.DecayInterval = 100 * time.Millisecond
		// Reports are signed by the real clock, the collector runs days
		// ahead of it.
		c.MaxClockSkew = 1000 * time.Hour
	})
	dir, id := e.enroll()
	m := &switchable{}
	runAgent(t, dir, m, 50*time.Millisecond)
	ctx := context.Background()

	// failingSince waits for the recorded failing-since time of
	// disk_encryption (zero: wait for none).
	failingSince := func(what string, want func(since time.Time, ok bool) bool) time.Time {
		t.Helper()
		var got time.Time
		eventually(t, what, func() bool {
			d, err := e.admin.GetDevice(ctx, &posturev1.GetDeviceRequest{DeviceId: id})
			if err != nil {
				return false
			}
			for _, c := range d.GetChecks() {
				if c.GetName() == "disk_encryption" {
					got = c.GetFailingSince().AsTime()
					return want(got, c.GetFailingSince() != nil)
				}
			}
			return false
		})
		return got
	}
	check := func() *posturev1.CheckAccessResponse {
		t.Helper()
		r, err := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "corp"})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// recorded waits until the collector's standing for the device says
	// since (the grace counts from the recorded time, not a fallback).
	recorded := func(since time.Time) {
		t.Helper()
		eventually(t, "the standing recorded", func() bool {
			d, err := e.admin.GetDevice(ctx, &posturev1.GetDeviceRequest{DeviceId: id})
			if err != nil {
				return false
			}
			for _, l := range d.GetLevels() {
				if l.GetName() == "corp" && l.GetAllowed() && strings.Contains(strings.Join(l.GetWarnings(), " "), since.UTC().Format(time.RFC3339)) {
					return e.stats().GetStandingLease()
				}
			}
			return false
		})
	}

	start := time.Now()
	since := failingSince("a failing-since time", func(s time.Time, ok bool) bool { return ok })
	if since.Before(start.Add(-time.Minute)) || since.After(time.Now()) {
		t.Fatalf("failing since %v: not the first failing report's time", since)
	}
	recorded(since)
	blocksAt := since.Add(72 * time.Hour)
	wantGrace := func(r *posturev1.CheckAccessResponse) {
		t.Helper()
		w := strings.Join(r.GetWarnings(), " ")
		if !r.GetAllowed() || !r.GetMet() || !r.GetWarned() || !strings.Contains(w, "disk_encryption failing since "+since.UTC().Format(time.RFC3339)) ||
			!strings.Contains(w, "blocks at "+blocksAt.UTC().Format(time.RFC3339)) {
			t.Fatalf("inside the grace: %v", r)
		}
		if f := r.GetFailedChecks(); len(f) != 1 || !f[0].GetInGrace() || !f[0].GetBlocksAt().AsTime().Equal(blocksAt) {
			t.Errorf("failed checks inside the grace: %v", f)
		}
	}
	wantGrace(check())

	// 71 hours on, still inside.
	e.clock.Advance(71 * time.Hour)
	wantGrace(check())

	// A restart keeps the failing-since time: it is the database's.
	e.stop()
	e.start()
	if got := failingSince("the failing-since time after a restart", func(s time.Time, ok bool) bool { return ok }); !got.Equal(since) {
		t.Fatalf("failing since %v after a restart, want %v", got, since)
	}
	wantGrace(check())

	// Past 72 hours: denied, saying why.
	e.clock.Advance(90 * time.Minute)
	r := check()
	if r.GetAllowed() || r.GetWarned() || !strings.Contains(strings.Join(r.GetReasons(), " "), "corp requires disk_encryption") {
		t.Fatalf("past the grace: %v", r)
	}

	// Fixed: allowed, nothing failing, nothing recorded.
	m.encrypted.Store(true)
	failingSince("the failure cleared", func(s time.Time, ok bool) bool { return !ok })
	eventually(t, "allowed without a warning", func() bool { r := check(); return r.GetAllowed() && !r.GetWarned() })

	// Failing again: a new grace from the new failure. (The collector's
	// clock goes back to the devices' first: a report's failure counts
	// from when it was measured, by the device's clock.)
	e.clock.Advance(-(71*time.Hour + 90*time.Minute))
	m.encrypted.Store(false)
	again := failingSince("a new failing-since time", func(s time.Time, ok bool) bool { return ok })
	if !again.After(since) {
		t.Fatalf("failing again since %v, not after the first failure %v", again, since)
	}
	if r := check(); !r.GetAllowed() || !r.GetWarned() {
		t.Errorf("a new failure is not inside a new grace: %v", r)
	}
}
