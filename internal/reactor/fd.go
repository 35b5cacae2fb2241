//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package reactor

import (
	"errors"
	"net"
	"syscall"
	"time"

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
func openFD(c *Conn, nc net.Conn) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if dupErr != nil {
		return dupErr
	}
	_ = nc.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return err
	}
	c.fd = int32(fd)
	return nil
}

const (
	readBufferSize = 64 << 10
	// maxReadsPerWake bounds how long one busy connection can hold its
	// poller before the others get a turn; the rest waits in the ready
	// list.
	maxReadsPerWake = 4
)

// fdLoop is the read side the fd backends share: one buffer for all the
// poller's connections, and the list of those with input left over.
// Touched only on the poller goroutine.
type fdLoop struct {
	buf   []byte
	again []*Conn // connections with unread input left
}

func newFDLoop() fdLoop { return fdLoop{buf: make([]byte, readBufferSize)} }

// waitTimeout is how long the next wait may block: not at all while input
// is left over.
func (l *fdLoop) waitTimeout() time.Duration {
	if len(l.again) > 0 {
		return 0
	}
	return scanInterval
}

func (l *fdLoop) readSafely(p *Poller, c *Conn) {
	defer p.recoverConn(c)
	l.readFrom(p, c)
}

// readFrom reads what the socket holds and handles every whole frame.
func (l *fdLoop) readFrom(p *Poller, c *Conn) {
	if c.Destroyed() {
		return // queued on the ready list before it was destroyed
	}
	for i := 0; i < maxReadsPerWake; i++ {
		n, err := unix.Read(int(c.fd), l.buf)
		switch {
		case n > 0:
			if !p.received(c, l.buf[:n]) {
				return
			}
			if n < len(l.buf) {
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
	l.again = append(l.again, c)
}

// readAgain reads the connections a wake-up left with input unread.
func (l *fdLoop) readAgain(p *Poller) {
	again := l.again
	l.again = nil
	for _, c := range again {
		l.readSafely(p, c)
	}
}

func (p *Poller) lookup(fd int) *Conn {
	p.mu.RLock()
	c := p.conns[fd]
	p.mu.RUnlock()
	return c
}

func (p *Poller) flushSafely(c *Conn) {
	defer p.recoverConn(c)
	c.flush()
}

// flush writes pending output; an fd backend's poller calls it when the
// socket can take more (EPOLLOUT, EVFILT_WRITE).
func (c *Conn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateDead || c.net != nil {
		return
	}
	for len(c.out) > 0 {
		n, err := fdWrite(int(c.fd), c.out)
		if n > 0 {
			c.out = c.out[n:]
			c.p.r.outbound.Add(-int64(n))
		}
		if err == errAgain {
			return
		}
		if err != nil && err != errIntr {
			c.abortLocked()
			return
		}
	}
	c.out = nil // give the backing array back to the GC
	if c.state == stateOpen && c.has(drainWanted) {
		c.clear(drainWanted)
		c.p.r.h.DrainedLocked(c)
		if len(c.out) > 0 || c.state != stateOpen {
			return
		}
	}
	if c.state == stateClosing && !c.has(shutWrite) {
		c.set(shutWrite)
		fdShutdownWrite(int(c.fd))
	}
}
