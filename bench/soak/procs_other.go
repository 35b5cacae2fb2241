//go:build !linux

package main

import "syscall"

// procAttr puts a child in a process group of its own. Only Linux can
// have it killed when the soak dies; the gateway's reactor is Linux-only
// anyway, so the soak is too, but it builds elsewhere.
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
