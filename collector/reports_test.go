package collector

import (
	"strings"
	"testing"

	"github.com/posture-project/posture/collector/store"
)

func TestTPMClockCheck(t *testing.T) {
	base := store.TPMClock{Clock: 5000, ResetCount: 0xfffffffe, RestartCount: 7}
	tests := []struct {
		name    string
		cur     store.TPMClock
		first   bool
		reboot  bool
		suspect string
	}{
		{"first quote", store.TPMClock{Clock: 1}, true, false, ""},
		{"same boot, clock ahead", store.TPMClock{Clock: 6000, ResetCount: 0xfffffffe, RestartCount: 7}, false, false, ""},
		{"reboot twice, obfuscated counter wraps", store.TPMClock{Clock: 10, ResetCount: 0, RestartCount: 7}, false, true, ""},
		{"resume from hibernation", store.TPMClock{Clock: 7000, ResetCount: 0xfffffffe, RestartCount: 8}, false, false, ""},
		{"clock backwards in one boot", store.TPMClock{Clock: 4000, ResetCount: 0xfffffffe, RestartCount: 7}, false, false, "clock ran backwards"},
		{"reset count backwards", store.TPMClock{Clock: 9000, ResetCount: 0xfffffffd, RestartCount: 7}, false, false, "reset count moved by -1"},
		{"restart count backwards", store.TPMClock{Clock: 9000, ResetCount: 0xfffffffe, RestartCount: 6}, false, false, "restart count moved by -1"},
		{"another TPM state", store.TPMClock{Clock: 9000, ResetCount: 0x12345678, RestartCount: 7}, false, false, "not the TPM state last seen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reboot, suspect := tpmClockCheck(base, tt.cur, tt.first)
			if reboot != tt.reboot || (tt.suspect == "") != (suspect == "") || !strings.Contains(suspect, tt.suspect) {
				t.Errorf("tpmClockCheck = %v, %q; want %v, %q", reboot, suspect, tt.reboot, tt.suspect)
			}
		})
	}
}
