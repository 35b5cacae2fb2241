package gateway

import (
	"time"
	"unsafe"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/protocol"
)

// conn is one Pusher client connection: the session state above its
// socket. reactor.Conn, the socket, comes first: the reactor hands the
// session a *reactor.Conn, and sessionOf finds the conn it starts (see
// sessionOf), so conn needs no pointer back and the reactor none forward.
//
// Its size is every idle connection's cost (160 bytes, a size class, on
// 64-bit platforms: TestConnSize).
type conn struct {
	reactor.Conn
	app *config.App
	// sidA and sidB are the two numbers of the socket id "sidA.sidB".
	sidA, sidB uint64

	// Owned by the poller goroutine.
	reader     frameReader
	lastSeen   uint32 // tick of the last frame received
	pingSentAt uint32 // tick of our unanswered ping, or 0
	subs       []chanSub
	ext        *connExt // rarer state, made on first use
	ipSlot     *ipSlot  // its client address's count, when connections per IP are capped
}

// sessionOf is the conn whose socket rc is. Every reactor.Conn the
// gateway's reactor holds is the first field of a conn (attach makes them
// so), which the compile-time check below keeps true.
func sessionOf(rc *reactor.Conn) *conn { return (*conn)(unsafe.Pointer(rc)) }

// conn's socket must stay its first field, for sessionOf.
var _ [0]struct{} = [unsafe.Offsetof(conn{}.Conn)]struct{}{}

// srv is the gateway the connection belongs to.
func (c *conn) srv() *Server { return c.Poller().Handler().(*sessions).s }

// countedMax reports that the connection holds a slot of its app's
// max_connections: the handshake takes one for every connection of an app
// with the limit, and an app's settings do not change under a connection,
// so this needs no field of its own (conn's size).
func (c *conn) countedMax() bool { return c.app.MaxConnections > 0 }

// The times a connection keeps are ticks (reactor.Ticks) from the
// gateway's start.

// ticks converts a time into ticks of s.
func (s *Server) ticks(t time.Time) uint32 { return reactor.Ticks(s.epoch, t) }

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

// writePong answers a WebSocket ping. While output is waiting, only the
// latest ping's answer is kept, so a client that pings without reading
// holds at most one pong. Only the poller goroutine calls it.
func (c *conn) writePong(payload []byte) {
	c.Lock()
	defer c.Unlock()
	if !c.OpenLocked() {
		return
	}
	if c.IdleLocked() {
		var buf [2 + 125]byte
		c.WriteLocked(protocol.AppendFrame(buf[:0], protocol.OpPong, payload))
		return
	}
	ext := c.extension()
	ext.pong = protocol.AppendFrame(ext.pong[:0], protocol.OpPong, payload)
	c.WantDrainedLocked()
}

// writePusherPong answers pusher:ping, keeping at most one answer while
// output is waiting, as writePong does.
func (c *conn) writePusherPong() {
	c.Lock()
	defer c.Unlock()
	if !c.OpenLocked() {
		return
	}
	if c.IdleLocked() {
		c.WriteLocked(c.srv().frames.pong)
		return
	}
	c.extension().pusherPong = true
	c.WantDrainedLocked()
}

// writeHeldPongsLocked writes the pongs kept while output was waiting;
// the reactor calls it (DrainedLocked) once that output is out, on the
// poller goroutine.
func (c *conn) writeHeldPongsLocked() {
	ext := c.ext
	if ext == nil || (ext.pong == nil && !ext.pusherPong) {
		return
	}
	pong, pusherPong := ext.pong, ext.pusherPong
	ext.pong, ext.pusherPong = nil, false
	if pong != nil {
		c.WriteLocked(pong)
	}
	if pusherPong && c.OpenLocked() {
		c.WriteLocked(c.srv().frames.pong)
	}
}

// closeWith sends a pusher:error (when code is a Pusher code and errMsg is
// set) and a close frame, then half-closes and waits for the peer. It is
// for closes the server decides, and counts them; echoClose answers the
// peer's.
func (c *conn) closeWith(code int, errMsg string) {
	c.Lock()
	defer c.Unlock()
	if !c.OpenLocked() {
		return
	}
	c.srv().noteClosing(c, code, errMsg, false)
	var msg []byte
	if errMsg != "" && code >= 4000 {
		msg = protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, errMsg))
	}
	c.CloseLocked(protocol.AppendCloseFrame(msg, uint16(code), errMsg))
}

// echoClose answers the peer's close frame with its code, which the frame
// reader has checked may be sent (RFC 6455 §5.5.1).
func (c *conn) echoClose(code int) {
	c.Lock()
	defer c.Unlock()
	if !c.OpenLocked() {
		return
	}
	c.srv().noteClosing(c, code, "", true)
	c.CloseLocked(protocol.AppendCloseFrame(nil, uint16(code), ""))
}
