package identity

import (
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/windowstpm"
)

func openPlatform(addr string) (transport.TPMCloser, error) {
	if addr != "" {
		return nil, fmt.Errorf("open TPM %q: on Windows leave the address empty to use TBS, or give tcp://host:port", addr)
	}
	t, err := windowstpm.Open()
	if err != nil {
		return nil, fmt.Errorf("open TPM through TBS (is a TPM 2.0 present and enabled? see tpm.msc): %w", err)
	}
	return t, nil
}
