package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools"
)

func TestReplayEventLog(t *testing.T) {
	build := func(enabled bool) *testtools.EventLog {
		l := testtools.NewEventLog()
		l.Add(0, 0x80000008, []byte("platform firmware blob")) // EV_EFI_PLATFORM_FIRMWARE_BLOB
		l.Add(7, evEFIVariableDriverConfig, testtools.SecureBootVariable(enabled))
		l.Add(7, evSeparator, separator)
		l.Add(4, 0x80000003, []byte("bootloader image")) // EV_EFI_BOOT_SERVICES_APPLICATION
		return l
	}
	lying := testtools.NewEventLog()
	lying.Add(0, 0x80000008, []byte("fw"))
	real := testtools.SecureBootVariable(false)
	fake := testtools.SecureBootVariable(true)
	sum := lyingDigest(real)
	lying.AddDigest(7, evEFIVariableDriverConfig, sum, fake) // digest of "disabled", data says "enabled"
	lying.Add(7, evSeparator, separator)

	tests := []struct {
		name    string
		log     []byte
		quoted  map[uint32][]byte
		wantErr error
		known   bool
		enabled bool
		reason  string
		events  int
	}{
		{"secure boot on", build(true).Bytes(), build(true).PCRs(), nil, true, true, "", 4},
		{"secure boot off", build(false).Bytes(), build(false).PCRs(), nil, true, false, "", 4},
		{"log of another boot", build(true).Bytes(), build(false).PCRs(), ErrEventLogMismatch, false, false, "", 0},
		{"event data that lies about its digest", lying.Bytes(), lying.PCRs(), nil, false, false, "does not match its measured digest", 3},
		{"PCR 7 not quoted", build(true).Bytes(), map[uint32][]byte{0: build(true).PCRs()[0]}, nil, false, false, "PCR 7 is not quoted", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mb, err := ReplayEventLog(tt.log, tt.quoted)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReplayEventLog error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if mb.SecureBootKnown != tt.known || mb.SecureBoot != tt.enabled || !strings.Contains(mb.Reason, tt.reason) || mb.Events != tt.events {
				t.Errorf("got %+v, want known=%v enabled=%v reason~%q events=%d", mb, tt.known, tt.enabled, tt.reason, tt.events)
			}
		})
	}
}

// separator is the data of an EV_SEPARATOR: firmware is done measuring
// into that PCR.
var separator = []byte{0, 0, 0, 0}

func lyingDigest(data []byte) []byte {
	l := testtools.NewEventLog()
	return l.Add(7, evEFIVariableDriverConfig, data)
}

func TestReplayEventLogMalformed(t *testing.T) {
	good := testtools.NewEventLog()
	good.Add(7, evEFIVariableDriverConfig, testtools.SecureBootVariable(true))
	b := good.Bytes()
	for name, log := range map[string][]byte{
		"empty":         nil,
		"truncated":     b[:len(b)-5],
		"not a spec ID": append([]byte{0, 0, 0, 0, 3, 0, 0, 0}, make([]byte, 40)...),
		"garbage tail":  append(append([]byte{}, b...), 0xff, 0xff),
	} {
		if _, err := ReplayEventLog(log, good.PCRs()); err == nil {
			t.Errorf("%s: ReplayEventLog accepted a malformed log", name)
		}
	}
}

// The StartupLocality event sets PCR 0's initial value, and firmware
// records it before measuring anything into PCR 0. One placed after
// measurements into PCR 0 would make the replay start PCR 0 afresh, so
// whatever the log invented before it would still replay: such a log is
// refused.
func TestReplayEventLogStartupLocality(t *testing.T) {
	firmware := func(l *testtools.EventLog) *testtools.EventLog {
		l.Add(0, 0x80000008, []byte("platform firmware blob"))
		l.Add(7, evEFIVariableDriverConfig, testtools.SecureBootVariable(true))
		l.Add(7, evSeparator, separator)
		return l
	}
	started := func(locality byte) *testtools.EventLog {
		l := testtools.NewEventLog()
		l.StartupLocality(locality)
		return firmware(l)
	}
	// Invented PCR 0 measurements, then the locality, then the real boot:
	// the replay of PCR 0 would begin again at the StartupLocality event.
	invented := func(locality byte) *testtools.EventLog {
		l := testtools.NewEventLog()
		l.Add(0, 0x80000008, []byte("firmware that never ran"))
		l.StartupLocality(locality)
		return firmware(l)
	}
	tests := []struct {
		name    string
		log     *testtools.EventLog
		quoted  map[uint32][]byte
		wantErr string
	}{
		{"locality 3 first", started(3), started(3).PCRs(), ""},
		{"locality 0 first", started(0), started(0).PCRs(), ""},
		{"locality 3 after invented PCR 0 events", invented(3), started(3).PCRs(), "StartupLocality event after measurements into PCR 0"},
		{"locality 0 after invented PCR 0 events", invented(0), started(0).PCRs(), "StartupLocality event after measurements into PCR 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mb, err := ReplayEventLog(tt.log.Bytes(), tt.quoted)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("ReplayEventLog: %v", err)
			case tt.wantErr == "" && (!mb.SecureBootKnown || !mb.SecureBoot || mb.Events != 3):
				t.Errorf("got %+v, want secure boot known and enabled, 3 events", mb)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("ReplayEventLog = %+v, %v; want an error: %s", mb, err, tt.wantErr)
			}
		})
	}
}

// firmwareLog reads a real event log from testdata/eventlog and the SHA-256
// PCR values its machine's TPM held after that boot.
func firmwareLog(t testing.TB, name string) ([]byte, map[uint32][]byte) {
	t.Helper()
	log, err := os.ReadFile(filepath.Join("testdata", "eventlog", name+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join("testdata", "eventlog", name+".pcrs"))
	if err != nil {
		t.Fatal(err)
	}
	pcrs := map[uint32][]byte{}
	for line := range strings.Lines(string(text)) {
		var pcr uint32
		var value string
		if _, err := fmt.Sscanf(line, "%d %s", &pcr, &value); err != nil {
			t.Fatalf("%s.pcrs: %q: %v", name, line, err)
		}
		if pcrs[pcr], err = hex.DecodeString(value); err != nil {
			t.Fatalf("%s.pcrs: %q: %v", name, line, err)
		}
	}
	return log, pcrs
}

// Logs written by real firmware replay to the PCR values their TPMs held,
// and their secure boot state is the one the firmware measured.
func TestReplayEventLogFirmware(t *testing.T) {
	tests := []struct {
		name    string
		enabled bool
		events  int
	}{
		{"rhel8-uefi", true, 82},
		{"ubuntu-2104-no-secure-boot", false, 105},
		{"glinux-alex", false, 27},
		{"arch-linux-workstation", false, 24}, // SecureBoot measured with no data: the variable did not exist
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, pcrs := firmwareLog(t, tt.name)
			mb, err := ReplayEventLog(log, pcrs)
			if err != nil {
				t.Fatalf("ReplayEventLog: %v", err)
			}
			if !mb.SecureBootKnown || mb.SecureBoot != tt.enabled || mb.Reason != "" || mb.Events != tt.events {
				t.Errorf("got %+v, want secure boot known, enabled=%v, %d events", mb, tt.enabled, tt.events)
			}
		})
	}
}

// Secure boot is read only from what the firmware measured into PCR 7
// before its separator: events the OS extends afterwards (tpm2_pcrevent)
// replay, but do not change the verdict.
func TestReplayEventLogSecureBootBeforeSeparator(t *testing.T) {
	// afterBoot is a real log with an event appended to PCR 7, and the PCR
	// values once the OS has extended that event.
	afterBoot := func(name string, data []byte) ([]byte, map[uint32][]byte) {
		log, pcrs := firmwareLog(t, name)
		l := testtools.ContinueEventLog(log, pcrs)
		l.Add(7, evEFIVariableDriverConfig, data)
		return l.Bytes(), l.PCRs()
	}
	// firmware is a log whose PCR 7 holds the given events, in order.
	type event struct {
		typ  uint32
		data []byte
	}
	firmware := func(events ...event) *testtools.EventLog {
		l := testtools.NewEventLog()
		l.Add(0, 0x80000008, []byte("platform firmware blob"))
		for _, e := range events {
			l.Add(7, e.typ, e.data)
		}
		return l
	}
	on := event{evEFIVariableDriverConfig, testtools.SecureBootVariable(true)}
	off := event{evEFIVariableDriverConfig, testtools.SecureBootVariable(false)}
	sep := event{evSeparator, separator}
	vendorOn := event{evEFIVariableDriverConfig, testtools.SecureBootVariable(true)}
	vendorOn.data[0] ^= 0xff // a SecureBoot variable of another vendor's GUID

	// The firmware measured secure boot off and its separator; the log
	// calls both something else (types are not measured), and the OS
	// extended a forged SecureBoot event and separator after them.
	offSum, sepSum := sha256.Sum256(off.data), sha256.Sum256(separator)
	relabeled := testtools.NewEventLog()
	relabeled.AddDigest(7, 0x80000007, offSum[:], []byte("EFI action")) // EV_EFI_ACTION
	relabeled.AddDigest(7, 0x80000007, sepSum[:], separator)
	relabeled.Add(7, on.typ, on.data)
	relabeled.Add(7, sep.typ, sep.data)

	enabledLater, enabledLaterPCRs := afterBoot("ubuntu-2104-no-secure-boot", on.data)
	disabledLater, disabledLaterPCRs := afterBoot("rhel8-uefi", off.data)
	_, unextended := firmwareLog(t, "ubuntu-2104-no-secure-boot")
	tests := []struct {
		name    string
		log     []byte
		quoted  map[uint32][]byte
		wantErr error
		known   bool
		enabled bool
		reason  string
	}{
		{"enabled extended after a boot with it disabled", enabledLater, enabledLaterPCRs, nil, true, false, ""},
		{"disabled extended after a boot with it enabled", disabledLater, disabledLaterPCRs, nil, true, true, ""},
		{"event appended but not extended", enabledLater, unextended, ErrEventLogMismatch, false, false, ""},
		{"SecureBoot measured twice before the separator", firmware(off, on, sep).Bytes(), firmware(off, on, sep).PCRs(), nil, false, false, "2 measurements of the SecureBoot variable"},
		{"SecureBoot of another GUID", firmware(vendorOn, sep).Bytes(), firmware(vendorOn, sep).PCRs(), nil, false, false, "no SecureBoot variable"},
		{"SecureBoot of another GUID beside the global one", firmware(vendorOn, off, sep).Bytes(), firmware(vendorOn, off, sep).PCRs(), nil, true, false, ""},
		{"SecureBoot as another event type", firmware(event{0x80000002, on.data}, sep).Bytes(), firmware(event{0x80000002, on.data}, sep).PCRs(), nil, false, false, "no SecureBoot variable"}, // EV_EFI_VARIABLE_BOOT
		{"no separator", firmware(on).Bytes(), firmware(on).PCRs(), nil, false, false, "no EV_SEPARATOR"},
		{"separator after a firmware error", firmware(on, event{evSeparator, []byte{1, 0, 0, 0}}).Bytes(), firmware(on, event{evSeparator, []byte{1, 0, 0, 0}}).PCRs(), nil, true, true, ""},
		{"separator relabeled, forged one after", relabeled.Bytes(), relabeled.PCRs(), nil, false, false, "no SecureBoot variable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mb, err := ReplayEventLog(tt.log, tt.quoted)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReplayEventLog error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if mb.SecureBootKnown != tt.known || mb.SecureBoot != tt.enabled || !strings.Contains(mb.Reason, tt.reason) || (tt.known && mb.Reason != "") {
				t.Errorf("got %+v, want known=%v enabled=%v reason~%q", mb, tt.known, tt.enabled, tt.reason)
			}
		})
	}
}
