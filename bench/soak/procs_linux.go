package main

import "syscall"

// procAttr puts a child in a process group of its own and has the kernel
// kill it when the soak dies.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
