package decisions

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The decision log keeps runs of identical decisions as one record, keeps
// what failed and how to fix it, and answers for a window of time.
func TestDecisionLog(t *testing.T) {
	t10 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	at := func(min, sec int) time.Time {
		return t10.Add(time.Duration(min)*time.Minute + time.Duration(sec)*time.Second)
	}
	failed := []*posturev1.CheckResult{{Name: "disk_encryption", Outcome: posturev1.Outcome_OUTCOME_FAIL, Reason: "not encrypted: /", Remediation: "encrypt the system disk"}}
	deny := func(when time.Time, reason string) decisionRecord {
		return decisionRecord{at: when, device: "a", level: "trusted", state: active, caller: "gateway edge", score: 70, reasons: []string{reason}, failed: failed}
	}
	allow := func(when time.Time) decisionRecord {
		return decisionRecord{at: when, device: "a", level: "trusted", state: active, caller: "gateway edge", allowed: true, score: 100}
	}
	l := newLogOf(8)
	// 10:00-10:29: denied on every request; the reason's wording changes.
	for s := range 30 * 60 {
		l.record(deny(at(0, s), fmt.Sprintf("score 70 is below 80 (report %ds old)", s)))
	}
	// 10:30-10:59: allowed; another gateway asks too.
	for s := range 30 * 60 {
		l.record(allow(at(30, s)))
		if s%60 == 0 {
			l.record(decisionRecord{at: at(30, s), device: "a", level: "trusted", state: active, caller: "gateway other", allowed: true, score: 100})
		}
	}
	all := l.list("", time.Time{}, time.Time{}, 100)
	if len(all) != 3 {
		t.Fatalf("%d records, want 3 (deny run, allow run, other gateway's run): %v", len(all), all)
	}
	d := l.list("a", at(40, 0), at(42, 0), 100)
	if len(d) != 2 || !d[0].GetAllowed() || d[0].GetCount() != 1800 && d[1].GetCount() != 1800 {
		t.Errorf("10:40-10:42: %v; want the two allow runs", d)
	}
	d = l.list("a", at(10, 0), at(10, 0), 100)
	if len(d) != 1 || d[0].GetAllowed() {
		t.Fatalf("10:10: %v; want the deny run", d)
	}
	r := d[0]
	if r.GetCount() != 1800 || !r.GetFirstAt().AsTime().Equal(at(0, 0)) || !r.GetAt().AsTime().Equal(at(29, 59)) {
		t.Errorf("deny run: %d times from %v to %v; want 1800 from 10:00:00 to 10:29:59", r.GetCount(), r.GetFirstAt().AsTime(), r.GetAt().AsTime())
	}
	if len(r.GetReasons()) != 1 || r.GetReasons()[0] != "score 70 is below 80 (report 1799s old)" {
		t.Errorf("deny run reasons %q; want the last decision's", r.GetReasons())
	}
	if len(r.GetFailedChecks()) != 1 || r.GetFailedChecks()[0].GetRemediation() != "encrypt the system disk" {
		t.Errorf("deny run failed checks %v; want disk_encryption with its fix", r.GetFailedChecks())
	}
	if d := l.list("b", time.Time{}, time.Time{}, 100); len(d) != 0 {
		t.Errorf("device b: %v; want none", d)
	}
	if d := l.list("", time.Time{}, time.Time{}, 1); len(d) != 1 || !d[0].GetAt().AsTime().Equal(at(59, 59)) {
		t.Errorf("limit 1: %v; want the newest record", d)
	}

	// Once the ring wraps, the oldest records go and a run that lost its
	// record starts a new one.
	for i := range 8 {
		l.record(decisionRecord{at: at(60, i), device: fmt.Sprintf("d%d", i), level: "basic", state: active, caller: "gateway edge", allowed: true})
	}
	if n := len(l.latest); n != 8 {
		t.Errorf("%d runs tracked after the ring wrapped, want 8", n)
	}
	l.record(allow(at(61, 0)))
	if d := l.list("a", time.Time{}, time.Time{}, 100); len(d) != 1 || d[0].GetCount() != 1 {
		t.Errorf("after the ring wrapped: %v; want one new record", d)
	}
}

// The log hands out what is due for saving: new records at once, a run
// that grew at most every decisionRunSaveInterval, everything when asked;
// a record overwritten before it was saved goes unsaved, and one whose save
// failed is retried; loaded records continue their runs.
func TestDecisionLogSaving(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	allow := func(device string, at time.Time) decisionRecord {
		return decisionRecord{at: at, device: device, level: "basic", state: active, caller: "gateway edge", allowed: true, score: 100}
	}
	seqs := func(rs []savedRecord) string {
		var s []string
		for _, r := range rs {
			s = append(s, fmt.Sprintf("%d×%d", r.rec.seq, r.rec.times))
		}
		slices.Sort(s)
		return fmt.Sprint(s)
	}
	l := newLogOf(3)
	l.record(allow("a", t0))
	l.record(allow("b", t0))
	if got := seqs(l.unsaved(t0, false)); got != "[1×1 2×1]" {
		t.Errorf("first save: %s, want both new records", got)
	}
	if got := l.unsaved(t0, false); len(got) != 0 {
		t.Errorf("second save: %s, want nothing", seqs(got))
	}
	// a's run grows: saved once decisionRunSaveInterval has passed, or
	// when everything is saved.
	l.record(allow("a", t0.Add(time.Second)))
	l.record(allow("a", t0.Add(2*time.Second)))
	if got := l.unsaved(t0.Add(time.Second), false); len(got) != 0 {
		t.Errorf("a second later: %s, want nothing (the run was saved a second ago)", seqs(got))
	}
	if got := seqs(l.unsaved(t0.Add(decisionRunSaveInterval), false)); got != "[1×3]" {
		t.Errorf("after the run interval: %s, want a's run of 3", got)
	}
	l.record(allow("a", t0.Add(3*time.Second)))
	if got := seqs(l.unsaved(t0.Add(decisionRunSaveInterval+time.Second), true)); got != "[1×4]" {
		t.Errorf("saving everything: %s, want a's run of 4", got)
	}

	// A failed save: d is retried; c, overwritten by f meanwhile, is gone.
	l2 := newLogOf(3)
	l2.record(allow("c", t0))
	l2.record(allow("d", t0))
	due := l2.unsaved(t0, false)
	l2.record(allow("e", t0))
	l2.record(allow("f", t0)) // takes c's slot
	l2.unsave(due)
	if got := seqs(l2.unsaved(t0, false)); got != "[2×1 3×1 4×1]" {
		t.Errorf("after a failed save: %s, want d retried, e and f new, c (overwritten) gone, each once", got)
	}

	// Records loaded after a restart are saved already and continue their
	// runs; new ones number on.
	l3 := newLogOf(3)
	l3.load([]decisionRecord{
		{seq: 7, first: t0, at: t0, times: 5, device: "a", level: "basic", state: active, caller: "gateway edge", allowed: true, score: 100},
		{seq: 9, first: t0, at: t0, times: 1, device: "b", level: "basic", state: active, caller: "gateway edge", allowed: true, score: 100},
	}, t0)
	if got := l3.unsaved(t0, true); len(got) != 0 {
		t.Errorf("loaded records due for saving: %s", seqs(got))
	}
	l3.record(allow("a", t0.Add(time.Minute)))
	l3.record(allow("z", t0.Add(time.Minute)))
	if got := seqs(l3.unsaved(t0.Add(time.Minute), true)); got != "[10×1 7×6]" {
		t.Errorf("after the restart: %s, want a's run continued (7×6) and z new as 10", got)
	}
	if d := l3.list("a", time.Time{}, time.Time{}, 10); len(d) != 1 || d[0].GetCount() != 6 {
		t.Errorf("a's records after the restart: %v", d)
	}
}

// A change of the device's state starts a new record even when the result,
// score and failed checks stay: suspect, then revoked, are two records.
func TestDecisionLogStateChange(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	l := newLogOf(8)
	for i, st := range []posturev1.DeviceState{posturev1.DeviceState_DEVICE_STATE_SUSPECT, posturev1.DeviceState_DEVICE_STATE_SUSPECT, posturev1.DeviceState_DEVICE_STATE_REVOKED} {
		reason := "device is suspect: chain broken"
		if st == posturev1.DeviceState_DEVICE_STATE_REVOKED {
			reason = "device is revoked: stolen"
		}
		l.record(decisionRecord{at: t0.Add(time.Duration(i) * time.Second), device: "a", level: "basic", caller: "gateway edge", state: st, reasons: []string{reason}})
	}
	d := l.list("a", time.Time{}, time.Time{}, 10)
	if len(d) != 2 || d[0].GetReasons()[0] != "device is revoked: stolen" || d[1].GetCount() != 2 {
		t.Errorf("records %v; want the revocation, then the suspect run of 2", d)
	}
}

const active = posturev1.DeviceState_DEVICE_STATE_ACTIVE

// Denials for devices that are not enrolled make one run per caller and
// level, keeping the last device asked about: a gateway asking about
// made-up devices cannot push the other records out.
func TestDecisionLogUnknownDevices(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	l := newLogOf(4)
	l.record(decisionRecord{at: t0, device: "a", level: "basic", state: active, caller: "gateway edge", allowed: true, score: 100})
	for i := range 1000 {
		id := fmt.Sprintf("made-up-%d", i)
		l.record(decisionRecord{at: t0.Add(time.Duration(i) * time.Millisecond), device: id, level: "basic", caller: "gateway edge",
			reasons: []string{"device " + id + " is not enrolled with this collector"}})
	}
	d := l.list("", time.Time{}, time.Time{}, 10)
	if len(d) != 2 || d[0].GetCount() != 1000 || d[0].GetDeviceId() != "made-up-999" || d[0].GetReasons()[0] != "device made-up-999 is not enrolled with this collector" {
		t.Fatalf("records %v; want one run of 1000 denials naming the last device, and a's record", d)
	}
	if d[1].GetDeviceId() != "a" {
		t.Errorf("a's record is gone: %v", d)
	}
}

// Requests for levels the policy does not define make one run per device
// and caller, naming the last level asked for.
func TestDecisionLogUndefinedLevels(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	l := newLogOf(4)
	l.record(decisionRecord{at: t0, device: "a", level: "basic", state: active, caller: "gateway edge", allowed: true, score: 100})
	for i := range 1000 {
		lvl := fmt.Sprintf("made-up-%d", i)
		l.record(decisionRecord{at: t0.Add(time.Duration(i) * time.Millisecond), device: "a", level: lvl, undefinedLevel: true, state: active, caller: "gateway edge",
			score: 100, reasons: []string{fmt.Sprintf("access level %q is not defined", lvl)}})
	}
	d := l.list("a", time.Time{}, time.Time{}, 10)
	if len(d) != 2 || d[0].GetCount() != 1000 || d[0].GetAccessLevel() != "made-up-999" || d[1].GetAccessLevel() != "basic" {
		t.Fatalf("records %v; want one run of 1000 naming the last level, and basic's record", d)
	}
}

// Save and Load carry a log across a restart, per collector: records
// come back saved, and runs continue.
func TestSaveLoad(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "posture.db")
	st, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	l := New()
	l.Record(Entry{At: t0, Device: "a", Level: "basic", State: active, Caller: "gateway edge", Reasons: []string{"score 10 is below 50"},
		Failed: []*posturev1.CheckResult{{Name: "firewall", Outcome: posturev1.Outcome_OUTCOME_FAIL, Reason: "off", Remediation: "turn it on"}}})
	l.Record(Entry{At: t0.Add(time.Second), Device: "b", Level: "basic", State: active, Caller: "gateway edge", Allowed: true, Score: 90})
	if err := l.Save(ctx, st, "replica-1", false); err != nil {
		t.Fatal(err)
	}
	other := New()
	other.Record(Entry{At: t0, Device: "z", Level: "basic", State: active, Caller: "gateway far"})
	if err := other.Save(ctx, st, "replica-2", true); err != nil {
		t.Fatal(err)
	}
	back := New()
	if err := back.Load(ctx, st, "replica-1"); err != nil {
		t.Fatal(err)
	}
	got := back.List("", time.Time{}, time.Time{}, 10)
	if len(got) != 2 || got[0].GetDeviceId() != "b" || got[1].GetDeviceId() != "a" {
		t.Fatalf("loaded %v; want b then a, and nothing of replica-2", got)
	}
	if f := got[1].GetFailedChecks(); len(f) != 1 || f[0].GetRemediation() != "turn it on" || got[1].GetReasons()[0] != "score 10 is below 50" {
		t.Errorf("a's record lost its reasons: %v", got[1])
	}
	back.Record(Entry{At: t0.Add(time.Minute), Device: "b", Level: "basic", State: active, Caller: "gateway edge", Allowed: true, Score: 90})
	if got := back.List("b", time.Time{}, time.Time{}, 10); len(got) != 1 || got[0].GetCount() != 2 {
		t.Errorf("b's run after the restart: %v; want one record of 2", got)
	}
}
