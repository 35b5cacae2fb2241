package gateway

import (
	"context"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/protocol"
)

// clientEvent relays a client-* event to the channel's other subscribers,
// on every gateway. Pusher's rules apply: private and presence channels
// only (never encrypted ones), from members of the channel unless the app
// accepts them from all, at most client_event_rate_limit per second.
// Reverb is laxer on every point; Resound follows Pusher.
func (s *Server) clientEvent(c *conn, m protocol.ClientMessage) {
	app := c.app
	if app.AcceptClientEventsFrom == config.ClientEventsNone {
		s.sendError(c, protocol.CodeClientRateLimit, "The app does not have client messaging enabled.")
		return
	}
	if !m.HasChannel || !protocol.ValidChannelName(m.Channel) {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	kind := protocol.ClassifyChannel(m.Channel)
	switch {
	case kind.Encrypted:
		s.sendError(c, protocol.CodeUnauthorized, "Client events are not supported on encrypted channels.")
		return
	case kind.Auth != protocol.AuthPrivate && kind.Auth != protocol.AuthPresence:
		s.sendError(c, protocol.CodeUnauthorized, "Client events are only supported on private and presence channels.")
		return
	}
	i := c.findSub(m.Channel)
	if i < 0 && app.AcceptClientEventsFrom != config.ClientEventsAll {
		s.sendError(c, protocol.CodeUnauthorized, "The client is not a member of the specified channel.")
		return
	}
	if !s.takeClientEventToken(c) {
		s.limitHit(metrics.LimitClientEventRate, c)
		s.sendError(c, protocol.CodeClientRateLimit, "Client event rejected due to rate limit")
		return
	}
	userID := ""
	if i >= 0 {
		userID = c.subs[i].userID()
	}
	frame := protocol.AppendTextFrame(nil, protocol.AppendClientEvent(nil, m.Event, m.Channel, m.Data, userID))
	channel, sid := m.Channel, c.socketID()
	// The client_event webhook, Pusher's fields: user_id on presence
	// channels only. Its data is copied here, off the read buffer, and
	// only for apps that want it.
	var hook *protocol.WebhookEvent
	if s.wantsHook(app, protocol.WebhookClientEvent, channel) {
		hook = &protocol.WebhookEvent{Name: protocol.WebhookClientEvent, Channel: channel, Event: m.Event, Data: protocol.WebhookData(m.Data), SocketID: sid}
		if kind.Auth == protocol.AuthPresence {
			hook.UserID = userID
		}
	}
	// Publishing may wait on NATS, so it happens on the connection's lane,
	// which also keeps one connection's client events in order; the
	// webhook is recorded once the event is relayed.
	if !s.lanes.try(c.sidA, c, func(context.Context) {
		s.publishToChannel(app, channel, frame, sid)
		if hook != nil {
			s.recordHook(app, *hook, 0)
		}
	}) {
		s.limitHit(metrics.LimitPendingOps, c)
		s.sendError(c, protocol.CodeClientRateLimit, "Client event rejected: the server is busy, try again")
		return
	}
	s.noteClientEvent(c, m, userID)
}

// takeClientEventToken is a token bucket of client_event_rate_limit tokens
// refilled at that many per second.
func (s *Server) takeClientEventToken(c *conn) bool {
	rate := float64(c.app.ClientEventRateLimit)
	ext := c.extension()
	now := c.Poller().Now()
	if ext.lastFill == 0 {
		ext.tokens = rate
	} else {
		ext.tokens += float64(now-ext.lastFill) / 1e9 * rate
		if ext.tokens > rate {
			ext.tokens = rate
		}
	}
	ext.lastFill = now
	if ext.tokens < 1 {
		return false
	}
	ext.tokens--
	return true
}
