package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf16"
)

// TCG PC Client event types this package reads.
const (
	evNoAction                = 0x00000003
	evEFIVariableDriverConfig = 0x80000001
	algSHA256                 = 0x000b
	specIDSignature           = "Spec ID Event03\x00"
	startupLocalitySignature  = "StartupLocality\x00"
	maxEventLogSize           = 4 << 20
	maxEventSize              = 1 << 20
	secureBootPCR             = 7
)

// ErrEventLogMismatch reports an event log whose replay does not produce
// the quoted PCR values: it is not the log of the boot the TPM measured.
var ErrEventLogMismatch = errors.New("event log does not replay to the quoted PCR values")

// MeasuredBoot is what a verified event log says about the boot.
type MeasuredBoot struct {
	// Events is the number of measured events replayed.
	Events int
	// SecureBootKnown is true when PCR 7 holds a SecureBoot variable
	// measurement whose digest matches its data.
	SecureBootKnown bool
	// SecureBoot is the measured UEFI SecureBoot variable.
	SecureBoot bool
	// Reason explains an unknown secure boot state.
	Reason string
}

type logEvent struct {
	pcr    uint32
	typ    uint32
	sha256 []byte
	data   []byte
}

// ReplayEventLog parses a TCG PC Client crypto-agile event log
// (binary_bios_measurements), replays its SHA-256 bank, and checks every
// PCR it measures against the quoted values, which must come from a
// verified quote. Only then does it read the log: the measured SecureBoot
// variable in PCR 7, trusted only when its digest is the hash of its data.
func ReplayEventLog(log []byte, quoted map[uint32][]byte) (*MeasuredBoot, error) {
	if len(log) > maxEventLogSize {
		return nil, fmt.Errorf("event log of %d bytes is larger than %d", len(log), maxEventLogSize)
	}
	events, err := parseEventLog(log)
	if err != nil {
		return nil, err
	}
	pcrs := map[uint32][]byte{}
	touched := map[uint32]bool{}
	for _, e := range events {
		if e.typ == evNoAction {
			if e.pcr == 0 && bytes.HasPrefix(e.data, []byte(startupLocalitySignature)) && len(e.data) > len(startupLocalitySignature) {
				init := make([]byte, sha256.Size)
				init[sha256.Size-1] = e.data[len(startupLocalitySignature)]
				pcrs[0] = init
			}
			continue
		}
		cur, ok := pcrs[e.pcr]
		if !ok {
			cur = make([]byte, sha256.Size)
		}
		h := sha256.New()
		h.Write(cur)
		h.Write(e.sha256)
		pcrs[e.pcr] = h.Sum(nil)
		touched[e.pcr] = true
	}
	mb := &MeasuredBoot{}
	for pcr := range touched {
		want, ok := quoted[pcr]
		if !ok {
			continue // not quoted: nothing to check it against, and nothing read from it below unless PCR 7 is quoted
		}
		if !bytes.Equal(pcrs[pcr], want) {
			return nil, fmt.Errorf("PCR %d: %w", pcr, ErrEventLogMismatch)
		}
	}
	for _, e := range events {
		if e.typ != evNoAction {
			mb.Events++
		}
	}
	if _, ok := quoted[secureBootPCR]; !ok {
		mb.Reason = "PCR 7 is not quoted, so the log's secure boot events cannot be trusted"
		return mb, nil
	}
	mb.Reason = "no SecureBoot variable measurement in PCR 7"
	for _, e := range events {
		if e.pcr != secureBootPCR || e.typ != evEFIVariableDriverConfig {
			continue
		}
		name, value, err := parseVariableData(e.data)
		if err != nil || name != "SecureBoot" {
			continue
		}
		if sum := sha256.Sum256(e.data); !bytes.Equal(sum[:], e.sha256) {
			mb.Reason = "the SecureBoot event's data does not match its measured digest"
			continue
		}
		mb.SecureBootKnown, mb.Reason = true, ""
		mb.SecureBoot = len(value) == 1 && value[0] == 1
	}
	return mb, nil
}

// parseEventLog reads the SHA-1-format header event with the Spec ID
// Event03 and then the crypto-agile TCG_PCR_EVENT2 entries.
func parseEventLog(log []byte) ([]logEvent, error) {
	r := bytes.NewReader(log)
	var hdr struct {
		PCR, Type uint32
		Digest    [20]byte
		Size      uint32
	}
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, fmt.Errorf("event log header: %w", err)
	}
	if hdr.Type != evNoAction || hdr.Size > maxEventSize || int(hdr.Size) > r.Len() {
		return nil, errors.New("event log does not start with a Spec ID event: not a crypto-agile TCG event log")
	}
	spec := make([]byte, hdr.Size)
	r.Read(spec)
	sizes, err := parseSpecID(spec)
	if err != nil {
		return nil, err
	}
	if _, ok := sizes[algSHA256]; !ok {
		return nil, errors.New("event log has no SHA-256 bank")
	}
	var events []logEvent
	for r.Len() > 0 {
		var e logEvent
		var count uint32
		if err := binary.Read(r, binary.LittleEndian, &e.pcr); err != nil {
			return nil, fmt.Errorf("event %d: %w", len(events), err)
		}
		if err := binary.Read(r, binary.LittleEndian, &e.typ); err != nil {
			return nil, fmt.Errorf("event %d: %w", len(events), err)
		}
		if err := binary.Read(r, binary.LittleEndian, &count); err != nil {
			return nil, fmt.Errorf("event %d: %w", len(events), err)
		}
		if e.pcr > 23 || count > 16 {
			return nil, fmt.Errorf("event %d: PCR %d with %d digests is not a valid event", len(events), e.pcr, count)
		}
		for range count {
			var alg uint16
			if err := binary.Read(r, binary.LittleEndian, &alg); err != nil {
				return nil, fmt.Errorf("event %d: %w", len(events), err)
			}
			size, ok := sizes[alg]
			if !ok || int(size) > r.Len() {
				return nil, fmt.Errorf("event %d: digest algorithm 0x%04x is not declared in the Spec ID event", len(events), alg)
			}
			d := make([]byte, size)
			r.Read(d)
			if alg == algSHA256 {
				e.sha256 = d
			}
		}
		var size uint32
		if err := binary.Read(r, binary.LittleEndian, &size); err != nil {
			return nil, fmt.Errorf("event %d: %w", len(events), err)
		}
		if size > maxEventSize || int(size) > r.Len() {
			return nil, fmt.Errorf("event %d: event data of %d bytes runs past the log", len(events), size)
		}
		e.data = make([]byte, size)
		r.Read(e.data)
		if e.sha256 == nil && e.typ != evNoAction {
			return nil, fmt.Errorf("event %d: no SHA-256 digest", len(events))
		}
		events = append(events, e)
	}
	return events, nil
}

// parseSpecID returns the digest size of each algorithm the log declares.
func parseSpecID(b []byte) (map[uint16]uint16, error) {
	if !bytes.HasPrefix(b, []byte(specIDSignature)) || len(b) < 28 {
		return nil, errors.New("event log header is not a Spec ID Event03")
	}
	r := bytes.NewReader(b[len(specIDSignature)+8:]) // platform class, versions, errata, uintn size
	var n uint32
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || n == 0 || n > 16 {
		return nil, errors.New("spec ID event: bad algorithm count")
	}
	sizes := map[uint16]uint16{}
	for range n {
		var a struct{ Alg, Size uint16 }
		if err := binary.Read(r, binary.LittleEndian, &a); err != nil {
			return nil, fmt.Errorf("spec ID event: %w", err)
		}
		sizes[a.Alg] = a.Size
	}
	return sizes, nil
}

// parseVariableData reads a UEFI_VARIABLE_DATA structure: the variable's
// GUID, name and value.
func parseVariableData(b []byte) (name string, value []byte, err error) {
	if len(b) < 32 {
		return "", nil, errors.New("short UEFI_VARIABLE_DATA")
	}
	nameLen := binary.LittleEndian.Uint64(b[16:24])
	dataLen := binary.LittleEndian.Uint64(b[24:32])
	if nameLen > 1024 || dataLen > maxEventSize || uint64(len(b)) < 32+2*nameLen+dataLen {
		return "", nil, errors.New("UEFI_VARIABLE_DATA lengths run past the event")
	}
	u := make([]uint16, nameLen)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[32+2*i:])
	}
	start := 32 + 2*nameLen
	return string(utf16.Decode(u)), b[start : start+dataLen], nil
}
