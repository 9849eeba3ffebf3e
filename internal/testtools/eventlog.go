package testtools

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"unicode/utf16"
)

// EventLog builds TCG PC Client crypto-agile event logs (the format of
// /sys/kernel/security/tpm0/binary_bios_measurements) with a SHA-256 bank,
// and tracks the PCR values their replay yields, so tests can extend a
// TPM's PCRs with exactly what the log says.
type EventLog struct {
	buf  bytes.Buffer
	pcrs map[uint32][]byte
}

// NewEventLog starts a log with its Spec ID Event03 header.
func NewEventLog() *EventLog {
	l := &EventLog{pcrs: map[uint32][]byte{}}
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, uint32(0))          // platform class: client
	spec.Write([]byte{0, 2, 0, 2})                               // spec version 2.0, errata 0, uintn size 2
	binary.Write(&spec, binary.LittleEndian, uint32(1))          // one algorithm
	binary.Write(&spec, binary.LittleEndian, [2]uint16{0xb, 32}) // SHA-256
	spec.WriteByte(0)                                            // no vendor info
	binary.Write(&l.buf, binary.LittleEndian, uint32(0))         // PCR 0
	binary.Write(&l.buf, binary.LittleEndian, uint32(3))         // EV_NO_ACTION
	l.buf.Write(make([]byte, 20))
	binary.Write(&l.buf, binary.LittleEndian, uint32(spec.Len()))
	l.buf.Write(spec.Bytes())
	return l
}

// Add appends an event whose SHA-256 digest is the hash of data, and
// returns that digest (what a TPM must be extended with).
func (l *EventLog) Add(pcr, eventType uint32, data []byte) []byte {
	sum := sha256.Sum256(data)
	l.AddDigest(pcr, eventType, sum[:], data)
	return sum[:]
}

// AddDigest appends an event with an explicit digest, which need not match
// its data (for tests of logs that lie).
func (l *EventLog) AddDigest(pcr, eventType uint32, digest, data []byte) {
	binary.Write(&l.buf, binary.LittleEndian, pcr)
	binary.Write(&l.buf, binary.LittleEndian, eventType)
	binary.Write(&l.buf, binary.LittleEndian, uint32(1))
	binary.Write(&l.buf, binary.LittleEndian, uint16(0xb))
	l.buf.Write(digest)
	binary.Write(&l.buf, binary.LittleEndian, uint32(len(data)))
	l.buf.Write(data)
	cur, ok := l.pcrs[pcr]
	if !ok {
		cur = make([]byte, 32)
	}
	h := sha256.New()
	h.Write(cur)
	h.Write(digest)
	l.pcrs[pcr] = h.Sum(nil)
}

// StartupLocality appends the EV_NO_ACTION event firmware records when the
// TPM started at locality, which sets PCR 0's initial value: PCRs then
// holds what a TPM started there would. Firmware records it before any
// measurement into PCR 0; tests of logs that lie may put it anywhere.
func (l *EventLog) StartupLocality(locality byte) {
	data := append([]byte("StartupLocality\x00"), locality)
	binary.Write(&l.buf, binary.LittleEndian, uint32(0)) // PCR 0
	binary.Write(&l.buf, binary.LittleEndian, uint32(3)) // EV_NO_ACTION
	binary.Write(&l.buf, binary.LittleEndian, uint32(1))
	binary.Write(&l.buf, binary.LittleEndian, uint16(0xb))
	l.buf.Write(make([]byte, 32)) // EV_NO_ACTION events are not measured
	binary.Write(&l.buf, binary.LittleEndian, uint32(len(data)))
	l.buf.Write(data)
	init := make([]byte, 32)
	init[31] = locality
	l.pcrs[0] = init
}

// Bytes is the log so far.
func (l *EventLog) Bytes() []byte { return bytes.Clone(l.buf.Bytes()) }

// PCRs are the SHA-256 PCR values replaying the log yields, from zeroed
// PCRs.
func (l *EventLog) PCRs() map[uint32][]byte { return l.pcrs }

// SecureBootVariable is the UEFI_VARIABLE_DATA firmware measures into PCR
// 7 (event type EV_EFI_VARIABLE_DRIVER_CONFIG, 0x80000001) for the
// SecureBoot variable.
func SecureBootVariable(enabled bool) []byte {
	var b bytes.Buffer
	// EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c, mixed-endian.
	b.Write([]byte{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c})
	name := utf16.Encode([]rune("SecureBoot"))
	binary.Write(&b, binary.LittleEndian, uint64(len(name)))
	binary.Write(&b, binary.LittleEndian, uint64(1))
	binary.Write(&b, binary.LittleEndian, name)
	if enabled {
		b.WriteByte(1)
	} else {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// ContinueEventLog continues an existing log, such as one a real machine
// wrote, whose replay yields pcrs: events added to it extend those values,
// the way a program extending PCRs after boot would.
func ContinueEventLog(log []byte, pcrs map[uint32][]byte) *EventLog {
	l := &EventLog{pcrs: make(map[uint32][]byte, len(pcrs))}
	l.buf.Write(log)
	for pcr, v := range pcrs {
		l.pcrs[pcr] = bytes.Clone(v)
	}
	return l
}
