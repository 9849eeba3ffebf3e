package durable

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to path through a synced temporary file and a
// rename, then flushes the directory: readers never see half a file, and
// once it returns the new file survives a power loss. A private mode (no
// group or other bits) also keeps other users out on Windows, where the
// file gets a DACL for SYSTEM and Administrators only.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeFileAtomic(path, data, mode, SyncDir)
}

// writeFileAtomic is WriteFileAtomic with the directory flush passed in.
func writeFileAtomic(path string, data []byte, mode os.FileMode, syncDir func(dir string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	// Restricted before anything is written, so the contents are never
	// open to more than the final file allows.
	if err := restrictFile(f, mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The rename is a change to the directory, which the file's own flush
	// does not cover: without this, a power loss can undo it while a later
	// write elsewhere survives, and callers order their writes on that
	// (the agent removes a spooled report only after its chain head is
	// recorded).
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
