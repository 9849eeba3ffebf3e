package agent

import (
	"fmt"

	"golang.org/x/sys/windows"
)

// localDirSDDL is the access list of the directory of the agent's socket:
// owned by Administrators, full control to SYSTEM and Administrators;
// interactive users (IU) may list the directory (not create in it) and
// read and write the files in it, which is what connecting to an AF_UNIX
// socket file takes. The socket file inherits those entries when the
// agent binds it; P stops %ProgramData%'s entries (which let users create
// files) from being inherited. Who connected is then told by the kernel
// (peerUser).
const localDirSDDL = "O:BAD:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;;FRFX;;;IU)(A;OIIO;FRFW;;;IU)"

// restrictLocalDir sets localDirSDDL on dir, owner included: a directory a
// user made there first is taken back.
func restrictLocalDir(dir string) error {
	sd, err := windows.SecurityDescriptorFromString(localDirSDDL)
	if err != nil {
		return err
	}
	owner, _, err := sd.Owner()
	if err != nil {
		return err
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return err
	}
	info := windows.SECURITY_INFORMATION(windows.OWNER_SECURITY_INFORMATION | windows.DACL_SECURITY_INFORMATION | windows.PROTECTED_DACL_SECURITY_INFORMATION)
	if err := windows.SetNamedSecurityInfo(dir, windows.SE_FILE_OBJECT, info, owner, nil, dacl, nil); err != nil {
		return fmt.Errorf("set who may connect to the local socket in %s (run as the service): %w", dir, err)
	}
	return nil
}

// openLocalSocket has nothing to do: the socket file inherited
// localDirSDDL's entries.
func openLocalSocket(string) error { return nil }
