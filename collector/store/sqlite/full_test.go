package sqlite

import (
	"context"
	"fmt"
	"testing"

	"github.com/posture-project/posture/collector/store"
)

// A statement that finds the database full can make SQLite roll back the
// whole transaction, not only the statement. The operations batched after
// it must not then run outside any transaction: each one's result says
// whether it was stored, and what is stored is whole (the report, its
// device's head and its event together).
func TestDatabaseFullMidBatch(t *testing.T) {
	s, _ := openTestStore(t)
	ids := []string{"dev-big", "dev-a", "dev-b"}
	for _, id := range ids {
		enrollTestDevice(t, s, id)
		openStream(t, s, id)
	}
	var pages int
	if err := s.w.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	// Room for small reports, none for a large one.
	if _, err := s.w.Exec(fmt.Sprintf(`PRAGMA max_page_count = %d`, pages+4)); err != nil {
		t.Fatal(err)
	}
	big := reportFor("dev-big", 1, "")
	big.Body = make([]byte, 1<<20)

	release := holdWriter(t, s)
	queued := s.queued.Load()
	results := make(map[string]chan error)
	for i, r := range []store.Report{big, reportFor("dev-a", 1, ""), reportFor("dev-b", 1, "")} {
		ch := make(chan error, 1)
		results[r.DeviceID] = ch
		go func() { ch <- appendReport(t, s, r) }()
		waitQueued(t, s, queued+int64(i)+1) // in this order, in one batch
	}
	release()

	errs := map[string]error{}
	for _, id := range ids {
		err := <-results[id]
		errs[id] = err
		n, cerr := s.CountReports(context.Background(), id)
		if cerr != nil {
			t.Fatal(cerr)
		}
		d, derr := s.Device(context.Background(), id)
		if derr != nil {
			t.Fatal(derr)
		}
		var events int
		if err := s.r.QueryRow(`SELECT count(*) FROM events WHERE device_id = ? AND kind = 'report'`, id).Scan(&events); err != nil {
			t.Fatal(err)
		}
		stored := err == nil
		t.Logf("%s: append: %v; %d reports, head %d, %d report events", id, err, n, d.LastSeq, events)
		if want := map[bool]int{true: 1, false: 0}[stored]; n != want || d.LastSeq != uint64(want) || events != want {
			t.Errorf("%s: append returned %v, yet %d reports, head %d and %d report events are stored", id, err, n, d.LastSeq, events)
		}
	}
	if errs["dev-big"] == nil {
		t.Error("a report larger than the database allows was stored")
	}
}
