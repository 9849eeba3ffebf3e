package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T, dir string, max int) *Spool {
	t.Helper()
	s, err := Open(dir, max)
	if err != nil {
		t.Fatalf("Open(%q, %d): %v", dir, max, err)
	}
	return s
}

func put(t *testing.T, s *Spool, items ...string) []uint64 {
	t.Helper()
	var ids []uint64
	for _, it := range items {
		id, err := s.Put([]byte(it))
		if err != nil {
			t.Fatalf("Put(%q): %v", it, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// drain takes every entry out of s, oldest first.
func drain(t *testing.T, s *Spool) []Entry {
	t.Helper()
	var out []Entry
	for {
		e, ok, err := s.Oldest()
		if err != nil {
			t.Fatalf("Oldest: %v", err)
		}
		if !ok {
			return out
		}
		out = append(out, e)
		if err := s.Remove(e.ID); err != nil {
			t.Fatalf("Remove(%d): %v", e.ID, err)
		}
	}
}

func entries(ids []uint64, items ...string) []Entry {
	var out []Entry
	for i, it := range items {
		out = append(out, Entry{ID: ids[i], Data: []byte(it)})
	}
	return out
}

func checkEntries(t *testing.T, got, want []Entry) {
	t.Helper()
	if !slices.EqualFunc(got, want, func(a, b Entry) bool { return a.ID == b.ID && bytes.Equal(a.Data, b.Data) }) {
		t.Errorf("entries:\n got  %s\n want %s", format(got), format(want))
	}
}

func format(es []Entry) string {
	var b bytes.Buffer
	for _, e := range es {
		fmt.Fprintf(&b, "%d:%q ", e.ID, e.Data)
	}
	return b.String()
}

func TestFIFO(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	if _, ok, err := s.Oldest(); ok || err != nil {
		t.Fatalf("Oldest on empty spool = ok %v, err %v; want false, nil", ok, err)
	}
	items := []string{"a", "b", "", "d"}
	ids := put(t, s, items...)
	if !slices.IsSorted(ids) || ids[0] != 1 {
		t.Errorf("IDs %v: want increasing from 1", ids)
	}
	if got := s.Len(); got != len(items) {
		t.Errorf("Len = %d, want %d", got, len(items))
	}
	checkEntries(t, drain(t, s), entries(ids, items...))
	if got := s.Len(); got != 0 {
		t.Errorf("Len after drain = %d, want 0", got)
	}
}

func TestPutCopiesData(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	data := []byte("report")
	id, err := s.Put(data)
	if err != nil {
		t.Fatal(err)
	}
	data[0] = 'X'
	e, _, err := s.Oldest()
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Data) != "report" || e.ID != id {
		t.Errorf("Oldest = %d:%q, want %d:%q", e.ID, e.Data, id, "report")
	}
}

func TestLargeEntry(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	id := put(t, s, string(big))
	checkEntries(t, drain(t, s), entries(id, string(big)))
}

func TestReopenKeepsOrderAndIDs(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	ids := put(t, s, "a", "b", "c", "d")
	if err := s.Remove(ids[0]); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, 0)
	if got := s.Len(); got != 3 {
		t.Errorf("Len after reopen = %d, want 3", got)
	}
	next := put(t, s, "e")
	if next[0] <= ids[3] {
		t.Errorf("ID after reopen = %d, want > %d", next[0], ids[3])
	}
	checkEntries(t, drain(t, s), entries(append(ids[1:], next...), "b", "c", "d", "e"))
}

func TestIDsNeverReused(t *testing.T) {
	tests := []struct {
		name string
		// before runs on a spool in dir holding entries 1, 2 and 3.
		before func(t *testing.T, s *Spool, dir string)
	}{
		{
			name: "all removed",
			before: func(t *testing.T, s *Spool, dir string) {
				drain(t, s)
			},
		},
		{
			name: "newest removed",
			before: func(t *testing.T, s *Spool, dir string) {
				if err := s.Remove(3); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "all removed, reopened twice",
			before: func(t *testing.T, s *Spool, dir string) {
				drain(t, s)
				open(t, dir, 0)
			},
		},
		{
			name: "newest damaged, the rest removed",
			before: func(t *testing.T, s *Spool, dir string) {
				damage(t, filepath.Join(dir, fileName(3)), []byte("garbage"))
				drain(t, s)
			},
		},
		{
			name: "newest damaged while closed",
			before: func(t *testing.T, s *Spool, dir string) {
				if err := s.Remove(1); err != nil {
					t.Fatal(err)
				}
				if err := s.Remove(2); err != nil {
					t.Fatal(err)
				}
				damage(t, filepath.Join(dir, fileName(3)), nil)
				// The open that sets it aside must remember the ID.
				if s := open(t, dir, 0); s.Corrupt() != 1 || s.Len() != 0 {
					t.Fatalf("after damage: Corrupt %d, Len %d; want 1, 0", s.Corrupt(), s.Len())
				}
			},
		},
		{
			name: "evicted with max 1",
			before: func(t *testing.T, s *Spool, dir string) {
				s1 := open(t, dir, 1) // keeps only 3
				if s1.Dropped() != 2 {
					t.Fatalf("Dropped = %d, want 2", s1.Dropped())
				}
				drain(t, s1)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, 0)
			if ids := put(t, s, "a", "b", "c"); !slices.Equal(ids, []uint64{1, 2, 3}) {
				t.Fatalf("IDs = %v, want [1 2 3]", ids)
			}
			tt.before(t, s, dir)

			s = open(t, dir, 0)
			if id := put(t, s, "d")[0]; id <= 3 {
				t.Errorf("ID after reopen = %d, want > 3", id)
			}
		})
	}
}

func TestBound(t *testing.T) {
	tests := []struct {
		name        string
		max         int
		puts        int
		wantIDs     []uint64
		wantDropped uint64
	}{
		{name: "max 3, put 5", max: 3, puts: 5, wantIDs: []uint64{3, 4, 5}, wantDropped: 2},
		{name: "max 3, put 3", max: 3, puts: 3, wantIDs: []uint64{1, 2, 3}, wantDropped: 0},
		{name: "max 1, put 4", max: 1, puts: 4, wantIDs: []uint64{4}, wantDropped: 3},
		{name: "default", max: 0, puts: 5, wantIDs: []uint64{1, 2, 3, 4, 5}, wantDropped: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, tt.max)
			var items []string
			for i := range tt.puts {
				items = append(items, strconv.Itoa(i+1))
			}
			put(t, s, items...)
			if got := s.Dropped(); got != tt.wantDropped {
				t.Errorf("Dropped = %d, want %d", got, tt.wantDropped)
			}
			if got := s.Len(); got != len(tt.wantIDs) {
				t.Errorf("Len = %d, want %d", got, len(tt.wantIDs))
			}
			// The survivors are the newest, also on disk.
			s = open(t, dir, tt.max)
			if got := s.Dropped(); got != 0 {
				t.Errorf("Dropped after reopen = %d, want 0", got)
			}
			var want []Entry
			for _, id := range tt.wantIDs {
				want = append(want, Entry{ID: id, Data: []byte(strconv.FormatUint(id, 10))})
			}
			checkEntries(t, drain(t, s), want)
		})
	}
}

func TestOpenWithSmallerBoundDropsOldest(t *testing.T) {
	dir := t.TempDir()
	ids := put(t, open(t, dir, 10), "a", "b", "c", "d", "e")
	s := open(t, dir, 2)
	if got := s.Dropped(); got != 3 {
		t.Errorf("Dropped = %d, want 3", got)
	}
	checkEntries(t, drain(t, s), entries(ids[3:], "d", "e"))
}

func TestReplace(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	ids := put(t, s, "a", "b", "c")
	if err := s.Replace(ids[1], []byte("signed b")); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if err := s.Replace(ids[0], []byte("signed a")); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if got := s.Len(); got != 3 {
		t.Errorf("Len = %d, want 3", got)
	}
	s = open(t, dir, 0)
	checkEntries(t, drain(t, s), entries(ids, "signed a", "signed b", "c"))
	if left := tempFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// Rewrite converts the entries its function changes, in place and durably,
// leaves the others and damaged files alone, and keeps IDs and order.
func TestRewrite(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	ids := put(t, s, "old a", "new b", "old c", "old d")
	// Damage the last entry: Rewrite skips it, Oldest sets it aside.
	if err := os.WriteFile(filepath.Join(dir, fileName(ids[3])), []byte("PSP1garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	var seen []string
	n, err := s.Rewrite(func(data []byte) ([]byte, bool) {
		seen = append(seen, string(data))
		rest, ok := bytes.CutPrefix(data, []byte("old "))
		return append([]byte("converted "), rest...), ok
	})
	if err != nil || n != 2 {
		t.Fatalf("Rewrite = %d, %v; want 2, nil", n, err)
	}
	if want := []string{"old a", "new b", "old c"}; !slices.Equal(seen, want) {
		t.Errorf("Rewrite saw %q, want %q oldest first without the damaged entry", seen, want)
	}
	s = open(t, dir, 0)
	checkEntries(t, drain(t, s), entries(ids[:3], "converted a", "new b", "converted c"))
	if got := s.Corrupt(); got != 1 {
		t.Errorf("Corrupt = %d after reopening, want the damaged entry set aside", got)
	}
	if left := tempFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

func TestReplaceNotFound(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, s *Spool) uint64
	}{
		{"never spooled", func(t *testing.T, s *Spool) uint64 { return 42 }},
		{"empty spool", func(t *testing.T, s *Spool) uint64 { drain(t, s); return 1 }},
		{"removed", func(t *testing.T, s *Spool) uint64 {
			if err := s.Remove(2); err != nil {
				t.Fatal(err)
			}
			return 2
		}},
		{"dropped when full", func(t *testing.T, s *Spool) uint64 {
			put(t, s, "d") // max is 3, so 1 goes
			return 1
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, 3)
			put(t, s, "a", "b", "c")
			id := tt.setup(t, s)
			n := s.Len()
			if err := s.Replace(id, []byte("x")); !errors.Is(err, ErrNotFound) {
				t.Errorf("Replace(%d) = %v, want ErrNotFound", id, err)
			}
			if got := s.Len(); got != n {
				t.Errorf("Len = %d after failed Replace, want %d", got, n)
			}
			if _, err := os.Stat(filepath.Join(dir, fileName(id))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed Replace left a file for %d: %v", id, err)
			}
			if left := tempFiles(t, dir); len(left) > 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

func TestRemoveMissing(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	ids := put(t, s, "a")
	for _, id := range []uint64{99, ids[0], ids[0]} {
		if err := s.Remove(id); err != nil {
			t.Errorf("Remove(%d) = %v, want nil", id, err)
		}
	}
	if got := s.Len(); got != 0 {
		t.Errorf("Len = %d, want 0", got)
	}
}

// damage overwrites path with contents, or with a mangled copy of itself
// when contents is nil.
func damage(t *testing.T, path string, contents []byte) {
	t.Helper()
	if contents == nil {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		contents = b[:len(b)-1]
	}
	if err := os.WriteFile(path, contents, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptEntrySetAside(t *testing.T) {
	valid, err := encode([]byte("payload b"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := slices.Clone(valid)
	flipped[len(flipped)-1] ^= 1
	badMagic := slices.Clone(valid)
	badMagic[0] = 'X'
	tests := []struct {
		name     string
		contents []byte
	}{
		{"empty", []byte{}},
		{"short header", valid[:headerSize-1]},
		{"header only", valid[:headerSize]},
		{"truncated payload", valid[:len(valid)-1]},
		{"trailing bytes", append(slices.Clone(valid), 0)},
		{"flipped payload bit", flipped},
		{"bad magic", badMagic},
		{"garbage", []byte("this is not a spool entry at all")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ids := put(t, open(t, dir, 0), "a", "b", "c")
			damage(t, filepath.Join(dir, fileName(ids[1])), tt.contents)

			s := open(t, dir, 0)
			if got := s.Corrupt(); got != 1 {
				t.Errorf("Corrupt = %d, want 1", got)
			}
			if got := s.Len(); got != 2 {
				t.Errorf("Len = %d, want 2", got)
			}
			checkEntries(t, drain(t, s), []Entry{{ids[0], []byte("a")}, {ids[2], []byte("c")}})

			// Kept, byte for byte, for whoever investigates.
			kept, err := os.ReadFile(filepath.Join(dir, corruptDir, fileName(ids[1])))
			if err != nil {
				t.Fatalf("damaged entry not in corrupt/: %v", err)
			}
			if !bytes.Equal(kept, tt.contents) {
				t.Errorf("corrupt/ holds %q, want %q", kept, tt.contents)
			}
			if _, err := os.Stat(filepath.Join(dir, fileName(ids[1]))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("damaged entry still in the spool: %v", err)
			}
		})
	}
}

func TestCorruptAfterOpen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	ids := put(t, s, "a", "b")
	damage(t, filepath.Join(dir, fileName(ids[0])), nil)

	e, ok, err := s.Oldest()
	if err != nil || !ok {
		t.Fatalf("Oldest = ok %v, err %v", ok, err)
	}
	checkEntries(t, []Entry{e}, entries(ids[1:], "b"))
	if got := s.Corrupt(); got != 1 {
		t.Errorf("Corrupt = %d, want 1", got)
	}
	if got := s.Len(); got != 1 {
		t.Errorf("Len = %d, want 1", got)
	}
	if _, err := os.Stat(filepath.Join(dir, corruptDir, fileName(ids[0]))); err != nil {
		t.Errorf("damaged entry not in corrupt/: %v", err)
	}
}

func TestCorruptNamesNotOverwritten(t *testing.T) {
	dir := t.TempDir()
	ids := put(t, open(t, dir, 0), "a")
	name := fileName(ids[0])
	if err := os.Mkdir(filepath.Join(dir, corruptDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, corruptDir, name), []byte("older"), 0o600); err != nil {
		t.Fatal(err)
	}
	damage(t, filepath.Join(dir, name), []byte("newer"))

	if s := open(t, dir, 0); s.Corrupt() != 1 {
		t.Errorf("Corrupt = %d, want 1", s.Corrupt())
	}
	for file, want := range map[string]string{name: "older", name + ".1": "newer"} {
		got, err := os.ReadFile(filepath.Join(dir, corruptDir, file))
		if err != nil || string(got) != want {
			t.Errorf("corrupt/%s = %q, %v; want %q", file, got, err, want)
		}
	}
}

func TestDamagedNextFile(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	ids := put(t, s, "a", "b")
	drain(t, s)
	damage(t, filepath.Join(dir, nextName), []byte("junk"))

	s = open(t, dir, 0)
	if _, err := os.Stat(filepath.Join(dir, corruptDir, nextName)); err != nil {
		t.Errorf("damaged next file not in corrupt/: %v", err)
	}
	if got := s.Corrupt(); got != 0 {
		t.Errorf("Corrupt = %d, want 0: the next file is not an entry", got)
	}
	// With the spool empty and the next file gone, nothing records the
	// earlier IDs; the spool still works, starting again from 1.
	if id := put(t, s, "c")[0]; id == 0 {
		t.Errorf("Put after losing the next file returned ID 0 (earlier IDs %v)", ids)
	}
}

func TestOpenRemovesTempFiles(t *testing.T) {
	dir := t.TempDir()
	ids := put(t, open(t, dir, 0), "a")
	for _, name := range []string{"123456.tmp", "other.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stranger := filepath.Join(dir, "README")
	if err := os.WriteFile(stranger, []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}

	s := open(t, dir, 0)
	if left := tempFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left after Open: %v", left)
	}
	if _, err := os.Stat(stranger); err != nil {
		t.Errorf("Open removed a file it does not own: %v", err)
	}
	checkEntries(t, drain(t, s), entries(ids, "a"))
}

func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+tempExt))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{file, filepath.Join(file, "sub")} {
		if _, err := Open(dir, 0); err == nil {
			t.Errorf("Open(%q) succeeded on a regular file", dir)
		}
	}
}

func TestModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Windows has no Unix permission bits")
	}
	dir := filepath.Join(t.TempDir(), "var", "spool")
	s := open(t, dir, 0)
	ids := put(t, s, "a", "b")
	if err := s.Replace(ids[0], []byte("A")); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ids[1]); err != nil { // newest: writes the next file
		t.Fatal(err)
	}
	damage(t, filepath.Join(dir, fileName(ids[0])), nil)
	if _, _, err := s.Oldest(); err != nil { // sets it aside: creates corrupt/
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want os.FileMode
	}{
		{dir, os.ModeDir | 0o700},
		{filepath.Join(dir, corruptDir), os.ModeDir | 0o700},
		{filepath.Join(dir, nextName), 0o600},
	}
	for _, tt := range tests {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tt.want {
			t.Errorf("mode of %s = %v, want %v", tt.path, fi.Mode(), tt.want)
		}
	}
	// Entry files, freshly put and replaced.
	ids = put(t, s, "c")
	if err := s.Replace(ids[0], []byte("C")); err != nil {
		t.Fatal(err)
	}
	put(t, s, "d")
	matches, err := filepath.Glob(filepath.Join(dir, "*"+entryExt))
	if err != nil || len(matches) != 2 {
		t.Fatalf("entry files %v, %v; want 2", matches, err)
	}
	for _, m := range matches {
		fi, err := os.Stat(m)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Errorf("mode of %s = %v, want -rw-------", m, fi.Mode())
		}
	}
}

func TestConcurrentPutAndConsume(t *testing.T) {
	const n = 300
	s := open(t, t.TempDir(), n)
	var wg sync.WaitGroup
	putErr := make(chan error, 1)
	wg.Go(func() {
		for i := range n {
			if _, err := s.Put([]byte(strconv.Itoa(i))); err != nil {
				putErr <- err
				return
			}
		}
	})

	var got []string
	var last uint64
	deadline := time.After(time.Minute)
	for len(got) < n {
		e, ok, err := s.Oldest()
		if err != nil {
			t.Fatalf("Oldest: %v", err)
		}
		if !ok {
			select {
			case <-s.Notify():
			case err := <-putErr:
				t.Fatalf("Put: %v", err)
			case <-deadline:
				t.Fatalf("timed out with %d of %d entries", len(got), n)
			}
			continue
		}
		if e.ID <= last {
			t.Fatalf("ID %d after %d", e.ID, last)
		}
		last = e.ID
		// Exercise the consumer's full cycle, as the agent does.
		if err := s.Replace(e.ID, append([]byte("signed "), e.Data...)); err != nil {
			t.Fatalf("Replace(%d): %v", e.ID, err)
		}
		got = append(got, string(e.Data))
		if err := s.Remove(e.ID); err != nil {
			t.Fatalf("Remove(%d): %v", e.ID, err)
		}
	}
	wg.Wait()

	for i, g := range got {
		if g != strconv.Itoa(i) {
			t.Fatalf("entry %d = %q, want %q (all: %v)", i, g, strconv.Itoa(i), got)
		}
	}
	if s.Len() != 0 || s.Dropped() != 0 || s.Corrupt() != 0 {
		t.Errorf("Len %d, Dropped %d, Corrupt %d; want all 0", s.Len(), s.Dropped(), s.Corrupt())
	}
}

func TestNotify(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	pending := func() bool {
		select {
		case <-s.Notify():
			return true
		default:
			return false
		}
	}
	if pending() {
		t.Fatal("Notify fired before any Put")
	}
	put(t, s, "a")
	if !pending() {
		t.Fatal("Notify did not fire after Put")
	}
	if pending() {
		t.Fatal("Notify fired twice for one Put")
	}
	// Puts never block on an unread notification; they coalesce.
	put(t, s, "b", "c")
	if !pending() {
		t.Fatal("Notify did not fire after two Puts")
	}
	if pending() {
		t.Fatal("Notify holds more than one wake-up")
	}
	// Only Put notifies.
	e, _, err := s.Oldest()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Replace(e.ID, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(e.ID); err != nil {
		t.Fatal(err)
	}
	if pending() {
		t.Error("Notify fired without a Put")
	}
}
