package gateway

import (
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/protocol"
)

// connState is where a connection is in its life. Transitions only go
// forward: open → closing → dead.
type connState uint8

const (
	// stateOpen: frames flow both ways.
	stateOpen connState = iota
	// stateClosing: our close frame is queued or sent; we read and discard
	// until the peer closes too (so that an unread receive buffer does not
	// turn our close into a reset the client never sees), or until the
	// poller's scan gives up.
	stateClosing
	// stateDead: the descriptor is closed. Nothing may touch it.
	stateDead
)

// conn is one Pusher client connection. It has no goroutine and, when idle,
// no buffers: the poller reads into a buffer it shares among all its
// connections, and output is written straight to the socket, so out and
// partial stay nil unless the socket pushes back or a frame straddles two
// reads.
type conn struct {
	fd     int
	poller *poller
	app    *config.App
	// sidA and sidB are the two numbers of the socket id "sidA.sidB".
	sidA, sidB uint64

	// Owned by the poller goroutine.
	partial    []byte // bytes of an incomplete frame, kept between reads
	lastSeen   int64  // unix nanos of the last frame received
	pingSentAt int64  // unix nanos of our unanswered ping, or 0
	subs       []chanSub
	ext        *connExt // rarer state, made on first use
	destroyed  bool     // set by poller.destroy; the descriptor may already be reused
	countedMax bool     // this connection holds a slot of the app's max_connections

	// mu guards the write side: deliveries write from other goroutines.
	// The socket write happens under mu, so a write can never land on a
	// descriptor number that was closed and reused.
	mu        sync.Mutex
	state     connState
	shutWrite bool   // SHUT_WR is done
	out       []byte // output the socket did not take yet
	closingAt int64  // unix nanos when closing began
}

// chanSub is one channel a connection is on.
type chanSub struct {
	ch *channel
	// member is the presence identity the connection joined with; nil on
	// other channels.
	member *protocol.PresenceMember
}

func (cs chanSub) userID() string {
	if cs.member == nil {
		return ""
	}
	return cs.member.ID
}

// preparing is a subscription whose shared state (presence membership,
// cached event) is being fetched.
type preparing struct {
	name      string
	cancelled bool
}

// connExt is the state few connections need, kept out of conn so that an
// idle subscriber stays small. Only the poller goroutine touches it.
type connExt struct {
	fragments  []byte // a fragmented message being reassembled
	fragmented bool
	preparing  []preparing // subscriptions waiting on shared state

	userID    string // signed in as, or ""
	watchlist []string
	// Client-event token bucket: tokens left and when it was last filled.
	tokens   float64
	lastFill int64
}

func (c *conn) extension() *connExt {
	if c.ext == nil {
		c.ext = &connExt{}
	}
	return c.ext
}

func (c *conn) signedInAs() string {
	if c.ext == nil {
		return ""
	}
	return c.ext.userID
}

func (c *conn) preparingList() []preparing {
	if c.ext == nil {
		return nil
	}
	return c.ext.preparing
}

func (c *conn) findSub(name string) int {
	for i := range c.subs {
		if c.subs[i].ch.name == name {
			return i
		}
	}
	return -1
}

func (c *conn) socketID() string {
	return string(protocol.AppendSocketID(make([]byte, 0, 24), c.sidA, c.sidB))
}

// write queues b for the client, writing what the socket takes at once. It
// is safe from any goroutine. A client whose pending output would pass the
// limit is cut off: it is not reading, and must not hold memory or slow the
// fan-out to everyone else.
func (c *conn) write(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	c.writeLocked(b)
}

func (c *conn) writeLocked(b []byte) {
	if len(c.out) == 0 {
		n, err := unix.Write(c.fd, b)
		if n == len(b) {
			return
		}
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			c.abortLocked()
			return
		}
		if n > 0 {
			b = b[n:]
		}
	}
	if len(c.out)+len(b) > c.poller.srv.opts.MaxOutbound {
		c.poller.srv.log.Debug().Str("socket_id", c.socketID()).Msg("slow client cut off")
		c.poller.srv.prom.SlowConsumers.Inc()
		c.abortLocked()
		return
	}
	// The socket is full; edge-triggered EPOLLOUT tells the poller when it
	// drains, and flush writes the rest.
	c.out = append(c.out, b...)
}

// writeFrames writes frames to the client with one writev, keeping what
// the socket does not take. iovecs is the caller's scratch space, so the
// common case allocates nothing.
func (c *conn) writeFrames(frames [][]byte, iovecs *[]unix.Iovec) {
	if len(frames) == 1 {
		c.write(frames[0])
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	written := 0
	if len(c.out) == 0 {
		n, err := writev(c.fd, frames, iovecs)
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
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

// writev writes bufs with one system call, building the iovec array in
// the caller's scratch slice instead of allocating one as unix.Writev does.
func writev(fd int, bufs [][]byte, scratch *[]unix.Iovec) (int, error) {
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

// flush writes pending output; the poller calls it on EPOLLOUT.
func (c *conn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateDead {
		return
	}
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		if n > 0 {
			c.out = c.out[n:]
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil && err != unix.EINTR {
			c.abortLocked()
			return
		}
	}
	c.out = nil // give the backing array back to the GC
	if c.state == stateClosing && !c.shutWrite {
		c.shutWrite = true
		_ = unix.Shutdown(c.fd, unix.SHUT_WR)
	}
}

// closeWith sends a pusher:error (when code is a Pusher code and errMsg is
// set) and a close frame, then half-closes and waits for the peer.
func (c *conn) closeWith(code int, errMsg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	var msg []byte
	if code >= 4000 {
		c.poller.srv.prom.Error(code, c.app.ID)
	}
	if errMsg != "" && code >= 4000 {
		msg = protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, errMsg))
	}
	msg = protocol.AppendCloseFrame(msg, uint16(code), errMsg)
	c.writeLocked(msg)
	if c.state != stateOpen {
		return // the write failed and aborted
	}
	c.state = stateClosing
	c.closingAt = time.Now().UnixNano()
	if len(c.out) == 0 {
		c.shutWrite = true
		_ = unix.Shutdown(c.fd, unix.SHUT_WR)
	}
}

// abortLocked drops the connection without ceremony. Any goroutine may
// call it; shutting the socket down makes the poller see a hang-up and
// destroy the connection on its own goroutine.
func (c *conn) abortLocked() {
	if c.state == stateDead {
		return
	}
	c.out = nil
	if c.state == stateOpen {
		c.state = stateClosing
		c.closingAt = time.Now().UnixNano()
	}
	c.shutWrite = true
	_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
}

func (c *conn) isOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateOpen
}
