package durable

import (
	"fmt"
	"os"

	"golang.org/x/sys/windows"
)

// restrictDir sets privateDirSDDL on dir. SetNamedSecurityInfo also passes
// the new inheritable entries down to what dir already holds.
func restrictDir(dir string) error { return setDACL(dir, privateDirSDDL) }

// restrictFile gives a file being written its final mode, and a private
// one privateFileSDDL.
func restrictFile(f *os.File, mode os.FileMode) error {
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if !isPrivate(mode) {
		return nil
	}
	return setDACL(f.Name(), privateFileSDDL)
}

// setDACL replaces the DACL of path with the one sddl describes and stops
// it inheriting from the parent.
func setDACL(path, sddl string) error {
	sd, err := windows.SecurityDescriptorFromString(sddl)
	if err != nil {
		return fmt.Errorf("security descriptor %s: %w", sddl, err)
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return fmt.Errorf("security descriptor %s: %w", sddl, err)
	}
	err = windows.SetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil)
	if err != nil {
		return fmt.Errorf("limit access to SYSTEM and Administrators (run as administrator, or as the service): %w", err)
	}
	return nil
}
