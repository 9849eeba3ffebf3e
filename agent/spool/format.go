package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"strconv"
	"strings"
)

// An entry file is a 12-byte header followed by the payload:
//
//	magic   4 bytes  "PSP1" (the digit is the format version)
//	length  4 bytes  big-endian payload length
//	crc     4 bytes  big-endian CRC-32C (Castagnoli) of the payload
//
// The length catches truncation and the CRC catches torn or garbled
// writes that happen to keep the size.
const (
	magic      = "PSP1"
	headerSize = 12
	entryExt   = ".rep"
	tempExt    = ".tmp"
	nextName   = "next"
	corruptDir = "corrupt"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errInvalid marks a file whose bytes are not a valid entry.
var errInvalid = errors.New("invalid spool entry")

// encode returns the file contents for data.
func encode(data []byte) ([]byte, error) {
	if uint64(len(data)) > math.MaxUint32 {
		return nil, fmt.Errorf("entry of %d bytes exceeds the 4 GiB limit: %w", len(data), errInvalid)
	}
	buf := make([]byte, headerSize+len(data))
	copy(buf, magic)
	binary.BigEndian.PutUint32(buf[4:], uint32(len(data)))
	binary.BigEndian.PutUint32(buf[8:], crc32.Checksum(data, castagnoli))
	copy(buf[headerSize:], data)
	return buf, nil
}

// decode checks the header of an entry file and returns its payload,
// which aliases buf.
func decode(buf []byte) ([]byte, error) {
	if len(buf) < headerSize {
		return nil, fmt.Errorf("%d bytes is shorter than the header: %w", len(buf), errInvalid)
	}
	if string(buf[:4]) != magic {
		return nil, fmt.Errorf("bad magic %q: %w", buf[:4], errInvalid)
	}
	n := binary.BigEndian.Uint32(buf[4:])
	payload := buf[headerSize:]
	if uint64(n) != uint64(len(payload)) {
		return nil, fmt.Errorf("header says %d bytes, file holds %d: %w", n, len(payload), errInvalid)
	}
	if sum := crc32.Checksum(payload, castagnoli); sum != binary.BigEndian.Uint32(buf[8:]) {
		return nil, fmt.Errorf("checksum mismatch: %w", errInvalid)
	}
	return payload, nil
}

// idWidth is the number of decimal digits in the largest uint64, so that
// file names sort in ID order.
const idWidth = 20

// fileName returns the name of the entry file for id.
func fileName(id uint64) string {
	return fmt.Sprintf("%0*d%s", idWidth, id, entryExt)
}

// parseName returns the ID an entry file name encodes. Only names that
// fileName could have produced are accepted, so stray files are left alone.
func parseName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, entryExt)
	if !ok || len(digits) != idWidth {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	id, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, false
	}
	return id, true
}
