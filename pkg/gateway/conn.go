package gateway

import (
	"sync"
	"time"

	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/metrics"
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

// conn is one Pusher client connection. On the fd backends (epoll,
// kqueue) it has no goroutine and, when idle, no buffers: the poller reads
// into a buffer it shares among all its connections, and output is written
// straight to the socket, so out and partial stay nil unless the socket
// pushes back or a frame straddles two reads. A portable connection is the
// start of a netConn (reactor_portable.go).
type conn struct {
	// fd is the socket's descriptor; below zero, the connection is
	// portable and fd only numbers it.
	fd     int
	poller *poller
	app    *config.App
	// sidA and sidB are the two numbers of the socket id "sidA.sidB".
	sidA, sidB uint64

	// Owned by the poller goroutine.
	reader     frameReader
	lastSeen   uint32 // tick of the last frame received
	pingSentAt uint32 // tick of our unanswered ping, or 0
	subs       []chanSub
	ext        *connExt // rarer state, made on first use
	ipSlot     *ipSlot  // its client address's count, when connections per IP are capped

	// mu guards the write side: deliveries write from other goroutines.
	// The socket write happens under mu, so a write can never land on a
	// descriptor number that was closed and reused.
	mu        sync.Mutex
	state     connState
	shutWrite bool // SHUT_WR is done
	// Owned by the poller goroutine, not mu; here to share a word.
	destroyed  bool   // set by poller.destroy; the descriptor may already be reused
	countedMax bool   // this connection holds a slot of the app's max_connections
	closingAt  uint32 // tick when closing began; guarded by mu
	out        []byte // output the socket did not take yet; guarded by mu
}

// The times a connection keeps are ticks: whole seconds since the gateway
// started, plus one so that 0 means "never". Timeouts are seconds long and
// the poller checks them once a second, so finer times would only make
// every connection bigger.

// ticks converts a time into ticks of s.
func (s *Server) ticks(t time.Time) uint32 { return uint32(t.Sub(s.epoch)/time.Second) + 1 }

// durationTicks is d in ticks, rounded up, at least one.
func durationTicks(d time.Duration) uint32 {
	return uint32(max((d+time.Second-1)/time.Second, 1))
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

// preparing is a subscription on its way: its shared state (presence
// membership, cached event, NATS subscription) is being set up on an async
// lane. An unsubscribe meanwhile marks it cancelled, and the lane's result
// is then undone instead of joined.
type preparing struct {
	cancelled bool
}

// connExt is the state few connections need, kept out of conn so that an
// idle subscriber stays small. Only the poller goroutine touches it.
type connExt struct {
	// preparing are the subscriptions on their way, by channel.
	preparing map[string]*preparing
	// subIndex finds a channel in subs once there are many, so that no
	// per-connection work grows with the square of its subscriptions.
	subIndex map[string]int
	// pong is the answer to the latest WebSocket ping, kept while output
	// is waiting: a client that pings and never reads holds one pong, not
	// one per ping (RFC 6455 §5.5.3 lets a pong answer only the latest).
	// pusherPong is the same for pusher:ping.
	pong       []byte
	pusherPong bool

	userID    string // signed in as (or signing in as, while signingIn), or ""
	signingIn bool   // the sign-in waits on the shared state: not answered yet
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

// signedInAs is the user the connection signed in as, once the sign-in
// has been answered: nothing may act on a sign-in the shared state could
// still refuse.
func (c *conn) signedInAs() string {
	if c.ext == nil || c.ext.signingIn {
		return ""
	}
	return c.ext.userID
}

// subIndexMin is the subscription count from which a connection indexes
// its channels: below it a scan is cheaper than a map.
const subIndexMin = 8

func (c *conn) findSub(name string) int {
	if c.ext != nil && c.ext.subIndex != nil {
		if i, ok := c.ext.subIndex[name]; ok {
			return i
		}
		return -1
	}
	for i := range c.subs {
		if c.subs[i].ch.name == name {
			return i
		}
	}
	return -1
}

// addSub records a channel the connection joined.
func (c *conn) addSub(cs chanSub) {
	c.subs = append(c.subs, cs)
	if len(c.subs) < subIndexMin {
		return
	}
	ext := c.extension()
	if ext.subIndex == nil {
		ext.subIndex = make(map[string]int, len(c.subs))
		for i := range c.subs {
			ext.subIndex[c.subs[i].ch.name] = i
		}
		return
	}
	ext.subIndex[cs.ch.name] = len(c.subs) - 1
}

// removeSub forgets subs[i], moving the last one into its place.
func (c *conn) removeSub(i int) chanSub {
	cs := c.subs[i]
	last := len(c.subs) - 1
	c.subs[i] = c.subs[last]
	c.subs[last] = chanSub{}
	c.subs = c.subs[:last]
	if c.ext != nil && c.ext.subIndex != nil {
		delete(c.ext.subIndex, cs.ch.name)
		if i < last {
			c.ext.subIndex[c.subs[i].ch.name] = i
		}
		if len(c.subs) == 0 {
			c.ext.subIndex = nil
		}
	}
	if len(c.subs) == 0 {
		c.subs = nil
	}
	c.releaseExt()
	return cs
}

func (c *conn) preparingFor(name string) *preparing {
	if c.ext == nil {
		return nil
	}
	return c.ext.preparing[name]
}

// subscriptionCount is the channels the connection is on or on its way to,
// cancelled ones included: each holds work in flight.
func (c *conn) subscriptionCount() int {
	n := len(c.subs)
	if c.ext != nil {
		n += len(c.ext.preparing)
	}
	return n
}

// releaseExt drops the rare state once nothing is left in it, so that a
// connection that subscribed and settled is small again.
func (c *conn) releaseExt() {
	e := c.ext
	if e == nil || len(e.preparing) > 0 || e.subIndex != nil || e.pong != nil || e.pusherPong ||
		e.userID != "" || e.lastFill != 0 {
		return
	}
	c.ext = nil
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
	if len(c.out) == 0 && c.fd >= 0 {
		n, err := fdWrite(c.fd, b)
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
func (c *conn) queueLocked(b []byte) {
	srv := c.poller.srv
	waiting := len(c.out)
	if c.fd < 0 {
		waiting += c.asNet().flying
	}
	if waiting+len(b) > srv.opts.MaxOutbound {
		srv.prom.SlowConsumers.Inc()
		srv.limitHit(metrics.LimitOutbound, c)
		c.abortLocked()
		return
	}
	// Every byte waiting in any connection's out is charged to the
	// process's budget, so that many slow clients together cannot hold
	// more than MaxOutboundTotal, each below its own limit.
	if srv.outbound.Add(int64(len(b))) > srv.opts.MaxOutboundTotal {
		srv.outbound.Add(-int64(len(b)))
		srv.prom.SlowConsumers.Inc()
		srv.limitHit(metrics.LimitOutboundTotal, c)
		c.abortLocked()
		return
	}
	// The socket is full; edge-triggered EPOLLOUT tells the poller when it
	// drains, and flush writes the rest.
	c.out = append(c.out, b...)
	if c.fd < 0 {
		c.asNet().kickLocked()
	}
}

// idleLocked reports that no output is waiting: what is written now goes
// out before anything else.
func (c *conn) idleLocked() bool {
	return len(c.out) == 0 && (c.fd >= 0 || !c.asNet().writing)
}

// dropOutLocked forgets the output waiting, and gives its bytes back to
// the process's budget.
func (c *conn) dropOutLocked() {
	if len(c.out) > 0 {
		c.poller.srv.outbound.Add(-int64(len(c.out)))
	}
	c.out = nil
}

// writePong answers a WebSocket ping. While output is waiting, only the
// latest ping's answer is kept, so a client that pings without reading
// holds at most one pong. Only the poller goroutine calls it.
func (c *conn) writePong(payload []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	if c.idleLocked() {
		var buf [2 + 125]byte
		c.writeLocked(protocol.AppendFrame(buf[:0], protocol.OpPong, payload))
		return
	}
	ext := c.extension()
	ext.pong = protocol.AppendFrame(ext.pong[:0], protocol.OpPong, payload)
	c.pongsHeldLocked()
}

// pongsHeldLocked tells a portable connection's write goroutine that
// pongs are kept for when it is done; on the fd backends, flush finds them.
func (c *conn) pongsHeldLocked() {
	if c.fd < 0 {
		c.asNet().heldPongs = true
	}
}

// writePusherPong answers pusher:ping, keeping at most one answer while
// output is waiting, as writePong does.
func (c *conn) writePusherPong() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	if c.idleLocked() {
		c.writeLocked(c.poller.srv.frames.pong)
		return
	}
	c.extension().pusherPong = true
	c.pongsHeldLocked()
}

// writeHeldPongsLocked writes the pongs kept while output was waiting;
// flush calls it once out is empty, on the poller goroutine (for a
// portable connection, the write goroutine has the poller call it).
func (c *conn) writeHeldPongsLocked() {
	ext := c.ext
	if ext == nil || (ext.pong == nil && !ext.pusherPong) {
		return
	}
	pong, pusherPong := ext.pong, ext.pusherPong
	ext.pong, ext.pusherPong = nil, false
	if pong != nil {
		c.writeLocked(pong)
	}
	if pusherPong && c.state == stateOpen {
		c.writeLocked(c.poller.srv.frames.pong)
	}
}

// writeFrames writes frames to the client with one writev, keeping what
// the socket does not take. iovecs is the caller's scratch space, so the
// common case allocates nothing.
func (c *conn) writeFrames(frames [][]byte, iovecs *[]iovec) {
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
	if len(c.out) == 0 && c.fd >= 0 {
		n, err := fdWritev(c.fd, frames, iovecs)
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

// closeWith sends a pusher:error (when code is a Pusher code and errMsg is
// set) and a close frame, then half-closes and waits for the peer. It is
// for closes the server decides, and counts them; echoClose answers the
// peer's.
func (c *conn) closeWith(code int, errMsg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	c.poller.srv.prom.Error(code, c.app.ID)
	var msg []byte
	if errMsg != "" && code >= 4000 {
		msg = protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, errMsg))
	}
	c.closeLocked(protocol.AppendCloseFrame(msg, uint16(code), errMsg))
}

// echoClose answers the peer's close frame with its code, which the frame
// reader has checked may be sent (RFC 6455 §5.5.1).
func (c *conn) echoClose(code int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	c.closeLocked(protocol.AppendCloseFrame(nil, uint16(code), ""))
}

func (c *conn) closeLocked(msg []byte) {
	c.writeLocked(msg)
	if c.state != stateOpen {
		return // the write failed and aborted
	}
	c.state = stateClosing
	c.closingAt = c.poller.srv.ticks(time.Now())
	if c.idleLocked() {
		c.shutWrite = true
		c.shutdownWriteLocked()
	}
}

// shutdownWriteLocked half-closes the socket once the last frame is out,
// so that the peer reads our close frame and then the end of the stream.
func (c *conn) shutdownWriteLocked() {
	if c.fd < 0 {
		c.asNet().shutdownWrite()
		return
	}
	fdShutdownWrite(c.fd)
}

// closeSocketLocked closes the socket for good; only the poller's destroy
// and the end of Serve call it.
func (c *conn) closeSocketLocked() {
	if c.fd < 0 {
		_ = c.asNet().nc.Close()
		return
	}
	fdClose(c.fd)
}

// abortLocked drops the connection without ceremony. Any goroutine may
// call it; shutting the socket down makes the poller see a hang-up (or
// the portable read goroutine an error) and destroy the connection on its
// own goroutine.
func (c *conn) abortLocked() {
	if c.state == stateDead {
		return
	}
	c.dropOutLocked()
	if c.state == stateOpen {
		c.state = stateClosing
		c.closingAt = c.poller.srv.ticks(time.Now())
	}
	c.shutWrite = true
	if c.fd < 0 {
		// Closing a net.Conn cannot hand its descriptor to another
		// connection while this one is still in the table, as closing a
		// raw descriptor could: it is safe from any goroutine.
		_ = c.asNet().nc.Close()
		return
	}
	fdShutdown(c.fd)
}

func (c *conn) isOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateOpen
}
