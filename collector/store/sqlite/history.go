package sqlite

import (
	"fmt"
	"time"
)

// The history (table report_history) indexes the report log by device and
// sequence number. The writer fills it in batches rather than with every
// report: one batch writes each device's index page once for all of that
// device's new reports, and keeps that page off the commit an agent waits
// for. Reads add the reports the history does not cover yet, the log past
// meta's history_through, which is a few seconds' worth at most.
type historyTiming struct {
	every time.Duration // index at least this often while reports arrive
	batch int           // or as soon as this many wait
	idle  time.Duration // or once the writer has been idle this long
}

var defaultHistoryTiming = historyTiming{every: time.Second, batch: 4096, idle: 100 * time.Millisecond}

// tailKey names a report appended since the last history pass.
type tailKey struct {
	device string
	seq    int64
}

// historyDue reports whether the reports waiting for the history should be
// indexed now, after a commit.
func (s *Store) historyDue() bool {
	return len(s.tail) >= s.timing.batch || (len(s.tail) > 0 && time.Since(s.historyAt) >= s.timing.every)
}

// indexHistory adds every report past history_through to the history, in
// a transaction of its own. It runs on the writer goroutine; a failure
// leaves the reports to the next pass, and reads still find them.
func (s *Store) indexHistory() {
	s.historyAt = time.Now()
	if err := s.tryIndexHistory(); err != nil {
		s.historyFailures.Add(1)
		return
	}
	clear(s.tail)
}

func (s *Store) tryIndexHistory() (err error) {
	tx, err := s.w.Begin()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	var end int64
	if err := tx.QueryRow(`SELECT coalesce(max(id), 0) FROM reports`).Scan(&end); err != nil {
		return err
	}
	if end <= s.historyThrough {
		return tx.Rollback()
	}
	// In index order, so each index page is visited once.
	if _, err := tx.Exec(`INSERT OR IGNORE INTO report_history (device_id, seq, report_id)
		SELECT device_id, seq, id FROM reports WHERE id > ? AND id <= ? ORDER BY device_id, seq`,
		s.historyThrough, end); err != nil {
		return fmt.Errorf("index reports: %w", err)
	}
	if _, err := tx.Exec(`UPDATE meta SET value = ? WHERE key = 'history_through'`, end); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.historyThrough = end
	return nil
}

// startHistory reads how far the history reaches and indexes what a
// previous process left unindexed, before the writer starts: the writer
// knows the reports past the history only from s.tail, which starts empty.
func (s *Store) startHistory() error {
	s.tail = make(map[tailKey]int64)
	if err := s.w.QueryRow(`SELECT value FROM meta WHERE key = 'history_through'`).Scan(&s.historyThrough); err != nil {
		return fmt.Errorf("read report history state: %w", err)
	}
	if err := s.tryIndexHistory(); err != nil {
		return fmt.Errorf("index report history: %w", err)
	}
	s.historyAt = time.Now()
	return nil
}

// HistoryFailures is how many history passes have failed since Open. The
// reports they left are read from the log until a later pass indexes them.
func (s *Store) HistoryFailures() int64 { return s.historyFailures.Load() }
