package postgres_test

import (
	"testing"

	"github.com/posture-project/posture/internal/testtools"
)

// TestMain runs the tests with the PostgreSQL cluster they share, and
// stops it at the end.
func TestMain(m *testing.M) { testtools.PostgresMain(m) }
