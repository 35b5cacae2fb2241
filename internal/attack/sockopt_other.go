//go:build !unix

package attack

import (
	"errors"
	"syscall"
)

// setBuffers sets a socket's receive buffer; Windows has no settable
// maximum segment size, so the attacks that need a small one are for
// Unix.
func setBuffers(fd uintptr, readBuffer, maxSegment int) error {
	if readBuffer > 0 {
		if err := syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, readBuffer); err != nil {
			return err
		}
	}
	if maxSegment > 0 {
		return errors.ErrUnsupported
	}
	return nil
}
