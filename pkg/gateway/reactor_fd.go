//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package gateway

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// The descriptor side of the socket layer, shared by epoll and kqueue:
// the socket leaves the Go runtime and is read and written with plain
// non-blocking system calls.

// iovec is writev's buffer descriptor.
type iovec = unix.Iovec

const (
	errAgain = unix.EAGAIN
	errIntr  = unix.EINTR
)

func fdWrite(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
func fdShutdownWrite(fd int)                { _ = unix.Shutdown(fd, unix.SHUT_WR) }
func fdShutdown(fd int)                     { _ = unix.Shutdown(fd, unix.SHUT_RDWR) }
func fdClose(fd int)                        { _ = unix.Close(fd) }

// openFD moves an upgraded connection from the Go runtime to the reactor:
// the descriptor is duplicated, the net.Conn (and its runtime poller entry)
// closed, and from then on the connection is a few hundred bytes of state.
func openFD(nc net.Conn) (*conn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	_ = nc.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return &conn{fd: fd}, nil
}

func (p *poller) readSafely(c *conn) {
	defer p.recoverConn(c)
	p.readFrom(c)
}

// readFrom reads what the socket holds and handles every whole frame.
func (p *poller) readFrom(c *conn) {
	if c.destroyed {
		return // queued on the ready list before it was destroyed
	}
	for i := 0; i < maxReadsPerWake; i++ {
		n, err := unix.Read(c.fd, p.buf)
		switch {
		case n > 0:
			if !p.received(c, p.buf[:n]) {
				return
			}
			if n < len(p.buf) {
				return // drained; new data raises a new edge
			}
		case n == 0:
			p.destroy(c) // the peer closed
			return
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
		default:
			p.destroy(c)
			return
		}
	}
	p.again = append(p.again, c)
}

// readAgain reads the connections a wake-up left with input unread.
func (p *poller) readAgain() {
	again := p.again
	p.again = nil
	for _, c := range again {
		p.readSafely(c)
	}
}
