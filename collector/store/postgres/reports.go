package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// OpenReportStream starts a report stream of a device and returns its
// number with the device's chain head.
func (s *Store) OpenReportStream(ctx context.Context, deviceID string) (store.StreamHead, error) {
	var h store.StreamHead
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var (
			state      int32
			epoch, seq int64
			digest     []byte
		)
		err := tx.QueryRow(ctx, `UPDATE devices SET stream_epoch = stream_epoch + 1 WHERE id = $1
			RETURNING state, stream_epoch, last_seq, last_digest`, deviceID).Scan(&state, &epoch, &seq, &digest)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		case state == store.StateRevoked:
			return store.ErrDeviceRevoked // and the transaction rolls back
		}
		h = store.StreamHead{Stream: uint64(epoch), LastSeq: uint64(seq), LastDigest: nilIfEmpty(digest)}
		return nil
	})
	if err != nil {
		return store.StreamHead{}, fmt.Errorf("open report stream of device %s: %w", deviceID, err)
	}
	return h, nil
}

// AppendReport stores r as its device's new chain head, by compare-and-set
// on the device's newest stream and head, with its event. It is queued
// for the writer, which commits it with the appends queued alongside (see
// writer); a report that did not move the head there is looked at again
// alone, to find out why.
func (s *Store) AppendReport(ctx context.Context, r store.Report) (store.Event, error) {
	if r.Seq > math.MaxInt64 || r.Stream > math.MaxInt64 {
		return store.Event{}, fmt.Errorf("append report %s/%d: sequence or stream number exceeds the storable range", r.DeviceID, r.Seq)
	}
	ev, err := s.appendReport(ctx, &r)
	if err != nil {
		return store.Event{}, fmt.Errorf("append report %s/%d: %w", r.DeviceID, r.Seq, err)
	}
	return ev, nil
}

func (s *Store) appendReport(ctx context.Context, r *store.Report) (store.Event, error) {
	if err := ctx.Err(); err != nil {
		return store.Event{}, err
	}
	if err := s.enter(); err != nil {
		return store.Event{}, err
	}
	defer s.leave()
	ev := store.Event{Kind: store.EventReport, DeviceID: r.DeviceID, Report: r}
	data, err := store.EncodeEventData(ev)
	if err != nil {
		return store.Event{}, err
	}
	o := &appendOp{ctx: ctx, r: r, data: data, done: make(chan appendOutcome, 1)}
	select {
	case s.w.ops <- o:
	case <-ctx.Done():
		return store.Event{}, ctx.Err()
	}
	// Once queued, wait regardless of ctx: the outcome says whether the
	// report was committed.
	out := <-o.done
	if out.err != nil {
		return store.Event{}, out.err
	}
	id := out.event
	if id == 0 {
		if id, err = s.appendAlone(ctx, r, data); err != nil || id == 0 {
			return store.Event{}, err
		}
	}
	ev.ID, ev.At = uint64(id), r.ReceivedAt.UTC()
	return ev, nil
}

// appendAlone appends r in a transaction of its own: for a report whose
// shared transaction failed, or that did not move its device's head by
// compare-and-set. With the device's row locked it decides again: either
// r continues the head now, and is appended, or store.AppendRefusal says
// why not from what is stored. It returns the event's ID, or 0 with a nil
// error when the very same report is stored already.
func (s *Store) appendAlone(ctx context.Context, r *store.Report, data []byte) (int64, error) {
	var id int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var (
			state               int32
			stream, lastSeq     int64
			lastDigest, current []byte
		)
		err := tx.QueryRow(ctx, `SELECT state, stream_epoch, last_seq, last_digest FROM devices WHERE id = $1 FOR UPDATE`,
			r.DeviceID).Scan(&state, &stream, &lastSeq, &lastDigest)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		}
		hasHead := lastDigest != nil
		if state != store.StateRevoked && uint64(stream) == r.Stream && store.Continues(hasHead, uint64(lastSeq), nilIfEmpty(lastDigest), *r) {
			var got *int64
			if err := tx.QueryRow(ctx, appendSQL, appendArgs(r, data)...).Scan(&got); err != nil {
				return err
			}
			if got == nil {
				return errors.New("the device's head did not move although the report continues it")
			}
			id = *got
			_, err := tx.Exec(ctx, notifySQL)
			return err
		}
		err = tx.QueryRow(ctx, `SELECT digest FROM reports WHERE device_id = $1 AND seq = $2`, r.DeviceID, int64(r.Seq)).Scan(&current)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			current = nil
		case err != nil:
			return err
		default:
			current = blob(current) // stored, even if empty
		}
		return store.AppendRefusal(state, uint64(stream), uint64(lastSeq), nilIfEmpty(lastDigest), hasHead, current, *r)
	})
	return id, err
}

const reportColumns = `r.device_id, r.seq, r.digest, r.nonce, r.body, r.proof, r.received_at`

// Reports returns up to limit reports of a device, newest (highest
// sequence number) first; limit <= 0 means all. An unknown device has no
// reports.
func (s *Store) Reports(ctx context.Context, deviceID string, limit int) ([]store.Report, error) {
	var reports []store.Report
	err := s.read(func() error {
		all := limitArg(-1)
		if limit > 0 {
			all = limitArg(limit)
		}
		rows, err := s.pool.Query(ctx, `SELECT `+reportColumns+` FROM reports r
			WHERE r.device_id = $1 ORDER BY r.seq DESC LIMIT $2`, deviceID, all)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanReport(rows)
			if err != nil {
				return err
			}
			reports = append(reports, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("reports of device %s: %w", deviceID, err)
	}
	return reports, nil
}

// CountReports returns how many reports of a device are stored.
func (s *Store) CountReports(ctx context.Context, deviceID string) (int, error) {
	var n int
	err := s.read(func() error {
		return s.pool.QueryRow(ctx, `SELECT count(*) FROM reports WHERE device_id = $1`, deviceID).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("count reports of device %s: %w", deviceID, err)
	}
	return n, nil
}

// LatestReport returns the head report of a device, or store.ErrNotFound
// when it has none.
func (s *Store) LatestReport(ctx context.Context, deviceID string) (store.Report, error) {
	var r store.Report
	err := s.read(func() (err error) {
		r, err = scanReport(s.pool.QueryRow(ctx, `SELECT `+reportColumns+`
			FROM devices d JOIN reports r ON r.id = d.last_report WHERE d.id = $1`, deviceID))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Report{}, fmt.Errorf("latest report of device %s: %w", deviceID, store.ErrNotFound)
	}
	if err != nil {
		return store.Report{}, fmt.Errorf("latest report of device %s: %w", deviceID, err)
	}
	return r, nil
}

func scanReport(row pgx.Row) (store.Report, error) {
	var (
		r             store.Report
		seq, received int64
	)
	if err := row.Scan(&r.DeviceID, &seq, &r.Digest, &r.Nonce, &r.Body, &r.Proof, &received); err != nil {
		return store.Report{}, err
	}
	r.Seq, r.ReceivedAt = uint64(seq), fromNanos(received)
	r.Digest, r.Nonce = nilIfEmpty(r.Digest), nilIfEmpty(r.Nonce)
	r.Body, r.Proof = nilIfEmpty(r.Body), nilIfEmpty(r.Proof)
	return r, nil
}

// PruneReports deletes reports received before cutoff, in the order they
// were stored (by ID) from the report after ID from, looking at limit
// reports at most; it never deletes a device's head report. The pass ends
// at the first report received at or after cutoff; one received earlier
// than a report before it (the collector's clock stepped back) waits for
// a later pass.
func (s *Store) PruneReports(ctx context.Context, cutoff time.Time, from int64, limit int) (store.PruneProgress, error) {
	if limit <= 0 {
		return store.PruneProgress{}, fmt.Errorf("prune reports: limit %d must be positive", limit)
	}
	var p store.PruneProgress
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		p = store.PruneProgress{Next: from}
		// A head report stays a head until a later report replaces it,
		// and a report that is not a head never becomes one: what this
		// snapshot reads as not a head may be deleted.
		rows, err := tx.Query(ctx, `SELECT r.id, r.received_at, coalesce(d.last_report = r.id, false)
			FROM reports r LEFT JOIN devices d ON d.id = r.device_id
			WHERE r.id > $1 ORDER BY r.id LIMIT $2`, from, limit)
		if err != nil {
			return err
		}
		var (
			doomed   []int64
			n        int
			id, recv int64
			head     bool
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &recv, &head}, func() error {
			n++
			if p.Done {
				return nil
			}
			if recv >= nanos(cutoff) {
				p.Done = true
				return nil
			}
			p.Next = id
			if !head {
				doomed = append(doomed, id)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n < limit {
			p.Done = true // nothing more may be pruned now
		}
		if len(doomed) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM reports WHERE id = ANY($1)`, doomed); err != nil {
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
