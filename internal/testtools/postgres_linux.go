//go:build linux

package testtools

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresMain runs a test binary's tests and then stops the PostgreSQL
// cluster that Postgres started, if any, and removes its files; then it
// runs each of after (the test binary's own clean-up). A package
// whose tests call Postgres calls it from TestMain:
//
//	func TestMain(m *testing.M) { testtools.PostgresMain(m) }
func PostgresMain(m *testing.M, after ...func()) {
	pg.main.Store(true)
	code := m.Run()
	pg.stop()
	for _, f := range after {
		f()
	}
	os.Exit(code)
}

// Postgres returns the connection string of a new, empty database for
// the test, on a PostgreSQL cluster that the test binary starts on first
// use (initdb and postgres from Debian's postgresql package, as user
// postgres, or nobody, when the tests run as root) and shares among its
// tests. The cluster listens on a free loopback port; it keeps fsync and
// synchronous commits on, and gives the server the memory and WAL room of
// a small production server (shared_buffers 512MB, max_wal_size 4GB)
// rather than initdb's minimal defaults, so that benchmarks measure the
// store, not a starved server. The database is
// dropped when the test ends. The test binary must run its tests through
// PostgresMain. Without PostgreSQL installed the test is skipped (fails
// when RequireEnv is 1).
func Postgres(t testing.TB) string {
	t.Helper()
	if !pg.main.Load() {
		t.Fatal("testtools.Postgres: the package's TestMain must run the tests with testtools.PostgresMain(m), which stops the cluster at the end")
	}
	pg.once.Do(pg.start)
	if pg.missing != "" {
		missing(t, pg.missing)
	}
	if pg.err != nil {
		t.Fatalf("start PostgreSQL: %v", pg.err)
	}
	name := fmt.Sprintf("test_%d", pg.databases.Add(1))
	if err := pg.admin(fmt.Sprintf("CREATE DATABASE %s", name)); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		// FORCE ends connections a failed test left open.
		if err := pg.admin(fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return pg.dsn(name)
}

// PostgresBin returns the path of a PostgreSQL server program (initdb,
// pg_ctl, postgres …) of the newest version installed in Debian's
// layout, or on PATH.
func PostgresBin(name string) (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest version first: "15" sorts after "9" only as a number.
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

var pg pgCluster

// pgCluster is the test binary's PostgreSQL cluster.
type pgCluster struct {
	main      atomic.Bool // PostgresMain runs the tests
	once      sync.Once
	missing   string // why the cluster cannot run here: a tool is missing
	err       error
	dir       string // data directory, socket and log, under one temporary directory
	port      int
	databases atomic.Int64

	mu     sync.Mutex // one admin statement at a time
	conn   *pgx.Conn
	proc   *os.Process
	exited chan struct{}
}

func (c *pgCluster) dsn(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, database)
}

func (c *pgCluster) start() {
	initdb, err1 := PostgresBin("initdb")
	server, err2 := PostgresBin("postgres")
	if err := errors.Join(err1, err2); err != nil {
		c.missing = fmt.Sprintf("MISSING TOOL PostgreSQL server (initdb, postgres): %v; install Debian's postgresql package (.ci/run lists what the tests need and how it installs them)", err)
		return
	}
	cred, err := serverCredential()
	if err != nil {
		c.err = err
		return
	}
	removeAbandoned()
	if c.dir, err = os.MkdirTemp("", "posture-pg-"); err != nil {
		c.err = err
		return
	}
	if cred != nil {
		if err := os.Chown(c.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			c.err = err
			return
		}
	}
	data := filepath.Join(c.dir, "data")
	cmd := exec.Command(initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		c.err = fmt.Errorf("initdb: %w\n%s", err, out)
		return
	}
	// Another process may take the port between choosing and binding it:
	// postgres then exits, and another is tried.
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.err = err
			return
		}
		c.port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		if c.err = c.run(server, data, cred); c.err == nil || attempt == 4 {
			return
		}
	}
}

// removeAbandoned removes the files of clusters whose test binary died
// without stopping them (the kernel stopped the server: see run). A
// directory young or with a live server may belong to a test binary
// running now.
func removeAbandoned() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "posture-pg-*"))
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil || time.Since(fi.ModTime()) < 10*time.Minute {
			continue
		}
		if pid, err := os.ReadFile(filepath.Join(d, "data", "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(pid), "\n")
			if n, err := strconv.Atoi(first); err == nil && syscall.Kill(n, 0) != syscall.ESRCH {
				continue // running, or not ours to judge
			}
		}
		_ = os.RemoveAll(d)
	}
}

// serverCredential is who the server runs as: initdb and postgres refuse
// to run as root.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 == nil && err2 == nil {
			return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
		}
	}
	return nil, errors.New("the tests run as root, and neither user postgres nor nobody exists to run PostgreSQL as")
}

// run starts postgres and waits until it accepts connections.
func (c *pgCluster) run(server, data string, cred *syscall.Credential) error {
	logPath := filepath.Join(c.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(server, "-D", data, "-p", strconv.Itoa(c.port), "-k", c.dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=512MB", "-c", "max_wal_size=4GB")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Should the test binary die without stopping it (a panic, a
	// timeout), the kernel tells the server to shut down at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		// Pdeathsig follows the thread that started the process, not the
		// process: keep this goroutine on its thread, and the thread
		// alive, until the server exits.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	c.proc, c.exited = cmd.Process, exited

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, c.dsn("postgres"))
		cancel()
		if err == nil {
			c.conn = conn
			return nil
		}
		select {
		case <-exited:
			c.proc = nil
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited at start: %s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop()
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres did not accept connections within 30s: %w\n%s", err, log)
		}
	}
}

func (c *pgCluster) admin(sql string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.conn.Exec(ctx, sql)
	return err
}

// stop shuts the server down (fast: open sessions are ended) and removes
// its files.
func (c *pgCluster) stop() {
	if c.conn != nil {
		_ = c.conn.Close(context.Background())
		c.conn = nil
	}
	if c.proc != nil {
		_ = c.proc.Signal(syscall.SIGINT)
		select {
		case <-c.exited:
		case <-time.After(30 * time.Second):
			_ = c.proc.Signal(syscall.SIGQUIT)
			select {
			case <-c.exited:
			case <-time.After(10 * time.Second):
				_ = c.proc.Kill()
				<-c.exited
			}
		}
		c.proc = nil
	}
	if c.dir != "" && strings.Contains(c.dir, "posture-pg-") {
		_ = os.RemoveAll(c.dir)
		c.dir = ""
	}
}
