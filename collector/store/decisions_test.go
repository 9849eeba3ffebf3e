package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

// Saved decisions come back after a reopen, newest last; saving a record
// again replaces it; only the newest keep records stay; a batch with a bad
// record saves nothing.
func TestSaveDecisions(t *testing.T) {
	ctx := context.Background()
	s, path := openTestStore(t)
	t0 := time.Date(2026, 11, 27, 10, 42, 0, 0, time.UTC)
	rec := func(seq uint64, count uint64) Decision {
		return Decision{Seq: seq, FirstAt: t0.Add(time.Duration(seq) * time.Minute), At: t0.Add(time.Duration(seq)*time.Minute + time.Duration(count)*time.Second),
			Count: count, Device: fmt.Sprintf("dev-%d", seq%3), Level: "trusted", Caller: "gateway edge-1",
			Allowed: seq%2 == 0, Score: uint32(seq), State: int32(seq % 4), Detail: []byte(fmt.Sprintf("detail %d/%d", seq, count))}
	}
	if err := s.SaveDecisions(ctx, []Decision{rec(1, 1), rec(2, 1), rec(3, 1)}, 5); err != nil {
		t.Fatal(err)
	}
	// Record 2's run grew; 4..7 are new. Keeping 5 drops 1 and 2.
	if err := s.SaveDecisions(ctx, []Decision{rec(2, 40), rec(4, 1), rec(5, 1), rec(6, 1), rec(7, 1)}, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDecisions(ctx, []Decision{rec(8, 1), {Seq: math.MaxUint64, Count: 1}}, 5); err == nil {
		t.Error("a record numbered beyond the storable range was saved")
	}
	if err := s.SaveDecisions(ctx, []Decision{rec(8, 1), {Seq: 0, Count: 1}}, 5); err == nil {
		t.Error("a record numbered 0 was saved")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDecisions(ctx, []Decision{rec(8, 1)}, 5); !errors.Is(err, ErrClosed) {
		t.Errorf("save after Close: %v, want ErrClosed", err)
	}

	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Decisions(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, d := range got {
		seqs = append(seqs, d.Seq)
	}
	if fmt.Sprint(seqs) != "[3 4 5 6 7]" {
		t.Fatalf("saved records %v, want [3 4 5 6 7] (the newest five, oldest first; none of the refused batches)", seqs)
	}
	for i, d := range got {
		want := rec(d.Seq, 1)
		if !d.FirstAt.Equal(want.FirstAt) || !d.At.Equal(want.At) || d.Count != 1 || d.Device != want.Device || d.Level != want.Level ||
			d.Caller != want.Caller || d.Allowed != want.Allowed || d.Score != want.Score || d.State != want.State || string(d.Detail) != string(want.Detail) {
			t.Errorf("record %d = %+v, want %+v", i, d, want)
		}
	}
	if newest, err := s.Decisions(ctx, 2); err != nil || len(newest) != 2 || newest[0].Seq != 6 || newest[1].Seq != 7 {
		t.Errorf("newest two: %+v, %v; want 6 and 7", newest, err)
	}

	// A run saved again is replaced, not added.
	if err := s.SaveDecisions(ctx, []Decision{rec(7, 90)}, 5); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Decisions(ctx, 100); len(got) != 5 || got[4].Count != 90 || string(got[4].Detail) != "detail 7/90" {
		t.Errorf("after record 7 grew: %+v; want five records, the last of count 90", got)
	}
}

// Each start's first watch revision is above the last start's by more
// than a process publishes, whatever the clock says, and survives a reopen.
func TestNextWatchBase(t *testing.T) {
	ctx := context.Background()
	s, path := openTestStore(t)
	now := uint64(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC).UnixMicro())
	first, err := s.NextWatchBase(ctx, now)
	if err != nil || first != now {
		t.Fatalf("first start: %d, %v; want %d (now)", first, err, now)
	}
	// The clock was set back an hour.
	second, err := s.NextWatchBase(ctx, now-3600e6)
	if err != nil || second != first+watchGap {
		t.Fatalf("start with the clock set back: %d, %v; want %d", second, err, first+watchGap)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	later := second + 10*watchGap
	if third, err := s.NextWatchBase(ctx, later); err != nil || third != later {
		t.Errorf("start much later, after a reopen: %d, %v; want %d (now)", third, err, later)
	}
	if fourth, err := s.NextWatchBase(ctx, 0); err != nil || fourth != later+watchGap {
		t.Errorf("start with a clock at 0: %d, %v; want %d", fourth, err, later+watchGap)
	}
}
