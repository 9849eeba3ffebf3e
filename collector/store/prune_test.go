package store

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// pruneAll runs one pass of PruneReports in calls of limit reports and
// returns how many it deleted and how many calls it took.
func pruneAll(t *testing.T, s *Store, cutoff time.Time, limit int) (pruned, calls int) {
	t.Helper()
	var from int64
	for {
		p, err := s.PruneReports(context.Background(), cutoff, from, limit)
		if err != nil {
			t.Fatalf("PruneReports: %v", err)
		}
		calls++
		pruned += p.Pruned
		if p.Done {
			return pruned, calls
		}
		if p.Next <= from {
			t.Fatalf("PruneReports did not advance: from %d, next %d", from, p.Next)
		}
		from = p.Next
		if calls > 1000 {
			t.Fatal("PruneReports never finished")
		}
	}
}

func appendAt(t *testing.T, s *Store, id string, seq uint64, at time.Time) {
	t.Helper()
	r := reportFor(id, seq, "")
	r.ReceivedAt = at
	if err := s.AppendReport(context.Background(), r); err != nil {
		t.Fatalf("AppendReport %s/%d: %v", id, seq, err)
	}
}

// reopen closes s, which indexes its reports, and opens the file again.
func reopen(t *testing.T, s *Store, path string) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return openManual(t, path)
}

// TestPruneReports deletes the reports received before the cutoff, except
// heads and what the history does not index yet, in as many calls as the
// limit asks for, and leaves every remaining read consistent.
func TestPruneReports(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "posture.db")
	s := openManual(t, path)
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		enrollTestDevice(t, s, id)
	}
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cutoff := old.Add(24 * time.Hour)
	recent := cutoff.Add(time.Hour)
	for seq := uint64(1); seq <= 5; seq++ {
		appendAt(t, s, "dev-a", seq, old.Add(time.Duration(seq)*time.Minute))
	}
	for seq := uint64(1); seq <= 3; seq++ {
		appendAt(t, s, "dev-b", seq, old.Add(time.Hour+time.Duration(seq)*time.Minute))
	}
	appendAt(t, s, "dev-c", 1, old.Add(2*time.Hour)) // its head: kept however old
	s = reopen(t, s, path)                           // everything so far is indexed
	appendAt(t, s, "dev-a", 6, old.Add(3*time.Hour)) // old, but not indexed yet: kept for now
	appendAt(t, s, "dev-a", 7, recent)

	pruned, calls := pruneAll(t, s, cutoff, 2)
	if pruned != 7 {
		t.Errorf("pruned %d reports, want 7 (dev-a 1-5, dev-b 1-2)", pruned)
	}
	if calls < 5 {
		t.Errorf("a pass over 9 reports in calls of 2 took %d calls", calls)
	}
	check := func(want map[string][]uint64) {
		t.Helper()
		for id, seqs := range want {
			if got := seqsOf(t, s, id, 0); !slices.Equal(got, seqs) {
				t.Errorf("%s keeps reports %v, want %v", id, got, seqs)
			}
			if n, err := s.CountReports(ctx, id); err != nil || n != len(seqs) {
				t.Errorf("CountReports(%s) = %d, %v; want %d", id, n, err, len(seqs))
			}
			if r, err := s.LatestReport(ctx, id); err != nil || r.Seq != seqs[0] {
				t.Errorf("LatestReport(%s) = seq %d, %v; want %d", id, r.Seq, err, seqs[0])
			}
		}
	}
	check(map[string][]uint64{"dev-a": {7, 6}, "dev-b": {3}, "dev-c": {1}})

	// Once indexed, the old report below the head goes in the next pass,
	// which stops at the first recent report.
	s = reopen(t, s, path)
	if pruned, _ := pruneAll(t, s, cutoff, 100); pruned != 1 {
		t.Errorf("second pass pruned %d, want 1 (dev-a 6)", pruned)
	}
	check(map[string][]uint64{"dev-a": {7}, "dev-b": {3}, "dev-c": {1}})
	_, indexed, logged := historyState(t, s)
	if indexed != logged || logged != 3 {
		t.Errorf("after pruning: %d reports indexed, %d in the log; want 3 and 3", indexed, logged)
	}
	// The chain continues from the kept heads.
	appendAt(t, s, "dev-a", 8, recent.Add(time.Hour))
	check(map[string][]uint64{"dev-a": {8, 7}})
	if _, err := s.PruneReports(ctx, cutoff, 0, 0); err == nil {
		t.Error("PruneReports with limit 0 succeeded")
	}
}

// TestPruneKeepsNewestReport never deletes the log's newest report, even
// when it is old and not a head: SQLite would give its ID out again, below
// what the history already covers.
func TestPruneKeepsNewestReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	s := openManual(t, path)
	enrollTestDevice(t, s, "dev-a")
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	appendAt(t, s, "dev-a", 2, old)
	appendAt(t, s, "dev-a", 1, old) // an older report: stored, not the head
	s = reopen(t, s, path)
	if pruned, _ := pruneAll(t, s, old.Add(time.Hour), 10); pruned != 0 {
		t.Fatalf("pruned %d reports, want 0: one is the head, the other the newest", pruned)
	}
	appendAt(t, s, "dev-a", 3, old)
	s = reopen(t, s, path)
	if pruned, _ := pruneAll(t, s, old.Add(time.Hour), 10); pruned != 2 {
		t.Fatalf("pruned %d reports, want 2", pruned)
	}
	if got := seqsOf(t, s, "dev-a", 0); !slices.Equal(got, []uint64{3}) {
		t.Errorf("dev-a keeps %v, want [3]", got)
	}
	appendAt(t, s, "dev-a", 4, old)
	s = reopen(t, s, path)
	if got := seqsOf(t, s, "dev-a", 0); !slices.Equal(got, []uint64{4, 3}) {
		t.Errorf("dev-a after another report: %v, want [4 3]", got)
	}
}
