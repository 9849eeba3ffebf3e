package durable

import (
	"fmt"
	"os"
)

// Private files and directories hold keys. On Unix their modes keep other
// users out. On Windows a mode means little (Chmod only sets the read-only
// attribute) and a new file inherits its directory's access list, which
// under %ProgramData% lets every local user read it; there they get an
// explicit DACL instead.
const (
	// privateFileSDDL grants full control to SYSTEM and the Administrators
	// group and nothing to anyone else; P (protected) stops the parent's
	// entries from being inherited.
	privateFileSDDL = "D:P(A;;FA;;;SY)(A;;FA;;;BA)"
	// privateDirSDDL is the same for a directory, with OI and CI so that
	// files and directories created in it inherit the same two entries.
	privateDirSDDL = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
)

// isPrivate reports whether mode keeps a file from everyone but its owner:
// those files get privateFileSDDL on Windows.
func isPrivate(mode os.FileMode) bool { return mode.Perm()&0o077 == 0 }

// MkdirPrivate creates dir and any missing parents, and makes dir private
// whether or not it existed: mode 0700 on Unix; on Windows a protected
// DACL that lets only SYSTEM and Administrators in, which what is created
// in it inherits and which replaces what files already there inherited.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := restrictDir(dir); err != nil {
		return fmt.Errorf("restrict %s: %w", dir, err)
	}
	return nil
}
