package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/collector/store/storetest"
)

// TestContract runs the store contract against a database file in a fresh
// directory.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, func(t *testing.T) store.Store) {
		path := filepath.Join(t.TempDir(), "posture.db")
		open := func(t *testing.T) store.Store {
			t.Helper()
			s, err := sqlite.Open(path)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return s
		}
		return open(t), open
	})
}

func openAt(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func enroll(t *testing.T, s store.Store, id string) {
	t.Helper()
	ctx := context.Background()
	tok := store.Token{Hash: []byte("token-" + id), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EnrollDevice(ctx, tok.Hash, time.Now(), store.Device{ID: id, Identity: "software", IdentityKey: []byte("k")}); err != nil {
		t.Fatal(err)
	}
}

// The database file and SQLite's -wal and -shm files are private, open
// and after a reopen.
func TestFileModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	s := openAt(t, path)
	enroll(t, s, "dev-a")
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, name)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkMode(t, path)
	s = openAt(t, path)
	defer s.Close()
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, name)
	}
}

func TestOpenNarrowsExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "posture.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	defer s.Close()
	checkMode(t, path)
}

func TestOpenPathNeedingEscapes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "odd ?#% dir")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "posture.db")
	s := openAt(t, path)
	enroll(t, s, "dev-a")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the given path: %v", err)
	}
}

func checkMode(t *testing.T, name string) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Errorf("stat: %v", err)
		return
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("%s: mode %04o, want 0600", filepath.Base(name), mode)
	}
}
