package main

import (
	"context"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/backup"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/version"
)

// collectorRunning reports whether a collector answers on the admin socket
// of dataDir.
func collectorRunning(dataDir string) bool {
	conn, err := net.DialTimeout("unix", filepath.Join(dataDir, collector.AdminSocket), time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func newBackupCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup --to FILE",
		Short: "Write a consistent copy of the collector's database and CA into one archive, while it runs",
		Long: `Write a backup of a collector: a consistent copy of its SQLite database
(taken while it runs, as of one commit) and the files that make it the same
collector (ca.crt, ca.key, replica-id), in one gzipped tar archive of mode
0600 (it holds the CA key). Restore with posture-collector restore.

A collector on PostgreSQL (--database) keeps its data there: back the
database up with pg_dump; the archive then holds the data directory's files.`,
		Args: noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	database := cmd.Flags().String("database", "", "the collector's postgres:// URL, when it has one (also $POSTURE_DATABASE or the configuration file): the archive then holds the CA only")
	to := cmd.Flags().String("to", "", "archive to write (required)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *to == "" {
			return usagef("usage: posture-collector backup --to FILE")
		}
		t0 := time.Now()
		m, err := backup.Create(context.Background(), backup.Options{DataDir: *dataDir, Postgres: *database != "", Running: collectorRunning(*dataDir), Version: version.Version()}, *to)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		inert.Fprintf(out, "wrote %s in %s: %v\n", *to, time.Since(t0).Round(time.Millisecond), m.Files)
		if m.Database == "postgres" {
			inert.Fprintf(out, "the database is PostgreSQL: back it up with pg_dump (docs/backup.md); this archive holds the data directory's CA and replica ID\n")
		}
		return nil
	}
	return cmd
}

func newRestoreCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restore --from FILE",
		Short: "Restore a backup into an empty data directory, for a stopped collector",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	from := cmd.Flags().String("from", "", "archive written by posture-collector backup (required)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *from == "" {
			return usagef("usage: posture-collector restore --from FILE [--data-dir DIR]")
		}
		if collectorRunning(*dataDir) {
			return usagef("a collector is running with %s (its admin socket answers): stop it, move its data directory aside, and restore into an empty one", *dataDir)
		}
		if err := makeDataDir(*dataDir); err != nil {
			return err
		}
		m, err := backup.Restore(context.Background(), *from, *dataDir)
		if err != nil {
			return err
		}
		inert.Fprintf(cmd.OutOrStdout(), "restored %v from the backup of %s (posture-collector %s) into %s; start the collector\n", m.Files, m.CreatedAt.Local().Format(time.RFC3339), m.Version, *dataDir)
		return nil
	}
	return cmd
}

// packagedUser owns the data directory when the collector is packaged.
const packagedUser = "posture-collector"

// makeDataDir creates a missing data directory (mode 0700) and, run as root
// where the packaged user exists, gives it to that user, as the package
// does: restore gives the files the directory's owner.
func makeDataDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup(packagedUser)
	if err != nil {
		return nil // not packaged: root's
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}
