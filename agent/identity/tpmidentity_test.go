package identity_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/testtools"
)

// The event log travels with the first quote, then only with a quote
// whose PCR values changed since the last one sent with it, or after
// ResendEventLog; a log that cannot be read is tried again next time.
func TestSealSendsEventLogOncePerPCRState(t *testing.T) {
	tpm, _ := testtools.Simulator(t, 7)
	logFile := filepath.Join(t.TempDir(), "binary_bios_measurements")
	id := identity.NewTPMIdentity(newTPM(t, tpm, t.TempDir(), identity.TPMOptions{}), logFile)
	extend := func(t *testing.T) {
		if _, err := (tpm2.PCREvent{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(7), Auth: tpm2.PasswordAuth(nil)},
			EventData: tpm2.TPM2BEvent{Buffer: []byte("boot loader")},
		}).Execute(tpm); err != nil {
			t.Fatalf("extend PCR 7: %v", err)
		}
	}
	write := func(t *testing.T) {
		if err := os.WriteFile(logFile, []byte("event log"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name    string
		before  func(t *testing.T)
		wantLog bool
	}{
		{"log unreadable", nil, false},
		{"log readable: first quote carries it", write, true},
		{"same PCR values", nil, false},
		{"same PCR values again", nil, false},
		{"PCR 7 extended", extend, true},
		{"same PCR values after the change", nil, false},
		{"ResendEventLog", func(*testing.T) { id.ResendEventLog() }, true},
		{"same PCR values after the resend", nil, false},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before(t)
		}
		sr, err := id.Seal([]byte("nonce"), []byte("report"))
		if err != nil {
			t.Fatalf("%s: Seal: %v", s.name, err)
		}
		if got := len(sr.GetTpm().GetEventLog()) > 0; got != s.wantLog {
			t.Errorf("%s: quote carries the event log = %v, want %v", s.name, got, s.wantLog)
		}
	}
}
