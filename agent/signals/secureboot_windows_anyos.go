package signals

import (
	"errors"
	"io/fs"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const (
	secureBootState = `HKLM\SYSTEM\CurrentControlSet\Control\SecureBoot\State`
	controlKey      = `HKLM\SYSTEM\CurrentControlSet\Control`
)

// winSecureBoot reads UEFISecureBootEnabled, which Windows sets at boot,
// and PEFirmwareType (1 BIOS, 2 UEFI) to tell legacy BIOS boots apart.
func (c *Collector) winSecureBoot() *posturev1.SecureBoot {
	ctl, err := c.regValues(controlKey, "PEFirmwareType")
	if err != nil {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	state, err := c.regValues(secureBootState, "UEFISecureBootEnabled")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	return winSecureBootState(ctl, state, c.now())
}

// winSecureBootState decides from the registry values read at t.
func winSecureBootState(ctl, state map[string]any, t time.Time) *posturev1.SecureBoot {
	firmware, _ := ctl["PEFirmwareType"].(uint64)
	if firmware == 1 {
		return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""), LegacyBios: true}
	}
	enabled, ok := state["UEFISecureBootEnabled"].(uint64)
	switch {
	case ok:
		return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""), Enabled: enabled == 1}
	case firmware == 2:
		// UEFI without the value: firmware without secure boot support.
		return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_OK,
			"booted through UEFI, but Windows recorded no secure boot state ("+secureBootState+" UEFISecureBootEnabled is missing)")}
	}
	return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_UNAVAILABLE,
		"neither PEFirmwareType nor UEFISecureBootEnabled is in the registry")}
}
