package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unicode/utf16"
)

// TCG PC Client event types this package reads.
const (
	evNoAction                = 0x00000003
	evSeparator               = 0x00000004
	evEFIVariableDriverConfig = 0x80000001
	algSHA256                 = 0x000b
	specIDSignature           = "Spec ID Event03\x00"
	startupLocalitySignature  = "StartupLocality\x00"
	maxEventSize              = 1 << 20
	secureBootPCR             = 7
)

// MaxEventLogSize is the largest event log ReplayEventLog reads. Firmware
// writes its log into an area it reserves at boot, 64 KiB by default in
// EDK2 (PcdTcgLogAreaMinLen), and the four real logs in testdata/eventlog
// are 15–38 KB. 1 MiB leaves room for firmware that reserves more, with
// many option ROMs, and boot loaders that add their own events.
const MaxEventLogSize = 1 << 20

// efiGlobalVariable is EFI_GLOBAL_VARIABLE, the GUID of the SecureBoot
// variable, 8be4df61-93ca-11d2-aa0d-00e098032b8c, as UEFI_VARIABLE_DATA
// stores it (its first three fields little-endian).
var efiGlobalVariable = [16]byte{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}

// separatorDigests are the SHA-256 digests of the values an EV_SEPARATOR
// measures: 0, or after an error 1 (FFFFFFFF in older logs). Knowing one
// too many can only end PCR 7's firmware part earlier, never later.
var separatorDigests = func() [][]byte {
	var out [][]byte
	for _, v := range []uint32{0, 1, 0xffffffff} {
		sum := sha256.Sum256(binary.LittleEndian.AppendUint32(nil, v))
		out = append(out, sum[:])
	}
	return out
}()

// ErrEventLogMismatch reports an event log whose replay does not produce
// the quoted PCR values: it is not the log of the boot the TPM measured.
var ErrEventLogMismatch = errors.New("event log does not replay to the quoted PCR values")

// MeasuredBoot is what a verified event log says about the boot.
type MeasuredBoot struct {
	// Events is the number of measured events replayed.
	Events int
	// SecureBootKnown is true when PCR 7 holds, before its first
	// separator, exactly one measurement of the SecureBoot variable, and
	// that measurement's digest matches its data.
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
// verified quote. Only then does it read the log: the SecureBoot variable
// the firmware measured into PCR 7 (see readSecureBoot).
func ReplayEventLog(log []byte, quoted map[uint32][]byte) (*MeasuredBoot, error) {
	if len(log) > MaxEventLogSize {
		return nil, fmt.Errorf("event log of %d bytes is larger than %d", len(log), MaxEventLogSize)
	}
	events, err := parseEventLog(log)
	if err != nil {
		return nil, err
	}
	pcrs := map[uint32][]byte{}
	touched := map[uint32]bool{}
	for i, e := range events {
		if e.typ == evNoAction {
			if e.pcr == 0 && bytes.HasPrefix(e.data, []byte(startupLocalitySignature)) && len(e.data) > len(startupLocalitySignature) {
				// The locality the TPM started at sets PCR 0's initial
				// value, so it is recorded before anything is measured
				// into PCR 0. One after such measurements would start
				// the replay of PCR 0 afresh, and the measurements
				// before it could be anything.
				if touched[0] {
					return nil, fmt.Errorf("event %d: StartupLocality event after measurements into PCR 0, where firmware records it before measuring anything: the log does not describe a boot", i)
				}
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
	mb.SecureBootKnown, mb.SecureBoot, mb.Reason = readSecureBoot(events)
	return mb, nil
}

// readSecureBoot reads the SecureBoot variable from PCR 7's events in a
// log that replays. Firmware measures it once, as an
// EV_EFI_VARIABLE_DRIVER_CONFIG event for the EFI global variable, before
// the EV_SEPARATOR it measures when it hands over to the boot loader.
// Whatever follows the separator was measured once the boot loader ran,
// and the OS can extend PCR 7 with any event it likes, so only events
// before the first separator count, and only when there is exactly one.
func readSecureBoot(events []logEvent) (known, enabled bool, reason string) {
	var found []logEvent
	var value []byte
	separated := false
	for _, e := range events {
		if e.pcr != secureBootPCR || e.typ == evNoAction {
			continue
		}
		if isSeparator(e) {
			separated = true
			break
		}
		if e.typ != evEFIVariableDriverConfig {
			continue
		}
		guid, name, v, err := parseVariableData(e.data)
		if err == nil && name == "SecureBoot" && guid == efiGlobalVariable {
			found, value = append(found, e), v
		}
	}
	switch {
	case !separated:
		return false, false, "PCR 7 has no EV_SEPARATOR, so the log cannot show what the firmware measured before the boot loader started; the log is cut short or the firmware does not follow the TCG PC Client spec"
	case len(found) == 0:
		return false, false, "the firmware measured no SecureBoot variable into PCR 7 before the boot loader started (legacy BIOS boot, or firmware without secure boot)"
	case len(found) > 1:
		return false, false, fmt.Sprintf("PCR 7 holds %d measurements of the SecureBoot variable before its EV_SEPARATOR where firmware makes one, so the log does not say which state the machine booted in; check the device's firmware", len(found))
	}
	if sum := sha256.Sum256(found[0].data); !bytes.Equal(sum[:], found[0].sha256) {
		return false, false, "the SecureBoot event's data does not match its measured digest"
	}
	return true, len(value) == 1 && value[0] == 1, ""
}

// isSeparator says whether an event is, or may be, a separator. Event types
// are not measured, only digests are: the digest of a separator's value
// counts as a separator whatever type the log gives it, so that a log
// cannot relabel the firmware's separator and pass events extended after
// boot off as measured before it.
func isSeparator(e logEvent) bool {
	return e.typ == evSeparator || slices.ContainsFunc(separatorDigests, func(d []byte) bool { return bytes.Equal(d, e.sha256) })
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
func parseVariableData(b []byte) (guid [16]byte, name string, value []byte, err error) {
	if len(b) < 32 {
		return guid, "", nil, errors.New("short UEFI_VARIABLE_DATA")
	}
	copy(guid[:], b)
	nameLen := binary.LittleEndian.Uint64(b[16:24])
	dataLen := binary.LittleEndian.Uint64(b[24:32])
	if nameLen > 1024 || dataLen > maxEventSize || uint64(len(b)) < 32+2*nameLen+dataLen {
		return guid, "", nil, errors.New("UEFI_VARIABLE_DATA lengths run past the event")
	}
	u := make([]uint16, nameLen)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[32+2*i:])
	}
	start := 32 + 2*nameLen
	return guid, string(utf16.Decode(u)), b[start : start+dataLen], nil
}
