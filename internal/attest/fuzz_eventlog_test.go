package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools"
	"github.com/posture-project/posture/internal/testtools/fuzzseed"
)

// capturedLogs are the real event logs in testdata/eventlog.
var capturedLogs = []string{"rhel8-uefi", "ubuntu-2104-no-secure-boot", "glinux-alex", "arch-linux-workstation"}

// FuzzReplayEventLog replays arbitrary bytes as an event log against the
// PCR values of a real machine (which selects one of the captures in
// testdata/eventlog, or none; its top bit leaves PCR 7 out). It must never
// panic. A log it accepts reproduces every quoted PCR it measures: the
// same log against a value changed in one quoted PCR (flip picks it) is
// refused as ErrEventLogMismatch, unless the log never measured that PCR,
// when the answer is the same. Without PCR 7 quoted, secure boot stays
// unknown.
func FuzzReplayEventLog(f *testing.F) {
	sets := make([]map[uint32][]byte, 0, len(capturedLogs)+1)
	for i, name := range capturedLogs {
		log, pcrs := firmwareLog(f, name)
		sets = append(sets, pcrs)
		// The captures are kept in testdata/eventlog, not copied into
		// the corpus directory.
		f.Add(log, byte(i), byte(7))
		f.Add(log, byte(i)|0x80, byte(0))
	}
	sets = append(sets, map[uint32][]byte{})
	built := testtools.NewEventLog()
	built.StartupLocality(3)
	built.Add(0, 0x80000008, []byte("platform firmware blob"))
	built.Add(7, evEFIVariableDriverConfig, testtools.SecureBootVariable(true))
	built.Add(7, evSeparator, separator)
	fuzzseed.Add(f, built.Bytes(), byte(len(capturedLogs)), byte(0))
	fuzzseed.Add(f, built.Bytes()[:60], byte(0), byte(0))

	f.Fuzz(func(t *testing.T, log []byte, which, flip byte) {
		quoted := maps.Clone(sets[int(which&0x7f)%len(sets)])
		if which&0x80 != 0 {
			delete(quoted, secureBootPCR)
		}
		mb, err := ReplayEventLog(log, quoted)
		if err != nil {
			if mb != nil {
				t.Fatalf("ReplayEventLog returned %+v with error %v", mb, err)
			}
			return
		}
		if _, ok := quoted[secureBootPCR]; !ok && mb.SecureBootKnown {
			t.Fatal("secure boot known from a log without PCR 7 quoted")
		}
		if mb.SecureBootKnown == (mb.Reason != "") {
			t.Fatalf("secure boot known=%v with reason %q", mb.SecureBootKnown, mb.Reason)
		}
		if keys := slices.Sorted(maps.Keys(quoted)); len(keys) > 0 {
			p := keys[int(flip)%len(keys)]
			changed := maps.Clone(quoted)
			changed[p] = bytes.Clone(changed[p])
			if len(changed[p]) == 0 {
				changed[p] = []byte{0}
			}
			changed[p][0] ^= 1
			again, err := ReplayEventLog(log, changed)
			switch {
			case errors.Is(err, ErrEventLogMismatch):
			case err != nil:
				t.Fatalf("changing quoted PCR %d: %v, want ErrEventLogMismatch or the same answer", p, err)
			case *again != *mb:
				t.Fatalf("changing quoted PCR %d, which the log does not measure, changed the answer from %+v to %+v", p, mb, again)
			}
		}
	})
}

// Kinds of event in FuzzReplayBuiltEventLog's input.
const (
	kindSecureBoot         = iota // the SecureBoot variable, enabled or not
	kindSeparator                 // EV_SEPARATOR of 0, 1, 0xffffffff or 2
	kindLocality                  // StartupLocality (PCR 0, not measured)
	kindLyingSecureBoot           // the SecureBoot variable with the digest of the other value
	kindVendorSecureBoot          // a SecureBoot variable of another GUID
	kindRelabeledSeparator        // a separator's value in an EV_EFI_ACTION
	kindOther                     // an event of another type, with data from the input
	kinds
)

// otherTypes are event types of kindOther: none is read, and none is a
// separator or the SecureBoot variable's type.
var otherTypes = []uint32{0x80000008, 0x80000003, 0x80000002, 0x0000000d, 0x80000007, 0x00000005}

// builtEvent is one event of a built log, with what the rules make of it.
type builtEvent struct {
	pcr        uint32
	measured   bool // extended into its PCR (every kind but StartupLocality)
	separator  bool // its type or digest says separator
	secureBoot bool // the SecureBoot variable of the EFI global GUID, as EV_EFI_VARIABLE_DRIVER_CONFIG
	enabled    bool
	lying      bool // its digest is not its data's
}

// buildLog turns fuzz input into an event log, its PCR values and what
// each event is. Each event takes a kind byte (its kind; bit 7 set means
// enabled), a PCR byte (below 128: PCR 7, else PCR (b-128) mod 24) and,
// for kindOther, a length byte and that much data.
func buildLog(spec []byte) (*testtools.EventLog, []builtEvent) {
	l := testtools.NewEventLog()
	var events []builtEvent
	for len(spec) >= 2 {
		k, pb := spec[0], spec[1]
		spec = spec[2:]
		pcr := uint32(secureBootPCR)
		if pb >= 128 {
			pcr = uint32(pb-128) % 24
		}
		enabled := k&0x80 != 0
		e := builtEvent{pcr: pcr, measured: true, enabled: enabled}
		switch int(k&0x7f) % kinds {
		case kindSecureBoot:
			l.Add(pcr, evEFIVariableDriverConfig, testtools.SecureBootVariable(enabled))
			e.secureBoot = true
		case kindSeparator:
			v := []uint32{0, 1, 0xffffffff, 2}[pb%4]
			l.Add(pcr, evSeparator, binary.LittleEndian.AppendUint32(nil, v))
			e.separator = true
		case kindLocality:
			l.StartupLocality(pb)
			e = builtEvent{pcr: 0}
		case kindLyingSecureBoot:
			other := sha256.Sum256(testtools.SecureBootVariable(!enabled))
			l.AddDigest(pcr, evEFIVariableDriverConfig, other[:], testtools.SecureBootVariable(enabled))
			e.secureBoot, e.lying = true, true
		case kindVendorSecureBoot:
			data := testtools.SecureBootVariable(enabled)
			data[0] ^= 0xff
			l.Add(pcr, evEFIVariableDriverConfig, data)
		case kindRelabeledSeparator:
			l.Add(pcr, 0x80000007, separator)
			e.separator = true
		case kindOther:
			n := 0
			if len(spec) > 0 {
				n, spec = min(int(spec[0]), len(spec)-1), spec[1:]
			}
			data := spec[:n]
			spec = spec[n:]
			sum := sha256.Sum256(data)
			l.Add(pcr, otherTypes[int(k)%len(otherTypes)], data)
			e.separator = slices.ContainsFunc(separatorDigests, func(d []byte) bool { return bytes.Equal(d, sum[:]) })
		}
		events = append(events, e)
	}
	return l, events
}

// FuzzReplayBuiltEventLog builds well-formed event logs from its input
// (see buildLog) and replays each against the PCR values it yields, as a
// TPM would hold them after that boot. The replay must accept every such
// log (but one whose StartupLocality event follows a measurement into PCR
// 0, which it must refuse), refuse it when any measured PCR's value is
// changed, and read secure boot by the rules: from the one SecureBoot
// variable of the EFI global GUID measured into PCR 7 before its first
// separator, whose digest matches its data; unknown otherwise.
func FuzzReplayBuiltEventLog(f *testing.F) {
	sb := func(enabled bool) byte {
		if enabled {
			return kindSecureBoot | 0x80
		}
		return kindSecureBoot
	}
	pcr := func(p byte) byte { return 128 + p }
	for _, spec := range [][]byte{
		{kindOther, pcr(0), 3, 'f', 'w', '1', sb(true), 7, kindSeparator, 7, kindOther, pcr(4), 2, 'b', 'l'}, // secure boot on
		{kindLocality, 3, kindOther, pcr(0), 0, sb(false), 7, kindSeparator, 7},                              // off, after StartupLocality
		{sb(false), 7, sb(true), 7, kindSeparator, 7},                                                        // measured twice
		{sb(true), 7}, // no separator
		{kindLyingSecureBoot | 0x80, 7, kindSeparator, 7},                        // digest of "off", data "on"
		{kindVendorSecureBoot | 0x80, 7, sb(false), 7, kindSeparator, 7},         // another GUID beside the global one
		{kindRelabeledSeparator, 7, sb(true), 7, kindSeparator, 7},               // separator relabeled, forged event after
		{sb(true), 7, kindSeparator, 7, sb(false), 7},                            // extended after the separator
		{kindOther, pcr(0), 0, kindLocality, 0, sb(true), 7, kindSeparator, 7},   // StartupLocality after PCR 0 measurements
		{kindOther, 7, 4, 1, 0, 0, 0, sb(true), 7, kindSeparator, 7},             // a separator's value under another type
		{kindSeparator, pcr(7), kindOther, pcr(23), 1, 'x', kindSeparator, 1, 0}, // separator after a firmware error
	} {
		fuzzseed.Add(f, spec)
	}
	f.Fuzz(func(t *testing.T, spec []byte) {
		l, events := buildLog(spec)
		pcrs := l.PCRs()
		mb, err := ReplayEventLog(l.Bytes(), pcrs)

		touched0 := false
		for _, e := range events {
			if !e.measured && touched0 {
				if err == nil || !strings.Contains(err.Error(), "StartupLocality event after measurements into PCR 0") {
					t.Fatalf("a StartupLocality event after measurements into PCR 0: %+v, %v; want it refused", mb, err)
				}
				return
			}
			touched0 = touched0 || (e.measured && e.pcr == 0)
		}
		if err != nil {
			t.Fatalf("a well-formed log does not replay to the PCR values it yields: %v", err)
		}

		measured := map[uint32]bool{}
		var inPCR7 []builtEvent
		for _, e := range events {
			if e.measured {
				measured[e.pcr] = true
				if e.pcr == secureBootPCR {
					inPCR7 = append(inPCR7, e)
				}
			}
		}
		var want MeasuredBoot
		for _, e := range events {
			if e.measured {
				want.Events++
			}
		}
		var found []builtEvent
		separated := false
		for _, e := range inPCR7 {
			if e.separator {
				separated = true
				break
			}
			if e.secureBoot {
				found = append(found, e)
			}
		}
		switch {
		case !measured[secureBootPCR]:
			want.Reason = "PCR 7 is not quoted"
		case !separated:
			want.Reason = "PCR 7 has no EV_SEPARATOR"
		case len(found) == 0:
			want.Reason = "the firmware measured no SecureBoot variable"
		case len(found) > 1:
			want.Reason = "measurements of the SecureBoot variable"
		case found[0].lying:
			want.Reason = "does not match its measured digest"
		default:
			want.SecureBootKnown, want.SecureBoot = true, found[0].enabled
		}
		if mb.Events != want.Events || mb.SecureBootKnown != want.SecureBootKnown || mb.SecureBoot != want.SecureBoot ||
			(want.Reason == "") != (mb.Reason == "") || !strings.Contains(mb.Reason, want.Reason) {
			t.Fatalf("replay read %+v, want %+v", *mb, want)
		}

		for p := range measured {
			changed := maps.Clone(pcrs)
			changed[p] = bytes.Clone(changed[p])
			changed[p][31] ^= 0x80
			if _, err := ReplayEventLog(l.Bytes(), changed); !errors.Is(err, ErrEventLogMismatch) {
				t.Fatalf("the log replayed against a changed value of PCR %d, which it measures: %v", p, err)
			}
		}
	})
}
