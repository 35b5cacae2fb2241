//go:build unix

package attack

import "golang.org/x/sys/unix"

// setBuffers sets a socket's receive buffer and maximum segment size; 0
// leaves either as it is.
func setBuffers(fd uintptr, readBuffer, maxSegment int) error {
	if readBuffer > 0 {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, readBuffer); err != nil {
			return err
		}
	}
	if maxSegment > 0 {
		return unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, maxSegment)
	}
	return nil
}
