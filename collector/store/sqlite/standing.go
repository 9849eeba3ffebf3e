package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// readStanding reads a device's recorded standing within tx; a device
// without one has the zero standing.
func readStanding(tx *sql.Tx, id string) (store.Standing, error) {
	var data []byte
	err := tx.QueryRow(`SELECT data FROM standings WHERE device_id = ?`, id).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Standing{}, nil
	}
	if err != nil {
		return store.Standing{}, err
	}
	return store.DecodeStanding(data)
}

// writeStanding records a device's standing within tx.
func writeStanding(tx *sql.Tx, id string, st store.Standing) error {
	data, err := store.EncodeStanding(st)
	if err != nil {
		return err
	}
	if data == nil {
		_, err = tx.Exec(`DELETE FROM standings WHERE device_id = ?`, id)
		return err
	}
	_, err = tx.Exec(`INSERT INTO standings (device_id, data) VALUES (?, ?)
		ON CONFLICT (device_id) DO UPDATE SET data = excluded.data`, id, data)
	return err
}

// loseLevels applies store.StandingInState to a device whose state is
// now state, within tx: a device that is no longer active loses its
// levels with the change. It sets ev.Standing when the standing changed
// and returns the standing as it was.
func loseLevels(tx *sql.Tx, ev *store.Event, state int32) (prev store.Standing, err error) {
	if prev, err = readStanding(tx, ev.DeviceID); err != nil {
		return prev, err
	}
	next, changed := store.StandingInState(prev, state)
	if !changed {
		return prev, nil
	}
	if err := writeStanding(tx, ev.DeviceID, next); err != nil {
		return prev, err
	}
	ev.Standing = &next
	return prev, nil
}

// RecordStanding replaces a device's recorded standing by compare-and-set
// on prev, with its event and messages.
func (s *Store) RecordStanding(ctx context.Context, id string, prev, next store.Standing, reasons map[string]string, now time.Time) (store.Event, error) {
	var ev store.Event
	err := s.submit(ctx, func(tx *sql.Tx) error {
		d, err := scanDevice(tx.QueryRow(selectDevice+` WHERE id = ?`, id))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return store.ErrNotFound
		case err != nil:
			return err
		}
		stored, err := readStanding(tx, id)
		if err != nil {
			return err
		}
		if !stored.Equal(prev) {
			return store.ErrStandingChanged
		}
		next, _ := store.StandingInState(next.Normalize(), d.State)
		if stored.Equal(next) {
			ev = store.Event{}
			return nil
		}
		if err := writeStanding(tx, id, next); err != nil {
			return err
		}
		ev = store.Event{Kind: store.EventStanding, DeviceID: id, Device: &d, Standing: &next, Reasons: reasons}
		return recordEvent(tx, &ev, now, stored)
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("record standing of device %s: %w", id, err)
	}
	return ev, nil
}

// Standings calls fn with every device's recorded standing.
func (s *Store) Standings(ctx context.Context, fn func(id string, st store.Standing) error) error {
	if err := s.readable(); err != nil {
		return err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT device_id, data FROM standings ORDER BY device_id`)
	if err != nil {
		return fmt.Errorf("read standings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id   string
			data []byte
		)
		if err := rows.Scan(&id, &data); err != nil {
			return fmt.Errorf("read standings: %w", err)
		}
		st, err := store.DecodeStanding(data)
		if err != nil {
			return fmt.Errorf("standing of device %s: %w", id, err)
		}
		if err := fn(id, st); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read standings: %w", err)
	}
	return nil
}
