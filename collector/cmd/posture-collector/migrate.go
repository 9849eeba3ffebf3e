package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/postgres"
	"github.com/posture-project/posture/collector/store/sqlite"
)

// newMigrateCommand copies a stopped collector's SQLite database into an
// empty PostgreSQL database and checks the copy.
func newMigrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate --from DIR/posture.db --to postgres://…",
		Short: "Copy a stopped collector's SQLite database into an empty PostgreSQL one, checked table by table",
		Args:  noArgs,
	}
	from := cmd.Flags().String("from", "", "the SQLite database to copy (posture.db, or the data directory holding it); its collector must be stopped")
	to := cmd.Flags().String("to", os.Getenv("POSTURE_DATABASE"), "the postgres:// URL of an empty database to copy into (default $POSTURE_DATABASE)")
	discard := cmd.Flags().Bool("discard-undelivered", false, "copy although messages wait for webhooks, SIEM or Shared Signals receivers, and drop them")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *from == "" || *to == "" {
			return usagef("usage: posture-collector migrate --from /var/lib/posture-collector/posture.db --to postgres://… [--discard-undelivered]")
		}
		return migrate(*from, *to, *discard, cmd.OutOrStdout())
	}
	return cmd
}

// migrate copies the SQLite database from into the PostgreSQL database to;
// with discard, although messages wait in its outbox, which are dropped.
func migrate(from, to string, discard bool, out io.Writer) error {
	path := from
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, "posture.db")
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("--from %s: %w", path, err)
	}
	// A running collector keeps writing: copy only a stopped one.
	if conn, err := net.DialTimeout("unix", filepath.Join(filepath.Dir(path), collector.AdminSocket), time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("a collector is running with %s (its admin socket answers); stop it first, so that nothing changes while it is copied", filepath.Dir(path))
	}
	ctx := context.Background()
	src, err := sqlite.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	waiting, err := undelivered(ctx, src)
	if err != nil {
		return fmt.Errorf("--from %s: %w", path, err)
	}
	if len(waiting) > 0 && !discard {
		return errUndelivered(waiting)
	}
	dst, err := postgres.Open(ctx, to)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	defer dst.Close()
	t0 := time.Now()
	if err := store.Copy(ctx, src, dst); err != nil {
		if errors.Is(err, store.ErrNotEmpty) {
			return fmt.Errorf("%w: migrate only into a new, empty database; nothing was copied", err)
		}
		return fmt.Errorf("nothing was copied: %w", err)
	}
	// The check: every table of the copy holds what the file holds.
	want, err := digests(ctx, src)
	if err != nil {
		return fmt.Errorf("check the copy: read %s: %w", path, err)
	}
	got, err := digests(ctx, dst)
	if err != nil {
		return fmt.Errorf("check the copy: read the database: %w", err)
	}
	for _, kind := range kinds {
		if want[kind] != got[kind] {
			return fmt.Errorf("the copy differs from %s in its %s (%d there, %d in the copy): it was not checked equal; drop the database and migrate again", path, kind, want[kind].n, got[kind].n)
		}
	}
	srcLast, err := src.LastEventID(ctx)
	if err != nil {
		return err
	}
	if dstLast, err := dst.LastEventID(ctx); err != nil || dstLast < srcLast {
		return fmt.Errorf("the copy's changes would be numbered from %d, below the file's %d (%v): watches could not resume across the move", dstLast, srcLast, err)
	}
	fmt.Fprintf(out, "copied and checked in %s:", time.Since(t0).Round(time.Millisecond))
	for _, kind := range kinds {
		fmt.Fprintf(out, " %d %s,", want[kind].n, kind)
	}
	fmt.Fprintf(out, " from %s\n", path)
	if len(waiting) > 0 {
		fmt.Fprintf(out, "dropped the messages waiting for %s (--discard-undelivered)\n", strings.Join(waiting, ", "))
	}
	fmt.Fprintf(out, "start the collector with the same data directory: posture-collector run --database URL --data-dir %s\n", filepath.Dir(path))
	return nil
}

// kinds are the records a copy is checked by.
var kinds = []string{"settings", "tokens", "pinned EKs", "gateways", "devices", "reports", "decisions"}

// digest is what a table holds, in any order: how many records, and the
// sum of their SHA-256 digests (of their JSON encoding) modulo 2^256.
type digest struct {
	n   int
	sum string
}

// digests reads a whole database (store.Dumper) and digests it by kind.
func digests(ctx context.Context, d store.Dumper) (map[string]digest, error) {
	sums := map[string]*big.Int{}
	counts := map[string]int{}
	mod := new(big.Int).Lsh(big.NewInt(1), 256)
	err := d.Dump(ctx, func(r store.Record) error {
		var kind string
		var v any
		switch {
		case r.Setting != nil:
			kind, v = "settings", r.Setting
		case r.Token != nil:
			kind, v = "tokens", r.Token
		case r.PinnedEK != nil:
			kind, v = "pinned EKs", r.PinnedEK
		case r.Gateway != nil:
			kind, v = "gateways", r.Gateway
		case r.Device != nil:
			kind, v = "devices", r.Device
		case r.Report != nil:
			kind, v = "reports", r.Report
		case r.Decision != nil:
			kind, v = "decisions", r.Decision
		default:
			return nil // the event mark: checked apart
		}
		b, err := json.Marshal(canonical(reflect.ValueOf(v)))
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		if sums[kind] == nil {
			sums[kind] = new(big.Int)
		}
		sums[kind].Add(sums[kind], new(big.Int).SetBytes(h[:]))
		sums[kind].Mod(sums[kind], mod)
		counts[kind]++
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string]digest{}
	for _, k := range kinds {
		s := "0"
		if sums[k] != nil {
			s = sums[k].Text(16)
		}
		out[k] = digest{n: counts[k], sum: s}
	}
	return out, nil
}

// canonical is v with what backends may store alike but read back
// differently made one: empty byte slices nil, times in UTC.
func canonical(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return canonical(v.Elem())
	case reflect.Struct:
		if t, ok := v.Interface().(time.Time); ok {
			return t.UTC()
		}
		m := map[string]any{}
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				m[f.Name] = canonical(v.Field(i))
			}
		}
		return m
	case reflect.Slice:
		if v.Len() == 0 {
			return nil
		}
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return v.Bytes()
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = canonical(v.Index(i))
		}
		return out
	}
	return v.Interface()
}
