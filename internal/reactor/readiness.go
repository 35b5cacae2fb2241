package reactor

import (
	"net"
	"time"
)

// Readiness reads sockets that are still net.Conns (not yet handed to a
// poller) once they have bytes to read, without a goroutine per socket
// while it waits: what a server needs to take a new socket's first bytes
// (a request head) without letting a slow client hold a goroutine. On
// Linux one goroutine waits for all of them in an epoll set of its own;
// elsewhere, and for the portable reactor, each read waits on a goroutine
// of its own, as a plain net.Conn read would.
type Readiness struct {
	native *epollReads // nil: a goroutine per read
}

// ReadCallback takes the result of one Readiness read. It runs on the
// Readiness's goroutine (or the read's own), so it must not block.
type ReadCallback interface {
	ReadDone(n int, err error)
}

// NewReadiness builds a Readiness for a reactor of the given kind: the
// epoll one waits in epoll, any other on goroutines.
func NewReadiness(kind string) (*Readiness, error) {
	r := &Readiness{}
	if kind == Epoll {
		e, err := newEpollReads()
		if err != nil {
			return nil, err
		}
		r.native = e
	}
	return r, nil
}

// Read reads once into p when nc has bytes to read (or its peer closed),
// and then calls cb with what one read returned: n > 0, or io.EOF, or an
// error. By deadline it gives up with os.ErrDeadlineExceeded (a net.Error
// whose Timeout is true). cb may run before Read returns.
func (r *Readiness) Read(nc net.Conn, p []byte, deadline time.Time, cb ReadCallback) {
	if r.native != nil && r.native.read(nc, p, deadline, cb) {
		return
	}
	go func() {
		_ = nc.SetReadDeadline(deadline)
		n, err := nc.Read(p)
		cb.ReadDone(n, err)
	}()
}

// Close fails the reads still waiting with net.ErrClosed, and any later
// Read at once. Reads waiting on goroutines of their own end at their
// deadline.
func (r *Readiness) Close() {
	if r.native != nil {
		r.native.close()
	}
}
