//go:build !linux

package browsercert

import (
	"errors"
	"fmt"
	"runtime"
)

// UserDB is a local account's NSS database.
type UserDB struct {
	User     string
	UID, GID uint32
	DB       NSSDB
}

// UserDatabases is Linux's: elsewhere browser certificates live in each
// user's keychain or certificate store (docs/browser-certificates.md).
func UserDatabases(string) ([]UserDB, error) {
	return nil, fmt.Errorf("users' NSS databases on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
