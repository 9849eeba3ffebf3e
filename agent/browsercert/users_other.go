//go:build !linux && !darwin && !windows

package browsercert

import (
	"errors"
	"fmt"
	"runtime"
)

// UserStores is Linux's, macOS's and Windows's only.
func UserStores() ([]UserStore, error) {
	return nil, fmt.Errorf("users' certificate stores on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
