package main

import "golang.org/x/sys/windows"

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		return false
	}
	defer windows.CloseHandle(h)
	var code uint32
	if windows.GetExitCodeProcess(h, &code) != nil {
		return false
	}
	return code == 259 // STILL_ACTIVE
}

// closeInheritedOnExec has nothing to do on Windows, where handles are
// inherited only when asked for.
func closeInheritedOnExec() {}
