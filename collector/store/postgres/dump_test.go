package postgres_test

import (
	"path/filepath"
	"testing"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/collector/store/storetest"
	"github.com/posture-project/posture/internal/testtools"
)

func openPostgres(t *testing.T) (store.Store, func(t *testing.T) store.Store) {
	dsn := testtools.Postgres(t)
	open := func(t *testing.T) store.Store { return open(t, dsn) }
	return open(t), open
}

func openSQLite(t *testing.T) (store.Store, func(t *testing.T) store.Store) {
	path := filepath.Join(t.TempDir(), "posture.db")
	open := func(t *testing.T) store.Store {
		s, err := sqlite.Open(path)
		if err != nil {
			t.Fatalf("open SQLite store: %v", err)
		}
		return s
	}
	return open(t), open
}

// A collector moves from SQLite to PostgreSQL, and back.
func TestDumpLoad(t *testing.T) {
	t.Run("sqlite to postgres", func(t *testing.T) { storetest.RunDumpLoad(t, openSQLite, openPostgres) })
	t.Run("postgres to sqlite", func(t *testing.T) { storetest.RunDumpLoad(t, openPostgres, openSQLite) })
	t.Run("postgres to postgres", func(t *testing.T) { storetest.RunDumpLoad(t, openPostgres, openPostgres) })
	t.Run("sqlite to sqlite", func(t *testing.T) { storetest.RunDumpLoad(t, openSQLite, openSQLite) })
}
