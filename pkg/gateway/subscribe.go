package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/pkg/presence"
	"github.com/resoundhq/resound/protocol"
)

// A subscription's life, all on the connection's poller goroutine except
// the steps marked (lane), which wait on NATS and run on the connection's
// async lane, in order:
//
//	subscribe ─┬─ channel ready on this gateway ─────────────────────────────▶ joined
//	           └─ preparing ─▶ (lane) presence join, cached event, NATS sub ─▶ finishSubscribe ─▶ joined
//	joined ─▶ unsubscribe or close ─▶ leave: off the member list at once, then (lane) release, presence leave
//
// An unsubscribe while preparing cancels: finishSubscribe then undoes what
// the lane did, on the same lane, after it.

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
	if c.findSub(name) >= 0 {
		// Reverb answers a repeated subscription again; so does Resound.
		c.write(s.succeededFrame(name, nil))
		return
	}
	if pr := c.preparingFor(name); pr != nil {
		// Already on its way; a subscribe after an unsubscribe revives it.
		pr.cancelled = false
		return
	}
	if c.subscriptionCount() >= s.opts.MaxChannels {
		// Pusher documents no per-connection channel limit; Centrifugo's
		// is 128. 4301 is Pusher's code for a refused client request, and
		// LimitReached the type presence limits already use.
		s.limitHit(metrics.LimitChannels, c)
		s.subscriptionRefused(c, name, "LimitReached",
			fmt.Sprintf("Subscription limit reached: at most %d channels per connection", s.opts.MaxChannels), 429, protocol.CodeClientRateLimit)
		return
	}
	if kind.Auth != protocol.AuthPresence && !kind.Cache {
		if ch := s.hub.acquireReady(c.app, name); ch != nil {
			// The common case, a channel others on this gateway are on:
			// nothing to wait for.
			s.joined(c, ch, s.succeededFrame(name, nil), nil, 0, false)
			return
		}
	}
	ext := c.extension()
	if ext.preparing == nil {
		ext.preparing = make(map[string]*preparing)
	}
	ext.preparing[name] = &preparing{}
	app, sid := c.app, c.socketID()
	ok := s.lanes.try(c.sidA, c, func(ctx context.Context) {
		var (
			res    presence.JoinResult
			cache  []byte
			ch     *channel
			err    error
			inPres bool // this connection is now in the channel's presence key
		)
		faultOnSubscribeWork(name)
		if kind.Auth == protocol.AuthPresence {
			res, err = s.presence.JoinLimited(ctx, app.ID, name, member, sid, s.opts.GatewayID,
				presence.Limits{Members: app.MaxPresenceMembers, UserConnections: app.MaxUserConnections})
			inPres = err == nil
		}
		if err == nil && kind.Cache {
			cache, err = s.cachedFrame(ctx, app.ID, name)
		}
		if err == nil {
			ch, err = s.hub.acquire(ctx, app, name)
		}
		if err != nil && inPres {
			s.presenceLeave(app, name, member.ID, sid)
			inPres = false
		}
		c.poller.post(func() { s.finishSubscribe(c, name, kind, member, res, cache, ch, inPres, err) })
	})
	if !ok {
		delete(ext.preparing, name)
		c.releaseExt()
		s.limitHit(metrics.LimitPendingOps, c)
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
	}
}

// finishSubscribe joins a prepared subscription, on the poller goroutine,
// or undoes it if it was cancelled or the connection went away meanwhile.
func (s *Server) finishSubscribe(c *conn, name string, kind protocol.ChannelKind, member protocol.PresenceMember,
	res presence.JoinResult, cache []byte, ch *channel, inPres bool, err error) {
	pr := c.preparingFor(name)
	if pr != nil {
		delete(c.ext.preparing, name)
		c.releaseExt()
	}
	if pr == nil || pr.cancelled || c.destroyed || !c.isOpen() {
		if ch != nil || inPres {
			app, sid := c.app, c.socketID()
			s.lanes.must(c.sidA, c, func(context.Context) {
				if ch != nil {
					s.hub.release(ch)
				}
				if inPres {
					if res.First {
						// The join was the user's first on the channel:
						// the others are owed member_added, whether or not
						// this leave is the user's last. Another connection
						// of the user may have joined meanwhile, and it
						// announced nothing.
						s.publishPresence(app, name, protocol.AppendTextFrame(nil, protocol.AppendMemberAdded(nil, name, member)), sid, res.Revision)
					}
					s.presenceLeave(app, name, member.ID, sid)
				}
			})
		}
		return
	}
	switch {
	case errors.Is(err, presence.ErrFull):
		s.subscriptionError(c, name, "LimitReached", "The presence channel has reached its member limit", 403)
		return
	case errors.Is(err, presence.ErrUserConnections):
		s.limitHit(metrics.LimitUserConnections, c)
		s.subscriptionError(c, name, "LimitReached",
			fmt.Sprintf("This user has reached the limit of %d connections on the channel", c.app.MaxUserConnections), 403)
		return
	case err != nil:
		s.log.Error().Err(err).Str("channel", name).Msg("preparing subscription")
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
		return
	}
	frames := s.succeededFrame(name, res.Members)
	if kind.Cache {
		if cache != nil {
			frames = append(frames, cache...)
		} else {
			frames = protocol.AppendTextFrame(frames, protocol.AppendCacheMiss(nil, name))
		}
	}
	var mp *protocol.PresenceMember
	if inPres {
		mp = &member
	}
	s.joined(c, ch, frames, mp, res.Revision, inPres && res.First)
}

// joined puts c on ch, whose reference it holds, and tells it so: the
// frames (subscription_succeeded and what follows it) go out under the
// channel's lock, so no event of the channel can reach c before them.
func (s *Server) joined(c *conn, ch *channel, frames []byte, member *protocol.PresenceMember, presenceRev uint64, announce bool) {
	ch.join(c, frames, presenceRev)
	s.prom.MessagesOut.Inc()
	s.metrics.subscriptions.Add(1)
	if len(c.subs) == 0 {
		s.appStats(c.app).subscribed.Add(1)
	}
	c.addSub(chanSub{ch: ch, member: member})
	if announce {
		app, sid, m, rev := c.app, c.socketID(), *member, presenceRev
		s.lanes.must(c.sidA, c, func(context.Context) {
			s.publishPresence(app, ch.name, protocol.AppendTextFrame(nil, protocol.AppendMemberAdded(nil, ch.name, m)), sid, rev)
		})
	}
	s.subscriptionCountChanged(ch)
}

func (s *Server) succeededFrame(name string, members []protocol.PresenceMember) []byte {
	if protocol.ClassifyChannel(name).Auth == protocol.AuthPresence {
		return protocol.AppendTextFrame(nil, protocol.AppendPresenceSucceeded(nil, name, members))
	}
	return protocol.AppendTextFrame(nil, protocol.AppendSubscriptionSucceeded(nil, name))
}

func (s *Server) unsubscribe(c *conn, m protocol.ClientMessage) {
	name, err := protocol.ParseUnsubscribeData(m.Data)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	if i := c.findSub(name); i >= 0 {
		cs := c.removeSub(i)
		if len(c.subs) == 0 {
			s.appStats(c.app).subscribed.Add(-1)
		}
		s.leave(c, []chanSub{cs})
		return
	}
	if pr := c.preparingFor(name); pr != nil {
		pr.cancelled = true
	}
	// Unsubscribing from a channel one is not on is a no-op, as in Reverb.
}

// leave takes c off channels it had joined: off their member lists at once,
// so nothing more is written to it there, then, on its lane, releases the
// channels and leaves their presence.
func (s *Server) leave(c *conn, subs []chanSub) {
	if len(subs) == 0 {
		return
	}
	for _, cs := range subs {
		cs.ch.leave(c)
	}
	s.metrics.subscriptions.Add(-int64(len(subs)))
	var presence []chanSub
	for _, cs := range subs {
		// A joined channel's subscription is in place and never failed:
		// releasing it touches no network (see hub.release).
		s.hub.release(cs.ch)
		if cs.member != nil {
			presence = append(presence, cs)
		}
	}
	if len(presence) > 0 {
		// Presence leaves wait on NATS: on the connection's lane, after
		// its joins. Each follows an admitted join, so they are bounded.
		app, sid := c.app, c.socketID()
		s.lanes.must(c.sidA, c, func(context.Context) {
			for _, cs := range presence {
				s.presenceLeave(app, cs.ch.name, cs.member.ID, sid)
			}
		})
	}
	for _, cs := range subs {
		s.subscriptionCountChanged(cs.ch)
	}
}

// presenceLeave removes a connection from a presence channel and, when it
// was the user's last, tells the channel. It runs on an async lane, and
// retries until done: a leave that is dropped leaves a member listed for
// good.
func (s *Server) presenceLeave(app *config.App, channel, userID, socketID string) {
	var last bool
	var rev uint64
	s.retry("presence leave", func(ctx context.Context) (err error) {
		last, rev, err = s.presence.Leave(ctx, app.ID, channel, userID, socketID)
		return err
	})
	if last {
		s.publishPresence(app, channel, protocol.AppendTextFrame(nil, protocol.AppendMemberRemoved(nil, channel, userID)), "", rev)
	}
}
