//go:build !linux

// The million-socket run is Linux-only: the load generator is built on
// epoll, and the run reads /proc.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "million: runs on Linux only (the load generator uses epoll, the run reads /proc)")
	os.Exit(2)
}
