package gateway

import (
	"strings"

	"github.com/resoundhq/resound/protocol"
)

// pendingSub is a subscription waiting for its NATS subscription to reach
// the server; see poller.completeSubscriptions.
type pendingSub struct {
	c       *conn
	ch      *channel
	created bool
}

// handleBytes consumes bytes read from c: whole frames are handled, a
// trailing partial frame is kept. It returns false when the connection must
// be destroyed at once.
func (s *Server) handleBytes(c *conn, data []byte) bool {
	if !c.isOpen() {
		c.partial = nil
		return true // closing: discard until the peer closes
	}
	if c.partial != nil {
		data = append(c.partial, data...)
	}
	for len(data) > 0 {
		h, err := parseFrameHeader(data)
		if err == errNeedMore {
			break
		}
		if err != nil {
			c.partial = nil
			c.closeWith(protocol.CloseProtocolError, "Protocol error")
			return true
		}
		if h.opcode == opText || h.opcode == opBinary || h.opcode == opContinuation {
			total := h.length
			if h.opcode == opContinuation {
				total += int64(len(c.fragments))
			}
			if total > int64(c.app.MaxMessageSize) {
				c.partial, c.fragments = nil, nil
				c.closeWith(protocol.CloseMessageTooBig, protocol.CloseReasonTooBigMsg)
				return true
			}
		}
		end := int64(h.size) + h.length
		if int64(len(data)) < end {
			break
		}
		payload := data[h.size:end]
		unmask(payload, h.mask)
		data = data[end:]
		c.lastSeen = c.poller.now
		c.pingSentAt = 0
		s.handleFrame(c, h, payload)
		if !c.isOpen() {
			c.partial = nil
			return true
		}
	}
	if len(data) == 0 {
		c.partial = nil
	} else {
		// Only a frame cut in two by the network costs a buffer, and only
		// until its rest arrives.
		c.partial = append([]byte(nil), data...)
	}
	return true
}

func (s *Server) handleFrame(c *conn, h frameHeader, payload []byte) {
	switch h.opcode {
	case opText, opBinary:
		// Pusher says binary frames are not supported; Reverb reads them as
		// text. Reading them costs nothing and breaks no client, so Resound
		// follows Reverb.
		if c.fragmented {
			c.closeWith(protocol.CloseProtocolError, "Expected a continuation frame")
			return
		}
		if !h.fin {
			c.fragmented = true
			c.fragments = append([]byte(nil), payload...)
			return
		}
		s.handleMessage(c, payload)
	case opContinuation:
		if !c.fragmented {
			c.closeWith(protocol.CloseProtocolError, "Unexpected continuation frame")
			return
		}
		c.fragments = append(c.fragments, payload...)
		if h.fin {
			msg := c.fragments
			c.fragments, c.fragmented = nil, false
			s.handleMessage(c, msg)
		}
	case opPing:
		c.write(protocol.AppendFrame(nil, protocol.OpPong, payload))
	case opPong:
		// lastSeen is already updated.
	case opClose:
		code := uint16(protocol.CloseNormal)
		if len(payload) >= 2 {
			code = uint16(payload[0])<<8 | uint16(payload[1])
		}
		c.closeWith(int(code), "")
	}
}

func (s *Server) handleMessage(c *conn, msg []byte) {
	m, err := protocol.ParseClientMessage(msg)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	switch m.Event {
	case protocol.EventPing:
		c.write(s.frames.pong)
	case protocol.EventPong:
		// Any frame counts as activity; nothing else to do.
	case protocol.EventSubscribe:
		s.subscribe(c, m)
	case protocol.EventUnsubscribe:
		s.unsubscribe(c, m)
	default:
		switch {
		case strings.HasPrefix(m.Event, "pusher:"):
			s.sendError(c, protocol.CodeInvalidMessage, "Unsupported event "+m.Event)
		case strings.HasPrefix(m.Event, protocol.ClientEventPrefix):
			s.sendError(c, protocol.CodeClientRateLimit, "The app does not have client messaging enabled.")
		default:
			// Reverb ignores events that are neither pusher: nor client-
			// events, and so does Resound.
		}
	}
}

func (s *Server) sendError(c *conn, code int, message string) {
	c.write(protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, message)))
}

// subscriptionError tells the client a subscription failed twice over: a
// pusher:subscription_error on the channel, which laravel-echo's .error()
// and pusher-js's channel listeners receive, and the channel-less
// pusher:error 4009 that Reverb sends, for clients that listen for that.
func (s *Server) subscriptionError(c *conn, channel, errType, message string, status int) {
	out := protocol.AppendTextFrame(nil, protocol.AppendSubscriptionError(nil, channel, errType, message, status))
	out = protocol.AppendTextFrame(out, protocol.AppendError(nil, protocol.CodeUnauthorized, message))
	c.write(out)
}

func (s *Server) subscribe(c *conn, m protocol.ClientMessage) {
	d, err := protocol.ParseSubscribeData(m.Data)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	name := d.Channel
	if !protocol.ValidChannelName(name) {
		s.subscriptionError(c, name, "InvalidChannel",
			"Invalid channel name: at most 164 characters of A-Z a-z 0-9 _ - = @ , . ;", 400)
		return
	}
	switch protocol.ClassifyChannel(name).Auth {
	case protocol.AuthPrivate:
		// pusher-http-php's authorizeChannel signs channel_data whenever it
		// is given, even for private channels, and Reverb checks it so.
		msg := protocol.ChannelAuthMessage(c.socketID(), name, d.ChannelData, d.HasChannelData)
		if !protocol.VerifyAuth(c.app.Key, c.app.Secret, d.Auth, msg) {
			s.subscriptionError(c, name, "AuthError", "Connection is unauthorized", 401)
			return
		}
	case protocol.AuthPresence, protocol.AuthUser:
		s.subscriptionError(c, name, "UnsupportedChannel", "This channel type is not supported yet", 501)
		return
	}
	for _, ch := range c.channels {
		if ch.name == name {
			c.write(protocol.AppendTextFrame(nil, protocol.AppendSubscriptionSucceeded(nil, name)))
			return
		}
	}
	for _, ps := range c.poller.newSubs {
		if ps.c == c && ps.ch.name == name {
			return // already on its way
		}
	}
	ch, created, err := s.hub.acquire(c.app, name)
	if err != nil {
		s.log.Error().Err(err).Str("channel", name).Msg("subscribing to deliveries")
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
		return
	}
	c.poller.newSubs = append(c.poller.newSubs, pendingSub{c: c, ch: ch, created: created})
}

func (s *Server) unsubscribe(c *conn, m protocol.ClientMessage) {
	name, err := protocol.ParseUnsubscribeData(m.Data)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	for i, ch := range c.channels {
		if ch.name == name {
			c.channels = append(c.channels[:i], c.channels[i+1:]...)
			s.hub.unsubscribe(ch, c)
			return
		}
	}
	subs := c.poller.newSubs
	for i, ps := range subs {
		if ps.c == c && ps.ch.name == name {
			c.poller.newSubs = append(subs[:i], subs[i+1:]...)
			s.hub.release(ps.ch)
			return
		}
	}
	// Unsubscribing from a channel one is not on is a no-op, as in Reverb.
}

// completeSubscriptions finishes the subscriptions of one poller wake-up.
// New NATS subscriptions are flushed with one round trip for all of them;
// then each subscriber joins its channel and is told it succeeded.
func (p *poller) completeSubscriptions() {
	if len(p.newSubs) == 0 {
		return
	}
	subs := p.newSubs
	p.newSubs = nil
	for _, ps := range subs {
		if ps.created {
			if err := p.srv.hub.nc.FlushTimeout(p.srv.opts.FlushTimeout); err != nil {
				p.srv.log.Warn().Err(err).Msg("flushing new delivery subscriptions")
			}
			break
		}
	}
	for _, ps := range subs {
		c := ps.c
		if !c.isOpen() {
			p.srv.hub.release(ps.ch)
			continue
		}
		ps.ch.join(c, protocol.AppendTextFrame(nil, protocol.AppendSubscriptionSucceeded(nil, ps.ch.name)))
		c.channels = append(c.channels, ps.ch)
	}
}
