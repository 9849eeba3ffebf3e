package postgres_test

import (
	"context"
	"testing"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/postgres"
	"github.com/posture-project/posture/collector/store/storetest"
	"github.com/posture-project/posture/internal/testtools"
)

// TestContract runs the store contract against a fresh database; the
// reopen function opens another Store on the same database, as a
// collector does after a restart.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, func(t *testing.T) store.Store) {
		dsn := testtools.Postgres(t)
		open := func(t *testing.T) store.Store { return open(t, dsn) }
		return open(t), open
	})
}

// open opens a Store on dsn; the caller closes it.
func open(t testing.TB, dsn string, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}
