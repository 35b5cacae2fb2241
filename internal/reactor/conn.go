package reactor

import (
	"sync"
	"time"
)

// state is where a connection is in its life. Transitions only go
// forward: open → closing → dead.
type state uint8

const (
	// stateOpen: bytes flow both ways.
	stateOpen state = iota
	// stateClosing: the session's last bytes are queued or sent; we read
	// and hand nothing on until the peer closes too (so that an unread
	// receive buffer does not turn our close into a reset the client never
	// sees), or until the poller's scan gives up.
	stateClosing
	// stateDead: the socket is closed. Nothing may touch it.
	stateDead
)

// Conn is one connection's socket. The session embeds it (as its first
// field, so that it finds itself from the *Conn the Handler gets, without
// a pointer back) and writes and closes through it.
//
// On the fd backends (epoll, kqueue) it has no goroutine and, when idle,
// no buffer: the poller reads into a buffer it shares among all its
// connections, and output is written straight to the socket, so out stays
// nil unless the socket pushes back. Its size is every idle connection's
// cost: fields are ordered so that it packs into 56 bytes.
type Conn struct {
	p *Poller
	// net is the portable backend's side of the connection; nil on the fd
	// backends.
	net *netSide
	out []byte // output the socket did not take yet; guarded by mu

	// mu guards the write side: deliveries write from other goroutines.
	// The socket write happens under mu, so a write can never land on a
	// descriptor number that was closed and reused.
	mu sync.Mutex
	// fd is the socket's descriptor; on a portable connection (net set),
	// only a number for the poller's table.
	fd int32
	// closingAt is the tick when closing began, modulo 2^16: closing lasts
	// seconds, so the difference the scan takes is exact, and two bytes
	// keep Conn in 56. Guarded by mu.
	closingAt uint16
	state     state // guarded by mu
	flags     flags // guarded by mu
}

// flags are a connection's write-side flags.
type flags uint8

const (
	// shutWrite: the write side is shut (SHUT_WR).
	shutWrite flags = 1 << iota
	// drainWanted: the session held output back and wants DrainedLocked
	// once out is empty.
	drainWanted
)

func (c *Conn) has(f flags) bool { return c.flags&f != 0 }
func (c *Conn) set(f flags)      { c.flags |= f }
func (c *Conn) clear(f flags)    { c.flags &^= f }

// closingTick is a tick as closingAt keeps it.
func closingTick(t uint32) uint16 { return uint16(t) }

// Poller is the connection's poller.
func (c *Conn) Poller() *Poller { return c.p }

// Post runs f on the connection's poller goroutine, soon.
func (c *Conn) Post(f func()) { c.p.Post(f) }

// Destroyed reports that the poller has closed and forgotten the
// connection (its descriptor may already be reused). Only the poller
// goroutine may call it: elsewhere a connection is destroyed, or not, by
// the time the answer arrives.
func (c *Conn) Destroyed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateDead
}

// Lock and Unlock guard the write side, for the Locked methods.
func (c *Conn) Lock()   { c.mu.Lock() }
func (c *Conn) Unlock() { c.mu.Unlock() }

// IsOpen reports that the connection is open: neither closing nor dead.
func (c *Conn) IsOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateOpen
}

// OpenLocked is IsOpen with c locked.
func (c *Conn) OpenLocked() bool { return c.state == stateOpen }

// Write queues b for the peer, writing what the socket takes at once. It
// is safe from any goroutine, and never waits on the peer. A connection
// whose waiting output would pass a limit is cut off: it is not reading,
// and must not hold memory or slow the fan-out to everyone else.
func (c *Conn) Write(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	c.writeLocked(b)
}

// WriteLocked is Write with c locked and open.
func (c *Conn) WriteLocked(b []byte) { c.writeLocked(b) }

func (c *Conn) writeLocked(b []byte) {
	if len(c.out) == 0 && c.net == nil {
		n, err := fdWrite(int(c.fd), b)
		if n == len(b) {
			return
		}
		if err != nil && err != errAgain && err != errIntr {
			c.abortLocked()
			return
		}
		if n > 0 {
			b = b[n:]
		}
	}
	c.queueLocked(b)
}

// queueLocked keeps b to be written once the socket takes it: the fd
// backends' poller flushes it on a write edge, the portable write
// goroutine as soon as it can.
func (c *Conn) queueLocked(b []byte) {
	r := c.p.r
	if c.waitingLocked()+len(b) > r.maxOut {
		r.h.Overflow(c, false)
		c.abortLocked()
		return
	}
	// Every byte waiting in any connection's out is charged to the
	// process's budget, so that many slow clients together cannot hold
	// more than the total, each below its own limit.
	if r.outbound.Add(int64(len(b))) > r.maxTotal {
		r.outbound.Add(-int64(len(b)))
		r.h.Overflow(c, true)
		c.abortLocked()
		return
	}
	// The socket is full; an edge-triggered write event tells the poller
	// when it drains, and flush writes the rest.
	c.out = append(c.out, b...)
	if c.net != nil {
		c.net.kickLocked(c)
	}
}

// WaitingLocked is the output waiting for the socket: still held, as far
// as the limits are concerned.
func (c *Conn) WaitingLocked() int { return c.waitingLocked() }

func (c *Conn) waitingLocked() int {
	if c.net != nil {
		return len(c.out) + c.net.flying
	}
	return len(c.out)
}

// IdleLocked reports that no output is waiting: what is written now goes
// out before anything else.
func (c *Conn) IdleLocked() bool {
	return len(c.out) == 0 && (c.net == nil || !c.net.writing)
}

// WantDrainedLocked asks for the Handler's DrainedLocked once the output
// waiting now is written: the session held something back (a pong) that
// must follow it.
func (c *Conn) WantDrainedLocked() { c.set(drainWanted) }

// dropOutLocked forgets the output waiting, and gives its bytes back to
// the process's budget.
func (c *Conn) dropOutLocked() {
	if len(c.out) > 0 {
		c.p.r.outbound.Add(-int64(len(c.out)))
	}
	c.out = nil
}

// Iovec is writev's buffer descriptor, the scratch space WriteFrames
// builds its call in.
type Iovec = iovec

// WriteFrames writes frames with one writev, keeping what the socket does
// not take. iovecs is the caller's scratch space, so the common case
// allocates nothing.
func (c *Conn) WriteFrames(frames [][]byte, iovecs *[]Iovec) {
	if len(frames) == 1 {
		c.Write(frames[0])
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	written := 0
	if len(c.out) == 0 && c.net == nil {
		n, err := fdWritev(int(c.fd), frames, iovecs)
		if err != nil && err != errAgain && err != errIntr {
			c.abortLocked()
			return
		}
		if n > 0 {
			written = n
		}
	}
	for _, f := range frames {
		if written >= len(f) {
			written -= len(f)
			continue
		}
		c.writeLocked(f[written:])
		written = 0
		if c.state != stateOpen {
			return
		}
	}
}

// CloseLocked writes the session's last bytes (its close frame) and
// starts closing: the write side is shut once they are out, so that the
// peer reads them and then the end of the stream, and the poller waits for
// the peer to close. c must be open.
func (c *Conn) CloseLocked(last []byte) {
	c.writeLocked(last)
	if c.state != stateOpen {
		return // the write failed and aborted
	}
	c.state = stateClosing
	c.closingAt = closingTick(Ticks(c.p.r.epoch, time.Now()))
	c.p.noteClosing(c)
	if c.IdleLocked() {
		c.set(shutWrite)
		c.shutdownWriteLocked()
	}
}

// shutdownWriteLocked half-closes the socket once the last bytes are out.
func (c *Conn) shutdownWriteLocked() {
	if c.net != nil {
		c.net.shutdownWrite()
		return
	}
	fdShutdownWrite(int(c.fd))
}

// closeSocketLocked closes the socket for good; only the poller's destroy
// and shutdown call it.
func (c *Conn) closeSocketLocked() {
	if c.net != nil {
		_ = c.net.nc.Close()
		return
	}
	fdClose(int(c.fd))
}

// discard closes a connection that was opened but never added.
func (c *Conn) discard() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = stateDead
	c.dropOutLocked()
	c.closeSocketLocked()
}

// abortLocked drops the connection without ceremony. Any goroutine may
// call it; shutting the socket down makes the poller see a hang-up (or
// the portable read goroutine an error) and destroy the connection on its
// own goroutine.
func (c *Conn) abortLocked() {
	if c.state == stateDead {
		return
	}
	c.dropOutLocked()
	if c.state == stateOpen {
		c.state = stateClosing
		c.closingAt = closingTick(Ticks(c.p.r.epoch, time.Now()))
		c.p.noteClosing(c)
	}
	c.set(shutWrite)
	if c.net != nil {
		// Closing a net.Conn cannot hand its descriptor to another
		// connection while this one is still in the table, as closing a
		// raw descriptor could: it is safe from any goroutine.
		_ = c.net.nc.Close()
		return
	}
	fdShutdown(int(c.fd))
}
