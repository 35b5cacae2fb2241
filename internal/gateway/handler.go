package gateway

import (
	"strings"

	"github.com/resoundhq/resound/protocol"
)

// handleBytes consumes bytes read from c: whole frames are handled, a
// trailing partial frame is kept. It returns false when the connection must
// be destroyed at once.
func (s *Server) handleBytes(c *conn, data []byte) bool {
	if !c.IsOpen() {
		c.reader.reset()
		return true // closing: discard until the peer closes
	}
	frames, err := c.reader.feed(data, c.app.MaxMessageSize, c)
	if frames > 0 {
		c.lastSeen = c.Poller().Tick()
		c.pingSentAt = 0
	}
	if err != nil {
		re := err.(*readError)
		s.limitHit(re.limit, c)
		c.closeWith(re.code, re.reason)
	}
	return true
}

// The frame reader hands a connection's frames to it.

func (c *conn) onMessage(payload []byte) bool {
	c.srv().handleMessage(c, payload)
	return c.IsOpen()
}

func (c *conn) onPing(payload []byte) bool {
	c.writePong(payload)
	return true
}

func (c *conn) onPong() bool { return true } // lastSeen is updated by handleBytes

func (c *conn) onClose(code int) bool {
	c.echoClose(code)
	return false
}

func (s *Server) handleMessage(c *conn, msg []byte) {
	s.prom.MessagesIn.WithLabelValues("client").Inc()
	faultOnMessage(msg)
	m, err := protocol.ParseClientMessage(msg)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	switch m.Event {
	case protocol.EventPing:
		c.writePusherPong()
	case protocol.EventPong:
		// Any frame counts as activity; nothing else to do.
	case protocol.EventSubscribe:
		s.subscribe(c, m)
	case protocol.EventUnsubscribe:
		s.unsubscribe(c, m)
	case protocol.EventSignin:
		s.signin(c, m)
	default:
		switch {
		case strings.HasPrefix(m.Event, "pusher:"):
			s.sendError(c, protocol.CodeInvalidMessage, "Unsupported event "+m.Event)
		case strings.HasPrefix(m.Event, protocol.ClientEventPrefix):
			s.clientEvent(c, m)
		default:
			// Reverb ignores events that are neither pusher: nor client-
			// events, and so does Resound.
		}
	}
}

func (s *Server) sendError(c *conn, code int, message string) {
	s.errorSent(c.app, c, code, message, "")
	s.prom.MessagesOut.Inc()
	c.Write(protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, message)))
}

// subscriptionError tells the client a subscription failed twice over: a
// pusher:subscription_error on the channel, which laravel-echo's .error()
// and pusher-js's channel listeners receive, and the channel-less
// pusher:error 4009 that Reverb sends, for clients that listen for that.
func (s *Server) subscriptionError(c *conn, channel, errType, message string, status int) {
	s.subscriptionRefused(c, channel, errType, message, status, protocol.CodeUnauthorized)
}

// subscriptionRefused is subscriptionError with another pusher:error code.
func (s *Server) subscriptionRefused(c *conn, channel, errType, message string, status, code int) {
	out := protocol.AppendTextFrame(nil, protocol.AppendSubscriptionError(nil, channel, errType, message, status))
	out = protocol.AppendTextFrame(out, protocol.AppendError(nil, code, message))
	s.errorSent(c.app, c, code, message, channel)
	s.prom.MessagesOut.Add(2)
	c.Write(out)
}
