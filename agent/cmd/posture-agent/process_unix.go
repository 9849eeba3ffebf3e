//go:build !windows

package main

import "syscall"

// processAlive reports whether a process with pid exists (a zombie counts
// as gone).
func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	return processIsAgent(pid) || !procfs()
}
