package spool

import (
	"bytes"
	"errors"
	"math"
	"testing"
)

func TestEncodeDecode(t *testing.T) {
	for _, data := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte{0xff}, 4096)} {
		buf, err := encode(data)
		if err != nil {
			t.Fatalf("encode(%d bytes): %v", len(data), err)
		}
		if len(buf) != headerSize+len(data) {
			t.Errorf("encoded %d bytes into %d, want %d", len(data), len(buf), headerSize+len(data))
		}
		got, err := decode(buf)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("decode(encode(%d bytes)) = %d bytes, %v", len(data), len(got), err)
		}
	}
}

func TestFileNames(t *testing.T) {
	for _, id := range []uint64{0, 1, 42, math.MaxUint64} {
		name := fileName(id)
		if len(name) != idWidth+len(entryExt) {
			t.Errorf("fileName(%d) = %q: want fixed width", id, name)
		}
		if got, ok := parseName(name); !ok || got != id {
			t.Errorf("parseName(%q) = %d, %v; want %d", name, got, ok, id)
		}
	}
	if fileName(42) != "00000000000000000042.rep" {
		t.Errorf("fileName(42) = %q", fileName(42))
	}
	for _, name := range []string{
		"42.rep",
		"00000000000000000042.tmp",
		"0000000000000000004a.rep",
		"+0000000000000000042.rep",
		"99999999999999999999.rep", // beyond uint64
		"00000000000000000042.rep.1",
		"next",
	} {
		if id, ok := parseName(name); ok {
			t.Errorf("parseName(%q) = %d, accepted", name, id)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	if _, err := decode([]byte("PSP1")); !errors.Is(err, errInvalid) {
		t.Errorf("decode(short) = %v, want errInvalid", err)
	}
}
