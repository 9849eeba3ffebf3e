//go:build !windows

package durable

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// SyncDir flushes the directory itself, so that a rename in it survives a
// power loss and not only the contents of the renamed file.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	d.Close()
	// Some file systems (certain network and FUSE mounts) cannot flush a
	// directory; there a rename is as durable as the file system makes it.
	if err == nil || errors.Is(err, syscall.EINVAL) || errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	return fmt.Errorf("sync directory: %w", err)
}
