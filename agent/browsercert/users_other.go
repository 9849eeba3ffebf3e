//go:build !linux && !darwin

package browsercert

import (
	"errors"
	"fmt"
	"runtime"
)

// UserStores is Linux's and macOS's: on Windows the CurrentUser store is
// not built yet (docs/browser-certificates.md).
func UserStores() ([]UserStore, error) {
	return nil, fmt.Errorf("users' certificate stores on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
