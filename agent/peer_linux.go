package agent

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peerUser names the local user at the other end of a Unix socket, from
// the kernel's SO_PEERCRED.
func peerUser(c net.Conn) (string, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "", errNoPeerCred
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "", err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return "", err
	}
	if credErr != nil {
		return "", fmt.Errorf("peer credentials: %w", credErr)
	}
	return localUserName(cred.Uid), nil
}
