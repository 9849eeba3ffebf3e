package sqlite

import (
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// TestMigrateEvents opens a database of schema version 7 and checks that
// event IDs continue above the watch revisions the collector gave out
// before, that its decision log carries over as the "local" collector's,
// and that its devices report on numbered streams.
func TestMigrateEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	db, err := sql.Open("sqlite3", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	setup := `PRAGMA page_size = 8192; PRAGMA journal_mode = WAL;
		CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;`
	for _, m := range migrations[:7] {
		setup += m
	}
	setup += `INSERT INTO meta VALUES ('schema_version', 7);
		INSERT INTO meta VALUES ('watch_base', 1764000000000000);
		INSERT INTO devices (id, hostname, platform, identity, identity_key, assurance, state, state_reason, enrolled_at, cert_serial)
		VALUES ('dev-a', 'a', 'linux', 'software', x'01', 1, 1, '', 1, '01');
		INSERT INTO decisions VALUES (41, 1, 2, 3, 'dev-a', 'basic', 'gateway edge-1', 1, 70, 1, x'');`
	if _, err := db.Exec(setup); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openManual(t, path)
	ctx := context.Background()
	last, err := s.LastEventID(ctx)
	if err != nil || last != 1764000000000000+1<<40 {
		t.Errorf("LastEventID after migration = %d, %v; want the old watch base + 2^40", last, err)
	}
	ev, err := s.SetDeviceState(ctx, "dev-a", store.StateSuspect, "test", time.Now())
	if err != nil || ev.ID != last+1 {
		t.Errorf("first event after migration: %d, %v; want %d", ev.ID, err, last+1)
	}
	ds, err := s.Decisions(ctx, "local", 10)
	if err != nil || len(ds) != 1 || ds[0].Seq != 41 || ds[0].Caller != "gateway edge-1" {
		t.Errorf("decisions of the local collector: %+v, %v; want record 41", ds, err)
	}
	h, err := s.OpenReportStream(ctx, "dev-a")
	if err != nil || h.Stream != 1 || h.LastDigest != nil {
		t.Errorf("first stream after migration: %+v, %v", h, err)
	}
}
