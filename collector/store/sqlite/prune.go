package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// PruneReports deletes reports received before cutoff, in log order from
// the report after ID from, looking at limit reports at most. A pass starts
// from 0 and calls again from Next until Done; each call is one operation
// of the writer, so reports keep being stored in between.
//
// It never deletes a device's head report (the latest posture, which start
// up and GetDevicePosture read and the chain continues from), the newest
// report of the log (its ID would be given out again), or a report the
// history does not index yet. The log is in arrival order, so the pass
// ends at the first report received at or after cutoff; a report received
// earlier than one before it (the collector's clock stepped back) waits
// for a later pass.
func (s *Store) PruneReports(ctx context.Context, cutoff time.Time, from int64, limit int) (store.PruneProgress, error) {
	if limit <= 0 {
		return store.PruneProgress{}, fmt.Errorf("prune reports: limit %d must be positive", limit)
	}
	var p store.PruneProgress
	err := s.submit(ctx, func(tx *sql.Tx) error {
		p = store.PruneProgress{Next: from} // this function may run again: start over
		type row struct {
			id, seq int64
			device  string
		}
		var doomed []row
		rows, err := tx.Query(`SELECT r.id, r.device_id, r.seq, r.received_at, coalesce(d.last_report = r.id, 0)
			FROM reports r LEFT JOIN devices d ON d.id = r.device_id
			WHERE r.id > ?1 AND r.id <= ?2 AND r.id < (SELECT max(id) FROM reports)
			ORDER BY r.id LIMIT ?3`, from, s.historyThrough, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var (
				r        row
				received int64
				head     bool
			)
			if err := rows.Scan(&r.id, &r.device, &r.seq, &received, &head); err != nil {
				return err
			}
			n++
			if received >= nanos(cutoff) {
				p.Done = true
				break
			}
			p.Next = r.id
			if !head {
				doomed = append(doomed, r)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		if n < limit {
			p.Done = true // nothing more may be pruned now
		}
		for _, r := range doomed {
			if _, err := tx.Exec(`DELETE FROM report_history WHERE device_id = ? AND seq = ? AND report_id = ?`, r.device, r.seq, r.id); err != nil {
				return err
			}
			if _, err := tx.Exec(`DELETE FROM reports WHERE id = ?`, r.id); err != nil {
				return err
			}
		}
		p.Pruned = len(doomed)
		return nil
	})
	if err != nil {
		return store.PruneProgress{}, fmt.Errorf("prune reports: %w", err)
	}
	return p, nil
}
