package ingest

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// A spell of failed writes is logged once when it starts, once a minute
// while it lasts, and once when writes have gone through for a while;
// writes that get through now and then do not end it.
func TestStoreFailuresAggregated(t *testing.T) {
	logs := &testtools.LogRecorder{}
	log := slog.New(logs)
	var f storeFailures
	t0 := time.Unix(1_800_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	full := errors.New("database or disk is full")

	f.ok(log, at(0))
	for i := range 100 { // 100 failures in 10 s, a write through now and then
		f.fail(log, at(time.Duration(i)*100*time.Millisecond), "store report", full)
		if i%10 == 0 {
			f.ok(log, at(time.Duration(i)*100*time.Millisecond+time.Millisecond))
		}
	}
	if got := len(logs.Messages(slog.LevelError)); got != 1 {
		t.Fatalf("%d error lines for a spell of 10 s, want 1: %q", got, logs.Lines())
	}
	if got := len(logs.Messages(slog.LevelInfo)); got != 0 {
		t.Fatalf("writes getting through ended the spell: %q", logs.Lines())
	}
	f.fail(log, at(70*time.Second), "open report stream", full)
	if got := len(logs.Messages(slog.LevelError)); got != 2 {
		t.Fatalf("%d error lines after a minute, want 2: %q", got, logs.Lines())
	}
	if !logs.Has(slog.LevelError, "failed", "100") {
		t.Errorf("the second line does not count the 100 failures since the first (this one among them): %q", logs.Lines())
	}
	f.ok(log, at(75*time.Second))
	f.ok(log, at(81*time.Second))
	if got := len(logs.Messages(slog.LevelInfo)); got != 1 || !logs.Has(slog.LevelInfo, "failed", "101") {
		t.Fatalf("after the spell: %q; want one line counting 101 failures", logs.Lines())
	}
	f.fail(log, at(90*time.Second), "store report", full)
	if got := len(logs.Messages(slog.LevelError)); got != 3 {
		t.Errorf("a new spell is not logged at once: %q", logs.Lines())
	}
}
