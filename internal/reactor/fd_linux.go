package reactor

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdWritev writes bufs with one system call, building the iovec array in
// the caller's scratch slice instead of allocating one as unix.Writev does.
func fdWritev(fd int, bufs [][]byte, scratch *[]iovec) (int, error) {
	iov := (*scratch)[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	*scratch = iov
	if len(iov) == 0 {
		return 0, nil
	}
	r, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
