package gateway

import (
	"context"
	"errors"
	"strings"

	"github.com/resoundhq/resound/pkg/presence"
	"github.com/resoundhq/resound/protocol"
)

// pendingSub is a subscription waiting for its NATS subscription to reach
// the server; see poller.completeSubscriptions.
type pendingSub struct {
	c       *conn
	ch      *channel
	created bool
	// frames are written on joining: subscription_succeeded, then the
	// cached event or cache_miss.
	frames []byte
	member *protocol.PresenceMember // nil unless presence
	// announce is set for a user's first presence connection:
	// member_added goes out once the subscriber has joined.
	announce bool
	// presenceRev is the revision of the member list in frames.
	presenceRev uint64
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
		if h.opcode == protocol.OpText || h.opcode == protocol.OpBinary || h.opcode == protocol.OpContinuation {
			total := h.length
			if h.opcode == protocol.OpContinuation {
				if c.ext != nil {
					total += int64(len(c.ext.fragments))
				}
			}
			if total > int64(c.app.MaxMessageSize) {
				c.partial = nil
				if c.ext != nil {
					c.ext.fragments = nil
				}
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
	case protocol.OpText, protocol.OpBinary:
		// Pusher says binary frames are not supported; Reverb reads them as
		// text. Reading them costs nothing and breaks no client, so Resound
		// follows Reverb.
		if c.ext != nil && c.ext.fragmented {
			c.closeWith(protocol.CloseProtocolError, "Expected a continuation frame")
			return
		}
		if !h.fin {
			ext := c.extension()
			ext.fragmented = true
			ext.fragments = append([]byte(nil), payload...)
			return
		}
		s.handleMessage(c, payload)
	case protocol.OpContinuation:
		if c.ext == nil || !c.ext.fragmented {
			c.closeWith(protocol.CloseProtocolError, "Unexpected continuation frame")
			return
		}
		ext := c.ext
		ext.fragments = append(ext.fragments, payload...)
		if h.fin {
			msg := ext.fragments
			ext.fragments, ext.fragmented = nil, false
			s.handleMessage(c, msg)
		}
	case protocol.OpPing:
		c.write(protocol.AppendFrame(nil, protocol.OpPong, payload))
	case protocol.OpPong:
		// lastSeen is already updated.
	case protocol.OpClose:
		code := uint16(protocol.CloseNormal)
		if len(payload) >= 2 {
			code = uint16(payload[0])<<8 | uint16(payload[1])
		}
		c.closeWith(int(code), "")
	}
}

func (s *Server) handleMessage(c *conn, msg []byte) {
	s.prom.MessagesIn.WithLabelValues("client").Inc()
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
	s.prom.Error(code, c.app.ID)
	s.prom.MessagesOut.Inc()
	c.write(protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, message)))
}

// subscriptionError tells the client a subscription failed twice over: a
// pusher:subscription_error on the channel, which laravel-echo's .error()
// and pusher-js's channel listeners receive, and the channel-less
// pusher:error 4009 that Reverb sends, for clients that listen for that.
func (s *Server) subscriptionError(c *conn, channel, errType, message string, status int) {
	out := protocol.AppendTextFrame(nil, protocol.AppendSubscriptionError(nil, channel, errType, message, status))
	out = protocol.AppendTextFrame(out, protocol.AppendError(nil, protocol.CodeUnauthorized, message))
	s.prom.Error(protocol.CodeUnauthorized, c.app.ID)
	s.prom.MessagesOut.Add(2)
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
	kind := protocol.ClassifyChannel(name)
	var member protocol.PresenceMember
	switch kind.Auth {
	case protocol.AuthPrivate, protocol.AuthPresence:
		// pusher-http-php's authorizeChannel signs channel_data whenever it
		// is given, even for private channels, and Reverb checks it so.
		msg := protocol.ChannelAuthMessage(c.socketID(), name, d.ChannelData, d.HasChannelData)
		if !protocol.VerifyAuth(c.app.Key, c.app.Secret, d.Auth, msg) {
			s.subscriptionError(c, name, "AuthError", "Connection is unauthorized", 401)
			return
		}
		if kind.Auth == protocol.AuthPresence {
			lim := protocol.PresenceLimits{MaxInfo: c.app.MaxPresenceUserInfo, MaxIDLength: c.app.MaxPresenceUserIDLength}
			if member, err = protocol.ParseChannelData(d.ChannelData, lim); err != nil {
				s.subscriptionError(c, name, "InvalidChannelData", "Invalid channel_data: "+err.Error(), 400)
				return
			}
		}
	case protocol.AuthUser:
		if !strings.HasPrefix(name, protocol.PrefixServerToUser) || c.signedInAs() == "" ||
			name != protocol.ServerToUserChannel(c.signedInAs()) {
			s.subscriptionError(c, name, "AuthError", "Only the signed-in user may subscribe to "+name, 401)
			return
		}
	}
	if i := c.findSub(name); i >= 0 {
		// Reverb answers a repeated subscription again; so does Resound.
		c.write(s.succeededFrame(c, name, nil))
		return
	}
	for _, pr := range c.preparingList() {
		if pr.name == name && !pr.cancelled {
			return // already on its way
		}
	}
	for _, ps := range c.poller.newSubs {
		if ps.c == c && ps.ch.name == name {
			return
		}
	}
	if kind.Auth == protocol.AuthPresence || kind.Cache {
		s.prepareSubscription(c, name, kind, member)
		return
	}
	s.addPending(c, name, pendingSub{frames: s.succeededFrame(c, name, nil)})
}

func (s *Server) succeededFrame(c *conn, name string, members []protocol.PresenceMember) []byte {
	if protocol.ClassifyChannel(name).Auth == protocol.AuthPresence {
		return protocol.AppendTextFrame(nil, protocol.AppendPresenceSucceeded(nil, name, members))
	}
	return protocol.AppendTextFrame(nil, protocol.AppendSubscriptionSucceeded(nil, name))
}

// addPending takes the hub reference for a subscription and queues it for
// completion at the end of this poller wake-up.
func (s *Server) addPending(c *conn, name string, ps pendingSub) bool {
	ch, created, err := s.hub.acquire(c.app, name)
	if err != nil {
		s.log.Error().Err(err).Str("channel", name).Msg("subscribing to deliveries")
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
		return false
	}
	ps.c, ps.ch, ps.created = c, ch, created
	c.poller.newSubs = append(c.poller.newSubs, ps)
	return true
}

// prepareSubscription fetches what a presence or cache subscription needs
// from the shared state, off the poller goroutine, then finishes it there.
func (s *Server) prepareSubscription(c *conn, name string, kind protocol.ChannelKind, member protocol.PresenceMember) {
	ext := c.extension()
	ext.preparing = append(ext.preparing, preparing{name: name})
	sid := c.socketID()
	app := c.app
	s.async(func(ctx context.Context) {
		var (
			res   presence.JoinResult
			err   error
			cache []byte
		)
		if kind.Auth == protocol.AuthPresence {
			res, err = s.presence.Join(ctx, app.ID, name, member, sid, s.opts.GatewayID, app.MaxPresenceMembers)
		}
		if err == nil && kind.Cache {
			cache, err = s.cachedFrame(ctx, app.ID, name)
		}
		c.poller.post(func() { s.finishPrepared(c, name, kind, member, res, cache, err) })
	})
}

func (s *Server) finishPrepared(c *conn, name string, kind protocol.ChannelKind, member protocol.PresenceMember,
	res presence.JoinResult, cache []byte, err error) {
	cancelled := true
	if ext := c.ext; ext != nil {
		for i, pr := range ext.preparing {
			if pr.name == name {
				cancelled = pr.cancelled || c.destroyed
				ext.preparing = append(ext.preparing[:i], ext.preparing[i+1:]...)
				break
			}
		}
		if len(ext.preparing) == 0 {
			ext.preparing = nil
		}
	}
	joined := err == nil && kind.Auth == protocol.AuthPresence
	if cancelled {
		if joined {
			s.presenceLeave(c.app, name, member.ID, c.socketID())
		}
		return
	}
	switch {
	case errors.Is(err, presence.ErrFull):
		s.subscriptionError(c, name, "LimitReached", "The presence channel has reached its member limit", 403)
		return
	case err != nil:
		s.log.Error().Err(err).Str("channel", name).Msg("preparing subscription")
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
		return
	}
	frames := s.succeededFrame(c, name, res.Members)
	if kind.Cache {
		if cache != nil {
			frames = append(frames, cache...)
		} else {
			frames = protocol.AppendTextFrame(frames, protocol.AppendCacheMiss(nil, name))
		}
	}
	ps := pendingSub{frames: frames, announce: joined && res.First, presenceRev: res.Revision}
	if joined {
		ps.member = &member
	}
	if !s.addPending(c, name, ps) && joined {
		s.presenceLeave(c.app, name, member.ID, c.socketID())
	}
}

func (s *Server) unsubscribe(c *conn, m protocol.ClientMessage) {
	name, err := protocol.ParseUnsubscribeData(m.Data)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	if i := c.findSub(name); i >= 0 {
		cs := c.subs[i]
		c.subs = append(c.subs[:i], c.subs[i+1:]...)
		if len(c.subs) == 0 {
			c.subs = nil
			s.appStats(c.app).subscribed.Add(-1)
		}
		s.leave(c, cs)
		return
	}
	for i, pr := range c.preparingList() {
		if pr.name == name {
			c.ext.preparing[i].cancelled = true
			return
		}
	}
	subs := c.poller.newSubs
	for i, ps := range subs {
		if ps.c == c && ps.ch.name == name {
			c.poller.newSubs = append(subs[:i], subs[i+1:]...)
			s.hub.release(ps.ch)
			if ps.member != nil {
				s.presenceLeave(c.app, name, ps.member.ID, c.socketID())
			}
			return
		}
	}
	// Unsubscribing from a channel one is not on is a no-op, as in Reverb.
}

// leave takes c off a channel it had joined.
func (s *Server) leave(c *conn, cs chanSub) {
	s.metrics.subscriptions.Add(-1)
	s.hub.unsubscribe(cs.ch, c)
	if cs.member != nil {
		s.presenceLeave(c.app, cs.ch.name, cs.member.ID, c.socketID())
	}
	s.subscriptionCountChanged(cs.ch)
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
		if c.destroyed || !c.isOpen() {
			p.srv.hub.release(ps.ch)
			if ps.member != nil {
				p.srv.presenceLeave(c.app, ps.ch.name, ps.member.ID, c.socketID())
			}
			continue
		}
		ps.ch.join(c, ps.frames, ps.presenceRev)
		p.srv.prom.MessagesOut.Inc()
		p.srv.metrics.subscriptions.Add(1)
		if len(c.subs) == 0 {
			p.srv.appStats(c.app).subscribed.Add(1)
		}
		c.subs = append(c.subs, chanSub{ch: ps.ch, member: ps.member})
		if ps.announce {
			p.srv.publishPresence(c.app, ps.ch.name,
				protocol.AppendTextFrame(nil, protocol.AppendMemberAdded(nil, ps.ch.name, *ps.member)), c.socketID(), ps.presenceRev)
		}
		p.srv.subscriptionCountChanged(ps.ch)
	}
}
