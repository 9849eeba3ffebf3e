package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
)

// readStanding reads a device's recorded standing within tx; a device
// without one has the zero standing. The caller holds the device's row
// lock, which every change of a standing takes first.
func readStanding(ctx context.Context, tx pgx.Tx, id string) (store.Standing, error) {
	var data []byte
	err := tx.QueryRow(ctx, `SELECT data FROM standings WHERE device_id = $1`, id).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Standing{}, nil
	}
	if err != nil {
		return store.Standing{}, err
	}
	return store.DecodeStanding(data)
}

// writeStanding records a device's standing within tx.
func writeStanding(ctx context.Context, tx pgx.Tx, id string, st store.Standing) error {
	data, err := store.EncodeStanding(st)
	if err != nil {
		return err
	}
	if data == nil {
		_, err = tx.Exec(ctx, `DELETE FROM standings WHERE device_id = $1`, id)
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO standings (device_id, data) VALUES ($1, $2)
		ON CONFLICT (device_id) DO UPDATE SET data = excluded.data`, id, data)
	return err
}

// loseLevels applies store.StandingInState to a device whose state is now
// state, within tx: a device that is no longer active loses its levels
// with the change. It sets ev.Standing when the standing changed and
// returns the standing as it was.
func loseLevels(ctx context.Context, tx pgx.Tx, ev *store.Event, state int32) (prev store.Standing, err error) {
	if prev, err = readStanding(ctx, tx, ev.DeviceID); err != nil {
		return prev, err
	}
	next, changed := store.StandingInState(prev, state)
	if !changed {
		return prev, nil
	}
	if err := writeStanding(ctx, tx, ev.DeviceID, next); err != nil {
		return prev, err
	}
	ev.Standing = &next
	return prev, nil
}

// RecordStanding replaces a device's recorded standing by compare-and-set
// on prev, with its event and messages.
func (s *Store) RecordStanding(ctx context.Context, id string, prev, next store.Standing, reasons map[string]string, now time.Time) (store.Event, error) {
	var ev store.Event
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		d, err := scanDevice(tx.QueryRow(ctx, selectDevice+` WHERE id = $1 FOR UPDATE`, id))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		}
		stored, err := readStanding(ctx, tx, id)
		if err != nil {
			return err
		}
		if !stored.Equal(prev) {
			return store.ErrStandingChanged
		}
		next, _ := store.StandingInState(next.Normalize(), d.State)
		if stored.Equal(next) {
			return nil
		}
		if err := writeStanding(ctx, tx, id, next); err != nil {
			return err
		}
		ev = store.Event{Kind: store.EventStanding, DeviceID: id, Device: &d, Standing: &next, Reasons: reasons}
		return recordEvent(ctx, tx, &ev, now, stored)
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("record standing of device %s: %w", id, err)
	}
	return ev, nil
}

// Standings calls fn with every device's recorded standing.
func (s *Store) Standings(ctx context.Context, fn func(id string, st store.Standing) error) error {
	err := s.read(func() error {
		rows, err := s.pool.Query(ctx, `SELECT device_id, data FROM standings ORDER BY device_id`)
		if err != nil {
			return err
		}
		var (
			id   string
			data []byte
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &data}, func() error {
			st, err := store.DecodeStanding(data)
			if err != nil {
				return fmt.Errorf("standing of device %s: %w", id, err)
			}
			return fn(id, st)
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("read standings: %w", err)
	}
	return nil
}
