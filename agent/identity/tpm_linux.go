package identity

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// defaultTPMDevice is the kernel's resource manager: it swaps transient
// objects per open file, so the agent can share the TPM with other users.
const defaultTPMDevice = "/dev/tpmrm0"

func openPlatform(path string) (transport.TPMCloser, error) {
	if path == "" {
		path = defaultTPMDevice
	}
	t, err := linuxtpm.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("open TPM %s: no such device (no TPM, TPM disabled in firmware, or tpm_tis/tpm_crb not loaded; use the software identity instead): %w", path, err)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("open TPM %s: permission denied (run the agent as root or in the tss group): %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("open TPM %s: %w", path, err)
	}
	return t, nil
}
