//go:build !windows

package main

import (
	"os"
	"strconv"
	"syscall"
)

// processAlive reports whether a process with pid exists (a zombie counts
// as gone).
func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	return processIsAgent(pid) || !procfs()
}

// closeInheritedOnExec marks every file descriptor this process inherited
// beyond standard input, output and error close-on-exec, so that the
// service it starts does not hold them: a package manager's pipe held by
// the agent keeps whoever reads it (apt, an MDM script) waiting forever.
func closeInheritedOnExec() {
	dir := "/proc/self/fd"
	if _, err := os.Stat(dir); err != nil {
		dir = "/dev/fd"
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
