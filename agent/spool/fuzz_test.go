package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/posture-project/posture/internal/testtools/fuzzseed"
)

// spoolSeeds are entry and next-ID files: valid ones, and the damage a
// crash, a full disk or something outside the agent leaves.
func spoolSeeds(f *testing.F) {
	valid := func(data []byte) []byte {
		b, err := encode(data)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	nextFile := func(n uint64) []byte { return valid(binary.BigEndian.AppendUint64(nil, n)) }
	report := []byte("\x12\x06laptop\x18\x07") // a few fields of a PostureReport
	fuzzseed.Add(f, valid(report), []byte(nil))
	fuzzseed.Add(f, valid(nil), nextFile(42))
	fuzzseed.Add(f, valid(bytes.Repeat([]byte{0xff}, 300)), nextFile(1))
	torn := valid(report)
	fuzzseed.Add(f, torn[:len(torn)-3], nextFile(0))
	garbled := valid(report)
	garbled[headerSize] ^= 0x40
	fuzzseed.Add(f, garbled, []byte("PSP1"))
	fuzzseed.Add(f, []byte("PSP0\x00\x00\x00\x00\x00\x00\x00\x00"), nextFile(1<<63))
	fuzzseed.Add(f, []byte{}, valid([]byte{1, 2, 3}))
}

// FuzzRecord decodes arbitrary bytes as a spool record. decode must never
// panic, must refuse what it refuses as errInvalid, and must agree with
// encode: a record that decodes is exactly the encoding of its payload,
// and every payload survives encode and decode. A file name is an entry's
// only when fileName gives it for its ID.
func FuzzRecord(f *testing.F) {
	spoolSeeds(f)
	f.Fuzz(func(t *testing.T, record, name []byte) {
		payload, err := decode(record)
		if err == nil {
			if again, err := encode(payload); err != nil || !bytes.Equal(again, record) {
				t.Fatalf("decode accepted a record that is not the encoding of its payload (%v)", err)
			}
		} else if !errors.Is(err, errInvalid) {
			t.Fatalf("decode refused a record with %v, which is not errInvalid", err)
		}
		enc, err := encode(record)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := decode(enc); err != nil || !bytes.Equal(got, record) {
			t.Fatalf("decode(encode(x)) = %q, %v; want x", got, err)
		}
		if id, ok := parseName(string(name)); ok && fileName(id) != string(name) {
			t.Fatalf("parseName(%q) = %d, whose file name is %q", name, id, fileName(id))
		}
	})
}

// FuzzOpen puts arbitrary bytes where the spool keeps an entry (and, when
// next is not empty, where it keeps the next ID) and opens the directory,
// as an agent does after a crash, a full disk or outside damage. Open must
// never panic; an entry whose bytes are a valid record comes back exactly,
// one that is not is reported (Corrupt), moved to corrupt/ and never
// returned, and whatever the files said, the next ID is one no entry had.
func FuzzOpen(f *testing.F) {
	spoolSeeds(f)
	const id = 7 // the entry's file name: 00000000000000000007.rep
	f.Fuzz(func(t *testing.T, entry, next []byte) {
		payload, decErr := decode(entry)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, fileName(id)), entry, 0o600); err != nil {
			t.Fatal(err)
		}
		if len(next) > 0 {
			if err := os.WriteFile(filepath.Join(dir, nextName), next, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(dir, 0)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		e, ok, err := s.Oldest()
		if err != nil {
			t.Fatalf("Oldest: %v", err)
		}
		if decErr == nil {
			if !ok || e.ID != id || !bytes.Equal(e.Data, payload) || s.Corrupt() != 0 {
				t.Fatalf("a valid record came back as %d:%q (found %v, corrupt %d); want %d:%q", e.ID, e.Data, ok, s.Corrupt(), id, payload)
			}
		} else {
			if ok || s.Len() != 0 || s.Corrupt() != 1 {
				t.Fatalf("a damaged record (%v): returned %v, %d entries, %d corrupt; want none returned and 1 corrupt", decErr, ok, s.Len(), s.Corrupt())
			}
			if _, err := os.Stat(filepath.Join(dir, corruptDir, fileName(id))); err != nil {
				t.Fatalf("the damaged record was not kept in %s/: %v", corruptDir, err)
			}
		}
		// IDs only grow: the next Put must not reuse the entry's ID, nor
		// go below a next ID saved intact.
		s.mu.Lock()
		nextID := s.next
		s.mu.Unlock()
		if nextID != 0 && nextID <= id {
			t.Fatalf("after opening, the next ID is %d, which an entry already had (%d)", nextID, id)
		}
		if p, err := decode(next); err == nil && len(p) == 8 {
			if n := binary.BigEndian.Uint64(p); n != 0 && nextID != 0 && nextID < n {
				t.Fatalf("after opening, the next ID is %d, below the saved next ID %d", nextID, n)
			}
		}
	})
}
