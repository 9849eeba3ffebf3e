// Package postgres is the collector's store in a PostgreSQL database that
// several collectors share (store.Store documents the contract).
//
// Every method runs its own transaction on a connection pool, except
// AppendReport: reports are what collectors write most, so concurrent
// appends are queued and committed together, many to a transaction that
// reaches the server in one round trip (see writer.go). Every transaction
// that records an event also notifies the channel that Wake listens on, so
// collectors sharing the database learn of each other's changes at once.
package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/posture-project/posture/collector/store"
)

// Store is a PostgreSQL-backed store. It is safe for concurrent use, by
// any number of collector processes sharing the database.
type Store struct {
	pool *pgxpool.Pool

	// mu orders calls against Close: a call registers in calls while
	// holding it shared, so that Close, once it has set closed, waits for
	// exactly the calls that got in.
	mu     sync.RWMutex
	closed bool
	calls  sync.WaitGroup

	w writer // the group commit of AppendReport

	wake       chan struct{} // Wake's channel; buffered 1, sent to without blocking
	stopListen context.CancelFunc
	listenDone chan struct{}
	listenBack backoff
}

// Option changes how Open sets up a Store.
type Option func(*options)

type options struct {
	writers    int
	listenBack backoff
}

// Writers sets how many transactions of queued reports may be under way
// at once (default 1). More let one transaction execute while another
// waits for its commit to reach the disk, but every transaction that
// notifies holds PostgreSQL's notification lock until its commit is on
// disk, so their commits queue anyway: on a 2-core machine one writer,
// with larger transactions, appended as many reports per second as two.
func Writers(n int) Option {
	return func(o *options) { o.writers = max(1, n) }
}

// ListenBackoff sets how long the listener behind Wake waits before it
// connects again after losing its connection: first wait, doubling up to
// most (defaults 100ms and 10s).
func ListenBackoff(first, most time.Duration) Option {
	return func(o *options) { o.listenBack = backoff{first: first, most: max(first, most)} }
}

type backoff struct{ first, most time.Duration }

// readBuffer is the size of each connection's read buffer.
const readBuffer = 64 << 10

// Open connects to the database that dsn names (a PostgreSQL URL or
// key=value string, as libpq takes it, plus pgxpool's pool_* settings),
// brings its schema up to date, starts listening for other collectors'
// changes, and returns the store. Call Close when done.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	o := options{writers: 1, listenBack: backoff{first: 100 * time.Millisecond, most: 10 * time.Second}}
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the DSN, password included: leave it out.
		return nil, errors.New("open store: the PostgreSQL connection string is not valid; give a URL such as postgres://user:password@host:5432/posture or key=value settings such as 'host=db.example dbname=posture'")
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		// Room for the writers, a scan's parts and the readers at once.
		cfg.MaxConns = int32(max(8, 4*runtime.GOMAXPROCS(0)))
	}
	// Read from the server in larger chunks than pgx's 8 KiB: a fleet
	// scan reads a report per device, and every read is a system call.
	cfg.ConnConfig.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(bufio.NewReaderSize(r, readBuffer), w)
	}
	where := describe(cfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open store on %s: %w", where, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store: cannot reach PostgreSQL at %s; check that the server runs, accepts connections from this host and knows the user and database: %w", where, err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store on %s: %w", where, err)
	}
	s := &Store{pool: pool, wake: make(chan struct{}, 1), listenBack: o.listenBack}
	if err := s.startListening(ctx, cfg.ConnConfig); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store on %s: %w", where, err)
	}
	s.w.start(s, o.writers)
	return s, nil
}

// describe names the server and database cfg connects to, for messages.
func describe(cfg *pgx.ConnConfig) string {
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, strconv.Itoa(int(cfg.Port)))
	} else {
		host = fmt.Sprintf("%s/.s.PGSQL.%d", host, cfg.Port)
	}
	return fmt.Sprintf("%s (database %q, user %q)", host, cfg.Database, cfg.User)
}

// Close stops accepting calls, waits until every call under way has
// finished (an append already queued is committed or fails), and closes
// the connections. Later calls to any method return store.ErrClosed; a
// second Close returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	s.calls.Wait()
	s.w.stop()
	s.stopListen()
	<-s.listenDone
	s.pool.Close()
	return nil
}

// enter registers a call, or returns store.ErrClosed once Close has
// started. The caller calls leave when done.
func (s *Store) enter() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return store.ErrClosed
	}
	s.calls.Add(1)
	return nil
}

func (s *Store) leave() { s.calls.Done() }

// inTx runs fn in a transaction (READ COMMITTED, the server's default)
// and commits it when fn returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// read runs fn, which reads with s.pool, as a call.
func (s *Store) read(fn func() error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	return fn()
}

// nanos stores a time as Unix nanoseconds, as the SQLite store does, so
// that both keep times exactly; the zero time is 0, so that it survives a
// round trip.
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

// blob maps nil to an empty slice for the NOT NULL bytea columns, which
// pgx would otherwise bind as NULL.
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// nilIfEmpty makes a read-back empty bytea compare equal to the nil it was
// stored from.
func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// limitArg maps a negative limit (all) to NULL, which PostgreSQL reads as
// no limit; it refuses a negative one.
func limitArg(limit int) *int64 {
	if limit < 0 {
		return nil
	}
	n := int64(limit)
	return &n
}

var _ store.Store = (*Store)(nil)
