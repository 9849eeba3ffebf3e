package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// deviceExists returns store.ErrNotFound for a device never enrolled.
func deviceExists(tx *sql.Tx, id string) error {
	var one int
	err := tx.QueryRow(`SELECT 1 FROM devices WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	return err
}

// RequestMeasurement records an EventMeasureRequested for a device.
func (s *Store) RequestMeasurement(ctx context.Context, deviceID string, now time.Time) (store.Event, error) {
	var ev store.Event
	err := s.submit(ctx, func(tx *sql.Tx) error {
		ev = store.Event{Kind: store.EventMeasureRequested, DeviceID: deviceID}
		if err := deviceExists(tx, deviceID); err != nil {
			return err
		}
		return insertEvent(tx, &ev, now, 0)
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("request a measurement of device %s: %w", deviceID, err)
	}
	return ev, nil
}

// AddBrowserCert records the newest browser certificate of a user of a
// device.
func (s *Store) AddBrowserCert(ctx context.Context, c store.BrowserCert) (store.Event, error) {
	var ev store.Event
	err := s.submit(ctx, func(tx *sql.Tx) error {
		ev = store.Event{Kind: store.EventBrowserCert, DeviceID: c.DeviceID, BrowserCert: &c}
		if err := deviceExists(tx, c.DeviceID); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO browser_certs (device_id, user_name, serial, key_sha256, issued_under, issued_under_key, issued_at, not_after)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (device_id, user_name) DO UPDATE SET serial = excluded.serial, key_sha256 = excluded.key_sha256,
				issued_under = excluded.issued_under, issued_under_key = excluded.issued_under_key, issued_at = excluded.issued_at, not_after = excluded.not_after`,
			c.DeviceID, c.User, c.Serial, c.KeySHA256, c.IssuedUnder, c.IssuedUnderKeySHA256, nanos(c.IssuedAt), nanos(c.NotAfter)); err != nil {
			return err
		}
		return insertEvent(tx, &ev, c.IssuedAt, 0)
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("record the browser certificate of %s on device %s: %w", c.User, c.DeviceID, err)
	}
	return ev, nil
}

// BrowserCerts lists the browser certificates not expired at now.
func (s *Store) BrowserCerts(ctx context.Context, now time.Time) ([]store.BrowserCert, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT device_id, user_name, serial, key_sha256, issued_under, issued_under_key, issued_at, not_after
		FROM browser_certs WHERE not_after > ? ORDER BY device_id, user_name`, nanos(now))
	if err != nil {
		return nil, fmt.Errorf("browser certificates: %w", err)
	}
	defer rows.Close()
	var out []store.BrowserCert
	for rows.Next() {
		var c store.BrowserCert
		var issued, notAfter int64
		if err := rows.Scan(&c.DeviceID, &c.User, &c.Serial, &c.KeySHA256, &c.IssuedUnder, &c.IssuedUnderKeySHA256, &issued, &notAfter); err != nil {
			return nil, fmt.Errorf("browser certificates: %w", err)
		}
		c.IssuedAt, c.NotAfter = fromNanos(issued), fromNanos(notAfter)
		out = append(out, c)
	}
	return out, rows.Err()
}
