// Package spool is the agent's durable FIFO queue of posture reports that
// have been measured but not yet acknowledged by the collector.
//
// Each entry is one file in the spool directory, named by its ID, a uint64
// that increases with every Put and is never reused, so IDs give the order.
// Every change is written to a temporary file, flushed, renamed into place
// and made durable by flushing the directory, so after a crash an entry is
// either whole or absent. Delivery is at least once: an entry removed just
// before a crash may come back, which the collector tolerates because it
// stores reports idempotently.
//
// One Spool value should own a directory at a time; the package does not
// lock the directory against other processes.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/posture-project/posture/internal/durable"
)

// defaultMax bounds the spool when Open is given no bound: a week of
// reports at one a minute.
const defaultMax = 10000

// ErrNotFound is returned by Replace when the ID is not in the spool, for
// example because it was removed or dropped to make room.
var ErrNotFound = errors.New("spool entry not found")

// Entry is one spooled item.
type Entry struct {
	ID   uint64
	Data []byte
}

// Spool is a durable, bounded FIFO queue of byte strings kept in a
// directory. It is safe for concurrent use.
type Spool struct {
	dir    string
	max    int
	notify chan struct{}

	mu      sync.Mutex
	ids     []uint64 // spooled IDs, oldest first
	next    uint64   // ID of the next Put; 0 once every ID has been used
	saved   uint64   // value held by the next file, 0 if there is none
	dropped uint64
	corrupt uint64
}

// Open opens (creating) a spool in dir holding at most max entries (max <= 0
// means 10000).
//
// Open removes temporary files left by a crash, checks every entry and moves
// unreadable ones to dir/corrupt, and drops the oldest entries if there are
// more than max (counted by Dropped).
func Open(dir string, max int) (*Spool, error) {
	if max <= 0 {
		max = defaultMax
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create directory: %w", err)
	}
	s := &Spool{dir: dir, max: max, notify: make(chan struct{}, 1), next: 1}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// load builds the index from the directory. It runs before s is shared, but
// holds the lock anyway so that the *Locked helpers keep their contract.
func (s *Spool) load() error {
	s.mu.Lock()
	defer s.mu.Unlock()

	des, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool: read directory: %w", err)
	}
	hasNext := false
	for _, de := range des {
		name := de.Name()
		if !de.Type().IsRegular() {
			continue // corrupt/ and anything else that is not ours
		}
		switch id, ok := parseName(name); {
		case ok:
			s.ids = append(s.ids, id)
		case name == nextName:
			hasNext = true
		case strings.HasSuffix(name, tempExt):
			// A crash before the rename left it; its Put or Replace never
			// reported success, so nothing depends on it.
			if err := os.Remove(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("spool: remove leftover temporary file: %w", err)
			}
		}
	}
	slices.Sort(s.ids)

	if hasNext {
		if err := s.loadNext(); err != nil {
			return err
		}
	}
	if n := len(s.ids); n > 0 && s.ids[n-1] >= s.next {
		s.next = s.ids[n-1] + 1 // wraps to 0 only when IDs are exhausted
	}

	for i := 0; i < len(s.ids); {
		id := s.ids[i]
		_, err := s.readLocked(id)
		switch {
		case err == nil:
			i++
		case errors.Is(err, errInvalid):
			if err := s.setAsideLocked(id); err != nil {
				return err
			}
		default:
			return fmt.Errorf("spool: read entry %d: %w", id, err)
		}
	}

	if len(s.ids) > s.max {
		for len(s.ids) > s.max {
			if err := s.removeLocked(s.ids[0]); err != nil {
				return fmt.Errorf("spool: drop entry beyond the bound of %d: %w", s.max, err)
			}
			s.dropped++
		}
		if err := durable.SyncDir(s.dir); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	}
	return nil
}

// loadNext reads the persisted next ID.
func (s *Spool) loadNext() error {
	buf, err := os.ReadFile(filepath.Join(s.dir, nextName))
	if err != nil {
		return fmt.Errorf("spool: read next ID: %w", err)
	}
	payload, err := decode(buf)
	if err == nil && len(payload) == 8 {
		if n := binary.BigEndian.Uint64(payload); n != 0 {
			s.saved = n
			s.next = max(s.next, n)
			return nil
		}
	}
	// The file is only ever replaced by rename, so this is outside damage.
	// Keep it for inspection and carry on from the entry names.
	if err := moveAside(s.dir, nextName); err != nil {
		return fmt.Errorf("spool: set aside unreadable next ID file: %w", err)
	}
	return nil
}

// Put appends data durably and returns its ID. When the spool is full it
// removes the oldest entry first and counts it as dropped (the newest
// measurement is worth more than the oldest); a consumer holding that entry
// then gets ErrNotFound from Replace.
func (s *Spool) Put(data []byte) (uint64, error) {
	buf, err := encode(data)
	if err != nil {
		return 0, fmt.Errorf("spool: put: %w", err)
	}
	// Writing and flushing happen before taking the lock, so a consumer is
	// not held up by the slowest part of a Put.
	tmp, err := s.writeTemp(buf)
	if err != nil {
		return 0, fmt.Errorf("spool: put: %w", err)
	}
	s.mu.Lock()
	id, err := s.putLocked(tmp)
	s.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("spool: put: %w", err)
	}
	select {
	case s.notify <- struct{}{}:
	default: // a wake-up is already pending
	}
	return id, nil
}

// putLocked publishes the flushed temporary file tmp as the newest entry.
func (s *Spool) putLocked(tmp string) (uint64, error) {
	if s.next == 0 {
		os.Remove(tmp)
		return 0, errors.New("every entry ID has been used; move the spool directory aside to start again")
	}
	for len(s.ids) >= s.max {
		if err := s.removeLocked(s.ids[0]); err != nil {
			os.Remove(tmp)
			return 0, fmt.Errorf("drop oldest entry: %w", err)
		}
		s.dropped++
	}
	id := s.next
	s.next++
	path := s.path(id)
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	// This also makes the removal of a dropped entry durable.
	if err := durable.SyncDir(s.dir); err != nil {
		// The caller is told the Put failed, so do not let the entry
		// surface later.
		os.Remove(path)
		return 0, err
	}
	s.ids = append(s.ids, id)
	return id, nil
}

// Oldest returns the oldest entry; ok is false when the spool is empty.
// An entry that cannot be read back intact is moved to the corrupt
// subdirectory, counted by Corrupt, and skipped.
func (s *Spool) Oldest() (e Entry, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.ids) > 0 {
		id := s.ids[0]
		data, err := s.readLocked(id)
		switch {
		case err == nil:
			return Entry{ID: id, Data: data}, true, nil
		case errors.Is(err, errInvalid):
			if err := s.setAsideLocked(id); err != nil {
				return Entry{}, false, err
			}
		case errors.Is(err, fs.ErrNotExist):
			// Deleted by someone else; there is nothing left to return.
			s.forgetLocked(id)
		default:
			return Entry{}, false, fmt.Errorf("spool: read entry %d: %w", id, err)
		}
	}
	return Entry{}, false, nil
}

// Replace durably rewrites the data of an existing entry, keeping its ID and
// place. It returns ErrNotFound if the ID is not spooled.
func (s *Spool) Replace(id uint64, data []byte) error {
	buf, err := encode(data)
	if err != nil {
		return fmt.Errorf("spool: replace entry %d: %w", id, err)
	}
	if !s.has(id) {
		return fmt.Errorf("spool: replace entry %d: %w", id, ErrNotFound)
	}
	tmp, err := s.writeTemp(buf)
	if err != nil {
		return fmt.Errorf("spool: replace entry %d: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Checked again: Put may have dropped it while the lock was free.
	if _, ok := s.indexLocked(id); !ok {
		os.Remove(tmp)
		return fmt.Errorf("spool: replace entry %d: %w", id, ErrNotFound)
	}
	if err := os.Rename(tmp, s.path(id)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("spool: replace entry %d: %w", id, err)
	}
	if err := durable.SyncDir(s.dir); err != nil {
		return fmt.Errorf("spool: replace entry %d: %w", id, err)
	}
	return nil
}

// Rewrite passes the data of every entry, oldest first, to f, and durably
// replaces the entries for which f returns changed, keeping their IDs and
// order (as Replace does). It returns how many it replaced. Entries that
// cannot be read back intact are left for Oldest to set aside. It is meant
// for converting what an older version spooled, before consumers start.
func (s *Spool) Rewrite(f func(data []byte) (out []byte, changed bool)) (int, error) {
	s.mu.Lock()
	ids := slices.Clone(s.ids)
	s.mu.Unlock()
	n := 0
	for _, id := range ids {
		s.mu.Lock()
		data, err := s.readLocked(id)
		s.mu.Unlock()
		switch {
		case errors.Is(err, errInvalid), errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return n, fmt.Errorf("spool: rewrite entry %d: %w", id, err)
		}
		out, changed := f(data)
		if !changed {
			continue
		}
		if err := s.Replace(id, out); errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Remove deletes an entry durably; removing an ID that is not there is not
// an error.
func (s *Spool) Remove(id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.indexLocked(id); !ok {
		return nil
	}
	if err := s.removeLocked(id); err != nil {
		return fmt.Errorf("spool: remove entry %d: %w", id, err)
	}
	if err := durable.SyncDir(s.dir); err != nil {
		return fmt.Errorf("spool: remove entry %d: %w", id, err)
	}
	return nil
}

// Len is the number of entries.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// Dropped is how many entries were discarded because the spool was full,
// since Open.
func (s *Spool) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Corrupt is how many unreadable entries were set aside since Open.
func (s *Spool) Corrupt() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.corrupt
}

// Notify returns a channel that receives after each Put. It is buffered by
// one and Put never blocks on it, so several Puts may wake a receiver once:
// after each receive, call Oldest until the spool is empty.
func (s *Spool) Notify() <-chan struct{} {
	return s.notify
}

func (s *Spool) path(id uint64) string {
	return filepath.Join(s.dir, fileName(id))
}

func (s *Spool) has(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.indexLocked(id)
	return ok
}

func (s *Spool) indexLocked(id uint64) (int, bool) {
	return slices.BinarySearch(s.ids, id)
}

// forgetLocked drops id from the index.
func (s *Spool) forgetLocked(id uint64) {
	i, ok := s.indexLocked(id)
	switch {
	case !ok:
	case i == 0:
		s.ids = s.ids[1:] // the common case, kept O(1)
	default:
		s.ids = slices.Delete(s.ids, i, i+1)
	}
}

// readLocked returns the payload of entry id. Errors wrapping errInvalid
// mean the file is damaged.
func (s *Spool) readLocked(id uint64) ([]byte, error) {
	buf, err := os.ReadFile(s.path(id))
	if err != nil {
		return nil, err
	}
	return decode(buf)
}

// removeLocked deletes the file of spooled entry id and forgets it. The
// caller flushes the directory.
func (s *Spool) removeLocked(id uint64) error {
	if err := s.saveNextLocked(id); err != nil {
		return err
	}
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.forgetLocked(id)
	return nil
}

// setAsideLocked moves the damaged file of entry id into the corrupt
// subdirectory, where it stays for inspection, and forgets it.
func (s *Spool) setAsideLocked(id uint64) error {
	if err := s.saveNextLocked(id); err != nil {
		return fmt.Errorf("spool: set aside unreadable entry %d: %w", id, err)
	}
	// Not flushed: if the move is lost in a crash, the file is found
	// damaged again at the next Open and moved then.
	if err := moveAside(s.dir, fileName(id)); err != nil {
		return fmt.Errorf("spool: set aside unreadable entry %d: %w", id, err)
	}
	s.forgetLocked(id)
	s.corrupt++
	return nil
}

// saveNextLocked persists the next ID before the newest entry file leaves
// the directory: until then that file's name is what records how far IDs
// have gone, and without either a restart would hand out its ID again.
// Other removals need no write, so a busy spool rarely pays for it.
func (s *Spool) saveNextLocked(id uint64) error {
	n := len(s.ids)
	if n == 0 || id != s.ids[n-1] || s.next == 0 || s.saved >= s.next {
		return nil
	}
	buf, err := encode(binary.BigEndian.AppendUint64(nil, s.next))
	if err != nil {
		return err
	}
	tmp, err := s.writeTemp(buf)
	if err != nil {
		return fmt.Errorf("save next ID: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, nextName)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save next ID: %w", err)
	}
	// Flushed now, not with the caller's removal, so that the two cannot
	// be reordered on disk.
	if err := durable.SyncDir(s.dir); err != nil {
		return fmt.Errorf("save next ID: %w", err)
	}
	s.saved = s.next
	return nil
}

// writeTemp writes contents to a new temporary file in the spool directory
// and flushes it, so that a rename can publish it whole. The file is
// created 0600 because reports describe the device.
func (s *Spool) writeTemp(contents []byte) (string, error) {
	f, err := os.CreateTemp(s.dir, "*"+tempExt)
	if err != nil {
		return "", err
	}
	_, err = f.Write(contents)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// moveAside moves dir/name into dir/corrupt under a name not yet taken
// there, so earlier evidence is never overwritten.
func moveAside(dir, name string) error {
	cdir := filepath.Join(dir, corruptDir)
	if err := os.Mkdir(cdir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	dst := filepath.Join(cdir, name)
	for i := 1; ; i++ {
		_, err := os.Lstat(dst)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return err
		}
		dst = filepath.Join(cdir, fmt.Sprintf("%s.%d", name, i))
	}
	return os.Rename(filepath.Join(dir, name), dst)
}
