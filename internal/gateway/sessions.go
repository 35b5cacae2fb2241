package gateway

import (
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/protocol"
)

// sessions is where the reactor meets the Pusher session: the
// reactor.Handler of a gateway's reactor. The reactor calls it with
// sockets; it finds their conns (sessionOf) and hands them to the session
// code. It is a type of its own so that Server's exported methods stay the
// gateway's API.
type sessions struct{ s *Server }

var _ reactor.Handler = (*sessions)(nil)

// Received: bytes read from a connection (handler.go).
func (h *sessions) Received(rc *reactor.Conn, data []byte) bool {
	return h.s.handleBytes(sessionOf(rc), data)
}

// Scan pings silent connections and closes those that never answered.
func (h *sessions) Scan(rc *reactor.Conn) (next uint32) {
	c, s := sessionOf(rc), h.s
	now := rc.Poller().Tick()
	pongTimeout := reactor.DurationTicks(s.opts.PongTimeout)
	if c.pingSentAt != 0 {
		if now-c.pingSentAt >= pongTimeout {
			c.closeWith(protocol.CodePongTimeout, "Pong reply not received in time")
			return 0 // closing: dropped from the wheel at its next look
		}
		return c.pingSentAt + pongTimeout
	}
	interval := reactor.DurationTicks(c.app.PingInterval.Duration())
	// Signed: a connection's lastSeen is set from the clock on the
	// handshake worker, and can be a tick ahead of its poller's; unsigned,
	// now-lastSeen wrapped and a new connection was pinged at once.
	if int32(now-c.lastSeen) >= int32(interval) {
		c.pingSentAt = now
		c.Write(s.frames.ping)
		return now + pongTimeout
	}
	// Frames received meanwhile only put the ping off: looked at then,
	// the connection is scheduled again from its new lastSeen.
	return c.lastSeen + interval
}

// DrainedLocked writes the pongs held while output waited.
func (h *sessions) DrainedLocked(rc *reactor.Conn) { sessionOf(rc).writeHeldPongsLocked() }

// Destroyed releases what a closed connection held: its channels, its
// sign-in, its slots and its place in the counts.
func (h *sessions) Destroyed(rc *reactor.Conn) {
	c, s := sessionOf(rc), h.s
	c.reader.reset()
	if c.ext != nil {
		for _, pr := range c.ext.preparing {
			pr.cancelled = true // finishSubscribe undoes them
		}
		c.ext.subIndex = nil
	}
	subs := c.subs
	c.subs = nil
	s.leave(c, subs)
	if len(subs) > 0 {
		s.appStats(c.app).subscribed.Add(-1)
	}
	s.signOut(c)
	if c.countedMax() {
		s.releaseConnectionSlot(c.app)
	}
	s.perIP.release(c.ipSlot)
	c.ipSlot = nil
	s.metrics.connections.Add(-1)
	s.appStats(c.app).conns.Dec()
	s.noteDestroyed(c)
}

// Overflow counts a client cut off for not reading.
func (h *sessions) Overflow(rc *reactor.Conn, total bool) {
	h.s.prom.SlowConsumers.Inc()
	l := metrics.LimitOutbound
	if total {
		l = metrics.LimitOutboundTotal
	}
	h.s.limitHit(l, sessionOf(rc))
}

// Recovered logs and counts a panic on a poller, and closes the
// connection concerned with 1011.
func (h *sessions) Recovered(r any, rc *reactor.Conn) {
	var c *conn
	if rc != nil {
		c = sessionOf(rc)
	}
	h.s.recovered(metrics.PanicPoller, r, c)
}
