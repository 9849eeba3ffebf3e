package durable

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	tests := []struct {
		name     string
		existing string // contents already at the path; empty for none
		mode     os.FileMode
	}{
		{name: "new private file", mode: 0o600},
		{name: "new public file", mode: 0o644},
		{name: "replaces a file", existing: "old contents", mode: 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "chain.json")
			if tt.existing != "" {
				if err := os.WriteFile(path, []byte(tt.existing), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFileAtomic(path, []byte("new contents"), tt.mode); err != nil {
				t.Fatalf("WriteFileAtomic: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != "new contents" {
				t.Errorf("file holds %q (%v), want %q", got, err, "new contents")
			}
			if runtime.GOOS != "windows" {
				if st, err := os.Stat(path); err != nil || st.Mode().Perm() != tt.mode {
					t.Errorf("mode %v (%v), want %v", st.Mode().Perm(), err, tt.mode)
				}
			}
			if left := leftovers(t, dir); len(left) != 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

// The directory is flushed after the rename, so that what the flush makes
// durable includes the new name.
func TestWriteFileAtomicFlushesDirectoryAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "chain.json")
	var flushed []string
	flush := func(d string) error {
		if got, err := os.ReadFile(path); err != nil || string(got) != "head" {
			t.Errorf("at the directory flush the file holds %q (%v): the rename has not happened yet", got, err)
		}
		flushed = append(flushed, d)
		return nil
	}
	if err := writeFileAtomic(path, []byte("head"), 0o600, flush); err != nil {
		t.Fatal(err)
	}
	if len(flushed) != 1 || flushed[0] != dir {
		t.Errorf("directories flushed: %q, want [%q]", flushed, dir)
	}

	failing := errors.New("device gone")
	err := writeFileAtomic(path, []byte("next"), 0o600, func(string) error { return failing })
	if !errors.Is(err, failing) {
		t.Errorf("with a failing directory flush: %v, want an error wrapping %v", err, failing)
	}
}

func TestSyncDir(t *testing.T) {
	if err := SyncDir(t.TempDir()); err != nil {
		t.Errorf("syncDir of a directory: %v", err)
	}
	if runtime.GOOS == "windows" {
		return // a no-op there
	}
	if err := SyncDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("syncDir of a missing directory succeeded")
	}
}

func TestWriteFileAtomicMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "agent.json")
	if err := WriteFileAtomic(path, []byte("{}"), 0o600); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("WriteFileAtomic into a missing directory = %v, want an error naming %s", err, path)
	}
}

// leftovers lists the temporary files in dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if strings.Contains(de.Name(), ".tmp") {
			out = append(out, de.Name())
		}
	}
	return out
}
