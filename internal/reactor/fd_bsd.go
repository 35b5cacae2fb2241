//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package reactor

import "golang.org/x/sys/unix"

// fdWritev writes bufs one write each. macOS and OpenBSD no longer take
// raw system calls (unix.Syscall goes through libc's deprecated, or on
// OpenBSD removed, syscall(2)), and x/sys/unix has no writev for every
// BSD; these are development platforms, where a call per frame is fine.
// It stops at the first short write, as writev would.
func fdWritev(fd int, bufs [][]byte, _ *[]iovec) (int, error) {
	total := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		n, err := unix.Write(fd, b)
		if n > 0 {
			total += n
		}
		if err != nil {
			if total > 0 {
				return total, nil
			}
			return 0, err
		}
		if n < len(b) {
			break
		}
	}
	return total, nil
}
