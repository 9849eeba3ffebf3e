package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// TestMigrateCertKeys opens a database of schema version 8, whose device
// certificates have no key hash, and checks that its device keeps its
// certificate serial without one, that the first key to claim the serial
// is recorded, and that a renewal records the new certificate's key.
func TestMigrateCertKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	db, err := sql.Open("sqlite3", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	setup := `PRAGMA page_size = 8192; PRAGMA journal_mode = WAL;
		CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;`
	for _, m := range migrations[:8] {
		setup += m
	}
	setup += `INSERT INTO meta VALUES ('schema_version', 8);
		INSERT INTO devices (id, hostname, platform, identity, identity_key, assurance, state, state_reason, enrolled_at, cert_serial)
		VALUES ('dev-a', 'a', 'linux', 'software', x'01', 1, 1, '', 1, '1f');`
	if _, err := db.Exec(setup); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openManual(t, path)
	ctx := context.Background()
	d, err := s.Device(ctx, "dev-a")
	if err != nil || d.CertSerial != "1f" || d.CertKeySHA256 != nil || d.PrevCertKeySHA256 != nil {
		t.Fatalf("device after migration: serial %q, keys %x %x, %v; want 1f without keys", d.CertSerial, d.CertKeySHA256, d.PrevCertKeySHA256, err)
	}
	var row store.FleetRow
	if err := s.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error { row = *r; return nil }); err != nil || row.CertKeySHA256 != nil {
		t.Errorf("fleet row after migration: key %x, %v; want none", row.CertKeySHA256, err)
	}
	key := sha256.Sum256([]byte("the device's TLS key"))
	if _, ev, err := s.BindCertKey(ctx, "dev-a", store.Cert{Serial: "1f", KeySHA256: key[:]}, time.Now()); err != nil || ev.ID == 0 {
		t.Fatalf("BindCertKey after migration: event %d, %v", ev.ID, err)
	}
	next := sha256.Sum256([]byte("the renewed TLS key"))
	d, _, err = s.RenewCertificate(ctx, "dev-a", store.Cert{Serial: "1f", KeySHA256: key[:]}, store.Cert{Serial: "20", KeySHA256: next[:]}, time.Now())
	if err != nil || !bytes.Equal(d.CertKeySHA256, next[:]) || !bytes.Equal(d.PrevCertKeySHA256, key[:]) {
		t.Errorf("renewal after migration: %+v, %v; want both keys recorded", d, err)
	}
}
