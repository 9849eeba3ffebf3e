package agent

import (
	"fmt"
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// sioAFUnixGetPeerPID is SIO_AF_UNIX_GETPEERPID (_WSAIOR(IOC_VENDOR, 256),
// afunix.h): the process ID the kernel recorded for the connecting end of
// an AF_UNIX socket, Windows 10 1803 and later.
const sioAFUnixGetPeerPID = 0x40000000 | windows.IOC_VENDOR | 256

// peerUser names the local user at the other end of the agent's AF_UNIX
// socket: the kernel gives the peer's process ID, whose access token gives
// its account. Windows has no SO_PEERCRED; a process ID may be reused once
// its process is gone, so a process created after the connection was
// accepted is refused (a process that exited also closed its end, unless it
// handed the socket on: the window is between its exit and the accept).
func peerUser(c net.Conn) (string, error) {
	accepted := time.Now()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "", errNoPeerCred
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "", err
	}
	var pid uint32
	var ioErr error
	if err := raw.Control(func(fd uintptr) {
		var n uint32
		ioErr = windows.WSAIoctl(windows.Handle(fd), sioAFUnixGetPeerPID, nil, 0, (*byte)(unsafe.Pointer(&pid)), uint32(unsafe.Sizeof(pid)), &n, nil, 0)
	}); err != nil {
		return "", err
	}
	if ioErr != nil {
		return "", fmt.Errorf("peer process of the local socket: %w", ioErr)
	}
	proc, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return "", fmt.Errorf("open the peer process %d: %w", pid, err)
	}
	defer windows.CloseHandle(proc)
	var created, exited, kernel, user windows.Filetime
	if err := windows.GetProcessTimes(proc, &created, &exited, &kernel, &user); err != nil {
		return "", fmt.Errorf("peer process %d: %w", pid, err)
	}
	if time.Unix(0, created.Nanoseconds()).After(accepted) {
		return "", fmt.Errorf("peer process %d started after it connected: its process ID was reused", pid)
	}
	var tok windows.Token
	if err := windows.OpenProcessToken(proc, windows.TOKEN_QUERY, &tok); err != nil {
		return "", fmt.Errorf("the peer process's token: %w", err)
	}
	defer tok.Close()
	tu, err := tok.GetTokenUser()
	if err != nil {
		return "", fmt.Errorf("the peer process's account: %w", err)
	}
	account, _, _, err := tu.User.Sid.LookupAccount("")
	if err != nil || account == "" {
		return accountName("sid-" + tu.User.Sid.String()), nil
	}
	return accountName(account), nil
}
