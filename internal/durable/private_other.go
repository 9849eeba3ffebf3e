//go:build !windows

package durable

import "os"

func restrictDir(dir string) error { return os.Chmod(dir, 0o700) }

// restrictFile gives a file being written its final mode.
func restrictFile(f *os.File, mode os.FileMode) error { return f.Chmod(mode) }
