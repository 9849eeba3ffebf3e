package signals

import (
	"errors"
	"io/fs"

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
	r := winSecureBootState(ctl, state)
	return &posturev1.SecureBoot{Meta: c.meta(r.meta.status, r.meta.reason), Enabled: r.enabled, LegacyBios: r.legacy}
}

type secureBootResult struct {
	meta            statusReason
	enabled, legacy bool
}

func winSecureBootState(ctl, state map[string]any) secureBootResult {
	firmware, _ := ctl["PEFirmwareType"].(uint64)
	if firmware == 1 {
		return secureBootResult{meta: statusReason{posturev1.Status_STATUS_OK, ""}, legacy: true}
	}
	enabled, ok := state["UEFISecureBootEnabled"].(uint64)
	switch {
	case ok:
		return secureBootResult{meta: statusReason{posturev1.Status_STATUS_OK, ""}, enabled: enabled == 1}
	case firmware == 2:
		// UEFI without the value: firmware without secure boot support.
		return secureBootResult{meta: statusReason{posturev1.Status_STATUS_OK,
			"booted through UEFI, but Windows recorded no secure boot state (" + secureBootState + " UEFISecureBootEnabled is missing)"}}
	}
	return secureBootResult{meta: statusReason{posturev1.Status_STATUS_UNAVAILABLE,
		"neither PEFirmwareType nor UEFISecureBootEnabled is in the registry"}}
}
