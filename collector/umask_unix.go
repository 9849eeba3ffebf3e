//go:build unix

package collector

import "syscall"

func umask(m int) int { return syscall.Umask(m) }
