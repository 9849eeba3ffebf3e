package collector

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func stopCollectorForTest(c *Collector) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Serve(ctx)
}

// Decisions made by a front end as it stops (OnStop) are saved with the
// rest when the collector stops.
func TestOnStopDecisionsSaved(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	c.OnStop(func() {
		if _, err := c.CheckAccess(context.Background(), &posturev1.CheckAccessRequest{DeviceId: "last-asked", AccessLevel: "basic"}); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Serve(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := sqlite.Open(filepath.Join(dir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	saved, err := s.Decisions(context.Background(), c.ReplicaID(), 10)
	if err != nil || len(saved) != 1 || saved[0].Device != "last-asked" {
		t.Errorf("saved decisions %+v, %v; want the one made while stopping", saved, err)
	}
}

// The heartbeat interval defaults to 10 s and reaches watchers in
// SnapshotEnd; a negative one, or one below the floor, is refused before
// anything is created.
func TestWatchHeartbeatConfig(t *testing.T) {
	tests := []struct {
		name string
		in   time.Duration
		err  string
	}{
		{"default", 0, ""},
		{"the floor", 100 * time.Millisecond, ""},
		{"a minute", time.Minute, ""},
		{"negative", -time.Second, "is negative"},
		{"below the floor", 99 * time.Millisecond, "too short"},
		{"a nanosecond", 1, "too short"},
		{"above the ceiling", time.Minute + time.Second, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", WatchHeartbeat: tt.in})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "--watch-heartbeat") {
					t.Fatalf("New with WatchHeartbeat %v: %v; want an error saying %q and naming the flag", tt.in, err, tt.err)
				}
				if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused configuration created the data directory: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stopCollectorForTest(c)
		})
	}
}

func TestReportBudgetConfig(t *testing.T) {
	for _, tt := range []struct {
		burst int
		every time.Duration
		err   string
	}{
		{-1, 0, "--report-burst"},
		{2_000_000, 0, "--report-burst"},
		{0, 500 * time.Millisecond, "whole seconds"},
		{0, 1500 * time.Millisecond, "whole seconds"},
		{0, 25 * time.Hour, "--report-interval"},
		{1_000_000, 24 * time.Hour, "68 years"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		_, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", ReportBurst: tt.burst, ReportInterval: tt.every})
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("burst %d, interval %v: %v; want an error saying %q", tt.burst, tt.every, err, tt.err)
		}
	}
}

// A collector on its own database is the "local" replica, in its data
// directory across restarts; a database URL it cannot use is refused
// saying what to give, without its password.
func TestReplicaAndDatabase(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if c.ReplicaID() != "local" {
		t.Errorf("replica %q, want local", c.ReplicaID())
	}
	stopCollectorForTest(c)
	_, err = New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Database: "mysql://admin:s3cret@db/posture"})
	if err == nil || !strings.Contains(err.Error(), "postgres://") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("an unknown database URL: %v; want a refusal naming postgres:// and hiding the password", err)
	}
}
