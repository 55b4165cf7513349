//go:build linux

package miniotest

import "syscall"

// sysProcAttr puts the server in its own process group, and has the
// kernel kill it if the test binary dies without stopping it (a panic, a
// test timeout, SIGKILL).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
