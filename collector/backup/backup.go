// Package backup writes and restores a collector's backup: one gzipped tar
// archive holding a consistent copy of its SQLite database, taken while the
// collector runs, and the files of its data directory that make it the same
// collector (the CA certificate and key, the replica ID).
//
// The copy is SQLite's VACUUM INTO on a read-only connection: it reads
// inside one read transaction, so it is the database as of one commit, and
// in WAL mode a reader neither waits for the collector's writer nor holds
// it up. A PostgreSQL-backed collector's database is pg_dump's to back up;
// its archive holds the data directory's files only.
package backup

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	_ "github.com/mattn/go-sqlite3" // the driver the SQLite store uses
)

// DatabaseFile is the SQLite database in a data directory.
const DatabaseFile = "posture.db"

// identityFiles are the files that make a data directory its collector:
// without ca.key no device certificate chains to anything it issues again.
var identityFiles = []string{"ca.crt", "ca.key", "replica-id"}

// manifestName is the archive's first entry, which describes it.
const manifestName = "posture-backup.json"

// Manifest describes an archive.
type Manifest struct {
	// Format is 1.
	Format int `json:"format"`
	// CreatedAt is when the copy was taken.
	CreatedAt time.Time `json:"created_at"`
	// Version is the version of the posture-collector that took it.
	Version string `json:"version"`
	// Database is "sqlite" when the archive holds the database, "postgres"
	// when the collector's database is elsewhere (pg_dump's to back up).
	Database string `json:"database"`
	// Files are the archive's entries after the manifest.
	Files []string `json:"files"`
}

// Options say what to back up.
type Options struct {
	// DataDir is the collector's data directory.
	DataDir string
	// Postgres is set when the collector's database is PostgreSQL: the
	// archive then holds the data directory's files only.
	Postgres bool
	// Running is set when a collector answers on the admin socket, so its
	// database has a write-ahead log that the copy must read.
	Running bool
	// Version is recorded in the manifest.
	Version string
}

// Create writes a backup of opts.DataDir to the file to (mode 0600: it holds
// the CA key). It returns what it wrote.
func Create(ctx context.Context, opts Options, to string) (*Manifest, error) {
	m := &Manifest{Format: 1, CreatedAt: time.Now().UTC(), Version: opts.Version, Database: "sqlite"}
	if opts.Postgres {
		m.Database = "postgres"
	}
	var files []string
	for _, f := range identityFiles {
		if _, err := os.Stat(filepath.Join(opts.DataDir, f)); err == nil {
			files = append(files, f)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if len(files) == 0 || files[0] != "ca.crt" {
		return nil, fmt.Errorf("%s holds no collector CA (ca.crt, ca.key): give the data directory of a collector that has started (--data-dir)", opts.DataDir)
	}
	tmp, err := os.CreateTemp(filepath.Dir(to), ".posture-backup-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil {
		return nil, err
	}
	var dbCopy string
	if !opts.Postgres {
		dbCopy = tmp.Name() + ".db"
		defer os.Remove(dbCopy)
		if err := copyDatabase(ctx, filepath.Join(opts.DataDir, DatabaseFile), dbCopy, opts.Running); err != nil {
			return nil, err
		}
		files = append(files, DatabaseFile)
	}
	m.Files = files
	gz := gzip.NewWriter(tmp)
	tw := tar.NewWriter(gz)
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := writeEntry(tw, manifestName, 0o644, int64(len(mb)), strings.NewReader(string(mb))); err != nil {
		return nil, err
	}
	for _, f := range files {
		src := filepath.Join(opts.DataDir, f)
		if f == DatabaseFile {
			src = dbCopy
		}
		if err := addFile(tw, f, src); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), to); err != nil {
		return nil, err
	}
	return m, nil
}

// copyDatabase copies the SQLite database src into a new file dst, as of
// one commit, through a read-only connection.
func copyDatabase(ctx context.Context, src, dst string, running bool) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	q := url.Values{"mode": {"ro"}, "_busy_timeout": {"10000"}}
	if !running {
		// Nothing writes: read the file as it is, without the lock and
		// write-ahead-log files a reader would otherwise create.
		q.Set("immutable", "1")
	}
	db, err := sql.Open("sqlite3", "file:"+(&url.URL{Path: src}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		return fmt.Errorf("copy the database %s: %w", src, err)
	}
	if err := db.Close(); err != nil {
		return err
	}
	keepOwner(src, fi)
	return nil
}

// keepOwner gives the database's write-ahead-log files, should this reader
// have created them (root backing up the database of a collector that
// stopped meanwhile), to the database's owner, so that the collector can
// open them when it starts.
func keepOwner(db string, fi os.FileInfo) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 {
		return
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if w, err := os.Stat(db + suffix); err == nil {
			if ws, ok := w.Sys().(*syscall.Stat_t); ok && (ws.Uid != st.Uid || ws.Gid != st.Gid) {
				os.Chown(db+suffix, int(st.Uid), int(st.Gid))
			}
		}
	}
}

func addFile(tw *tar.Writer, name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return writeEntry(tw, name, 0o600, fi.Size(), f)
}

func writeEntry(tw *tar.Writer, name string, mode int64, size int64, r io.Reader) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: size, ModTime: time.Now(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, r, size); err != nil {
		return fmt.Errorf("archive %s: %w", name, err)
	}
	return nil
}

// Restore unpacks the archive from into the data directory dir, which must
// hold no CA and no database: a collector's data directory is restored
// whole, not merged. Files get mode 0600 and, when run as root, the owner
// of dir (the collector's user when packaged). The database is checked
// before it is put in place.
func Restore(ctx context.Context, from, dir string) (*Manifest, error) {
	for _, f := range append([]string{DatabaseFile}, identityFiles...) {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("%s already holds %s: restore into an empty data directory (stop the collector and move the old one aside first)", dir, f)
		}
	}
	in, err := os.Open(from)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	gz, err := gzip.NewReader(in)
	if err != nil {
		return nil, fmt.Errorf("%s is not a posture-collector backup: %w", from, err)
	}
	tr := tar.NewReader(gz)
	hdr, err := tr.Next()
	if err != nil || hdr.Name != manifestName {
		return nil, fmt.Errorf("%s is not a posture-collector backup (it does not start with %s)", from, manifestName)
	}
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", from, manifestName, err)
	}
	if m.Format != 1 {
		return nil, fmt.Errorf("%s is a backup of format %d; this posture-collector reads format 1: restore it with the version that made it (%s) or a newer one", from, m.Format, m.Version)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	owner, _ := os.Stat(dir)
	// Unpack beside the destination, then move into place: a failed
	// restore leaves nothing half-written behind.
	stage, err := os.MkdirTemp(dir, ".restore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	want := map[string]bool{}
	for _, f := range m.Files {
		want[f] = true
	}
	got := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", from, err)
		}
		if !want[hdr.Name] || got[hdr.Name] || hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%s: unexpected entry %q", from, hdr.Name)
		}
		got[hdr.Name] = true
		out, err := os.OpenFile(filepath.Join(stage, hdr.Name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(out, tr)
		if err == nil {
			err = out.Sync()
		}
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("unpack %s: %w", hdr.Name, err)
		}
	}
	for f := range want {
		if !got[f] {
			return nil, fmt.Errorf("%s lacks %s, which its manifest lists: the archive is incomplete", from, f)
		}
	}
	if got[DatabaseFile] {
		if err := checkDatabase(ctx, filepath.Join(stage, DatabaseFile)); err != nil {
			return nil, err
		}
	}
	for _, f := range m.Files {
		p := filepath.Join(stage, f)
		if st, ok := owner.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
			if err := os.Chown(p, int(st.Uid), int(st.Gid)); err != nil {
				return nil, err
			}
		}
		if err := os.Rename(p, filepath.Join(dir, f)); err != nil {
			return nil, err
		}
	}
	return &m, nil
}

// checkDatabase runs SQLite's integrity check on a restored database.
func checkDatabase(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite3", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro&immutable=1")
	if err != nil {
		return err
	}
	defer db.Close()
	var res string
	if err := db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&res); err != nil {
		return fmt.Errorf("check the database in the archive: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("the database in the archive is damaged (%s): restore another backup", res)
	}
	return nil
}
