package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/posture-project/posture/collector/store"
)

// fleetBoot reads a device's measured-boot reading as start-up sees it.
func fleetBoot(t *testing.T, s *Store, id string) []byte {
	t.Helper()
	var got []byte
	found := false
	if err := s.ScanFleet(context.Background(), 1, func(_ int, row *store.FleetRow) error {
		if row.ID == id {
			found, got = true, bytes.Clone(row.MeasuredBoot)
		}
		return nil
	}); err != nil || !found {
		t.Fatalf("ScanFleet: found %s = %v, %v", id, found, err)
	}
	return got
}

// A device's reading changes only with a head report that carries one;
// reports without one, and reports that do not become the head, leave it.
func TestAppendReportMeasuredBoot(t *testing.T) {
	s := openManual(t, filepath.Join(t.TempDir(), "posture.db"))
	enrollTestDevice(t, s, "dev-a")
	withBoot := func(r store.Report, boot string) store.Report { r.MeasuredBoot = []byte(boot); return r }
	steps := []struct {
		name string
		r    store.Report
		want string
	}{
		{"first report without a reading", reportFor("dev-a", 1, ""), ""},
		{"a report with a reading", withBoot(reportFor("dev-a", 2, ""), "boot A"), "boot A"},
		{"a report without one keeps it", reportFor("dev-a", 3, ""), "boot A"},
		{"another reading replaces it", withBoot(reportFor("dev-a", 4, ""), "boot B"), "boot B"},
		{"a repeat of a stored report changes nothing", withBoot(reportFor("dev-a", 4, ""), "boot C"), "boot B"},
		{"a next report without one keeps it", reportFor("dev-a", 5, ""), "boot B"},
	}
	for _, st := range steps {
		if err := appendReport(t, s, st.r); err != nil {
			t.Fatalf("%s: AppendReport: %v", st.name, err)
		}
		if got := fleetBoot(t, s, "dev-a"); string(got) != st.want || (st.want == "" && got != nil) {
			t.Errorf("%s: reading = %q, want %q", st.name, got, st.want)
		}
	}
}

// TestMigrateMeasuredBoot opens a database of schema version 3 and checks
// that its devices, heads and reports carry over, without a reading until
// a report brings one.
func TestMigrateMeasuredBoot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	db, err := sql.Open("sqlite3", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	setup := `PRAGMA page_size = 8192; PRAGMA journal_mode = WAL;
		CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;` +
		migrations[0] + migrations[1] + migrations[2] + `
		INSERT INTO meta VALUES ('schema_version', 3);
		INSERT INTO devices (id, hostname, platform, identity, identity_key, assurance, state, state_reason,
			enrolled_at, cert_serial, last_seq, last_digest, last_seen, tpm_clock, tpm_reset_count, reboots, last_report)
		VALUES ('dev-a', 'a', 'linux', 'tpm', x'01', 3, 1, '', 1, '01', 1, ?, 1700000001000000000, 500, 7, 1, 1);`
	r1 := reportFor("dev-a", 1, "")
	r1.Proof = []byte("quote with its event log")
	if _, err := db.Exec(setup, r1.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO reports (id, device_id, seq, digest, nonce, body, proof, received_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?);
		INSERT INTO report_history VALUES ('dev-a', 1, 1); UPDATE meta SET value = 1 WHERE key = 'history_through';`,
		r1.DeviceID, int64(r1.Seq), r1.Digest, r1.Nonce, r1.Body, r1.Proof, nanos(r1.ReceivedAt)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openManual(t, path)
	ctx := context.Background()
	var version int
	if err := s.r.QueryRow(`SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version); err != nil || version != len(migrations) || version < 5 {
		t.Fatalf("schema_version = %d, %v; want %d", version, err, len(migrations))
	}
	var head *store.Report
	if err := s.ScanFleet(ctx, 1, func(_ int, row *store.FleetRow) error {
		if row.MeasuredBoot != nil {
			t.Errorf("migrated device has a reading %q, want none", row.MeasuredBoot)
		}
		if row.Report != nil {
			r := *row.Report
			head = &r
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if head == nil || head.Seq != 1 || string(head.Proof) != string(r1.Proof) {
		t.Fatalf("migrated head report = %+v, want seq 1 with its proof", head)
	}
	r2 := reportFor("dev-a", 2, "")
	r2.MeasuredBoot = []byte("boot A")
	if err := appendReport(t, s, r2); err != nil {
		t.Fatal(err)
	}
	if got := fleetBoot(t, s, "dev-a"); string(got) != "boot A" {
		t.Errorf("reading after the next report = %q, want %q", got, "boot A")
	}
}
