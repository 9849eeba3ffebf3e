package siem

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
)

// rotating is a file of lines that rotates by size: at maxSize it is
// renamed FILE.1 (FILE.1 becomes FILE.2, and so on, the oldest beyond keep
// removed) and a new FILE begins, as logrotate's numbered scheme does, so
// that shippers (Filebeat, Fluent Bit, Vector) follow it.
type rotating struct {
	mu      sync.Mutex
	path    string
	maxSize int64
	keep    int
	f       *os.File
	size    int64
}

func openRotating(path string, maxSize int64, keep int) (*rotating, error) {
	r := &rotating{path: path, maxSize: maxSize, keep: keep}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotating) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open %s: %w", r.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

// rotate shifts the numbered files and starts a new one; it requires mu.
func (r *rotating) rotate() error {
	if err := r.f.Close(); err != nil {
		return err
	}
	if err := os.Remove(fmt.Sprintf("%s.%d", r.path, r.keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for i := r.keep - 1; i >= 1; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", r.path, i), fmt.Sprintf("%s.%d", r.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return err
	}
	return r.open()
}

// write appends lines and syncs them to disk before it returns: a line
// counted as written survives a crash.
func (r *rotating) write(_ context.Context, lines []rendered) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		if err := r.open(); err != nil {
			return 0, err
		}
	}
	written := 0
	for i, l := range lines {
		if r.size > 0 && r.size+int64(len(l.json))+1 > r.maxSize {
			if err := r.f.Sync(); err != nil {
				return written, err
			}
			written = i
			if err := r.rotate(); err != nil {
				r.f = nil
				return written, fmt.Errorf("rotate %s: %w", r.path, err)
			}
		}
		n, err := r.f.Write(append(l.json, '\n'))
		r.size += int64(n)
		if err != nil {
			return written, fmt.Errorf("write %s: %w", r.path, err)
		}
	}
	if err := r.f.Sync(); err != nil {
		return written, fmt.Errorf("sync %s: %w", r.path, err)
	}
	return len(lines), nil
}

func (r *rotating) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
