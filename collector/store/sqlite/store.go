// Package sqlite is the collector's store in a SQLite database file: the
// default, for one collector (store.Store documents the contract).
//
// All writes go through one writer goroutine that owns the only write
// connection and groups queued operations into shared transactions, because
// SQLite commits, not rows, are what limit write throughput. Reads use a
// separate connection pool and, in WAL mode, never wait for the writer.
package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	// Registers the "sqlite3" database/sql driver.
	_ "github.com/mattn/go-sqlite3"

	"github.com/posture-project/posture/collector/store"
)

// Device states, as this package compares them.
const (
	stateActive  = store.StateActive
	stateRevoked = store.StateRevoked
	statePending = store.StatePending
)

// Store is a SQLite-backed store. It is safe for concurrent use.
type Store struct {
	w *sql.DB // exactly one connection, used only by the writer goroutine
	r *sql.DB // read-only pool

	// mu orders submissions against Close: senders hold it shared while
	// they enqueue, so Close can close ops without racing a send.
	mu     sync.RWMutex
	closed bool
	ops    chan *op
	done   chan struct{} // closed when the writer goroutine has exited

	closing atomic.Bool // lets reads fail fast with store.ErrClosed

	// Owned by the writer goroutine (see history.go).
	timing         historyTiming
	historyThrough int64             // highest report ID the history covers
	tail           map[tailKey]int64 // reports appended since the last history pass, by ID; entries of rolled-back appends may linger
	historyAt      time.Time         // last history pass

	// Counters read by tests to observe batching, and failed history passes.
	queued          atomic.Int64
	batches         atomic.Int64
	historyFailures atomic.Int64
}

const (
	// busyTimeout bounds how long a connection waits for a lock held by
	// another connection (a checkpoint, or a second process) before failing.
	busyTimeout = 5 * time.Second
	// pageSize takes effect only for a new database: SQLite cannot change
	// the page size of a WAL database without a VACUUM.
	pageSize = 8192
	// stmtCacheSize is per connection; it spares re-preparing the few
	// statements the store uses on every call.
	stmtCacheSize = 32
)

// Open opens the database at path, creating it (mode 0600) and its schema
// if needed, and starts the writer. The parent directory must exist. Call
// Close when done.
func Open(path string) (*Store, error) {
	return open(path, defaultHistoryTiming)
}

func open(path string, timing historyTiming) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := createPrivate(abs); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}

	w, err := sql.Open("sqlite3", dsn(abs, url.Values{
		"_foreign_keys": {"on"},
		"_synchronous":  {"FULL"},      // an acknowledged report survives a power cut: the log is flushed at every commit
		"_txlock":       {"immediate"}, // take the write lock at BEGIN, never mid-transaction
	}))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	if err := initialize(w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	// SQLite gives -wal and -shm the database file's mode; this also
	// repairs files left with a wider mode by an earlier process.
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Chmod(abs+suffix, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.Close()
			return nil, fmt.Errorf("open store: %w", err)
		}
	}

	r, err := sql.Open("sqlite3", dsn(abs, url.Values{
		"_query_only": {"on"},
	}))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	if err := r.Ping(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}

	s := &Store{
		w:      w,
		r:      r,
		ops:    make(chan *op, maxBatch),
		done:   make(chan struct{}),
		timing: timing,
	}
	if err := s.startHistory(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	go s.run()
	return s, nil
}

// Close stops accepting writes, waits until every operation already queued
// has been committed or has failed, and closes the database. Later calls to
// any method return store.ErrClosed; a second Close returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.closing.Store(true)
	close(s.ops)
	s.mu.Unlock()

	<-s.done
	// Close the writer last: the last connection to close checkpoints the
	// WAL into the database file and removes it.
	if err := errors.Join(s.r.Close(), s.w.Close()); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// createPrivate creates the database file with mode 0600, or narrows the
// mode of an existing one, independent of the process umask.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// dsn builds a SQLite URI for path. Escaping the path keeps characters such
// as '?' and '#' in directory names from being read as URI syntax.
func dsn(path string, params url.Values) string {
	params.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
	params.Set("_stmt_cache_size", fmt.Sprint(stmtCacheSize))
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(path), RawQuery: params.Encode()}
	return u.String()
}

// readable reports store.ErrClosed once Close has started, so reads do not fail
// with the database/sql error for a closed pool.
func (s *Store) readable() error {
	if s.closing.Load() {
		return store.ErrClosed
	}
	return nil
}

// nanos stores the zero time as 0 so that it survives a round trip.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// blob maps nil to an empty slice: the driver binds nil as NULL, which the
// NOT NULL blob columns reject.
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// nilIfEmpty makes a read-back empty blob compare equal to the nil it was
// stored from.
func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

var _ store.Store = (*Store)(nil)
