package signals

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// efiGlobalVariable is the vendor GUID of the UEFI global variables
// (SecureBoot, SetupMode).
const efiGlobalVariable = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

func (c *Collector) secureBoot(_ context.Context) *posturev1.SecureBoot {
	efiDir := c.path("/sys/firmware/efi")
	if _, err := os.Stat(efiDir); errors.Is(err, fs.ErrNotExist) {
		// The kernel creates /sys/firmware/efi only when booted through UEFI.
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_OK, ""), LegacyBios: true}
	} else if err != nil {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			fmt.Sprintf("cannot tell how the machine booted: %v", err))}
	}

	vars, err := c.efiVariables()
	if err != nil {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	enabled, err := vars.bool("SecureBoot")
	if err != nil {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	// A missing SetupMode reads as user mode, the state that enforces.
	setupMode, err := vars.bool("SetupMode")
	if err != nil {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	return &posturev1.SecureBoot{
		Meta: c.meta(posturev1.Status_STATUS_OK, ""),
		// In setup mode no platform key is enrolled, so nothing is enforced
		// whatever SecureBoot says.
		Enabled:   enabled && !setupMode,
		SetupMode: setupMode,
	}
}

// efiVars reads UEFI variables from efivarfs, or from the sysfs-efivars
// interface that kernels before 6.0 may offer instead.
type efiVars struct {
	dir    string
	legacy bool // sysfs-efivars: <dir>/<Name>-<GUID>/data holds the bare value
}

// efiVariables finds a readable variable store. A UEFI boot without one
// means efivarfs is not mounted or not readable, so secure boot is unknown.
func (c *Collector) efiVariables() (efiVars, error) {
	efivarfs := c.path("/sys/firmware/efi/efivars")
	entries, err := os.ReadDir(efivarfs)
	if err == nil && len(entries) > 0 {
		return efiVars{dir: efivarfs}, nil
	}
	if legacy := c.path("/sys/firmware/efi/vars"); hasEntries(legacy) {
		return efiVars{dir: legacy, legacy: true}, nil
	}
	if err != nil {
		return efiVars{}, fmt.Errorf("booted through UEFI, but the EFI variables are not readable (mount efivarfs on /sys/firmware/efi/efivars): %w", err)
	}
	return efiVars{}, fmt.Errorf("booted through UEFI, but %s is empty: mount efivarfs there (mount -t efivarfs efivarfs /sys/firmware/efi/efivars)", efivarfs)
}

// bool reads a one-byte boolean global variable. A variable the firmware
// does not define reads as false: firmware without secure boot support has
// no SecureBoot variable.
func (v efiVars) bool(name string) (bool, error) {
	var p string
	if v.legacy {
		p = filepath.Join(v.dir, name+"-"+efiGlobalVariable, "data")
	} else {
		p = filepath.Join(v.dir, name+"-"+efiGlobalVariable)
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read EFI variable %s: %w", name, err)
	}
	if !v.legacy {
		// efivarfs prefixes the value with the 4-byte attribute mask.
		if len(b) < 5 {
			return false, fmt.Errorf("EFI variable %s is %d bytes, want at least 5", name, len(b))
		}
		b = b[4:]
	}
	if len(b) < 1 {
		return false, fmt.Errorf("EFI variable %s is empty", name)
	}
	switch b[0] {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, fmt.Errorf("EFI variable %s holds %d, want 0 or 1", name, b[0])
}
