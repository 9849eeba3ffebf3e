//go:build !linux && !windows

package identity

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/google/go-tpm/tpm2/transport"
)

func openPlatform(string) (transport.TPMCloser, error) {
	return nil, fmt.Errorf("no platform TPM access on %s (use the software identity, or give tcp://host:port for a TPM simulator): %w", runtime.GOOS, errors.ErrUnsupported)
}
