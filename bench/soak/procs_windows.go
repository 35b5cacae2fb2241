package main

import "syscall"

// procAttr: Windows has no process groups to put a child in; the soak
// stops its children one by one.
func procAttr() *syscall.SysProcAttr { return nil }
