package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/internal/route"
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
		c.Write(s.succeededFrame(name, nil))
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
	resuming := d.Position != "" && c.app.Recovers() && s.history != nil
	if kind.Auth != protocol.AuthPresence && !kind.Cache && !resuming {
		if ch := s.hub.acquireReady(c.app, name); ch != nil {
			// The common case, a channel others on this gateway are on:
			// nothing to wait for.
			s.joined(c, ch, s.succeededFrame(name, nil), nil, 0, false)
			return
		}
	}
	p := &prepared{name: name, kind: kind, member: member}
	if resuming {
		p.resume = &resumeState{}
		if pos, ms, ok := protocol.ParsePosition(d.Position); ok {
			p.resume.through = pos
			// Stored no later than its job; the margin is for the
			// clocks of a NATS cluster's nodes.
			p.resume.from = time.UnixMilli(ms).Add(-resumeClockMargin)
		} else {
			p.resume.failed = "expired" // nothing of it can be found
		}
	}
	ext := c.extension()
	if ext.preparing == nil {
		ext.preparing = make(map[string]*preparing)
	}
	ext.preparing[name] = &preparing{}
	if !s.lanes.try(c.sidA, c, func(ctx context.Context) { s.prepare(ctx, c, p) }) {
		delete(ext.preparing, name)
		c.releaseExt()
		s.limitHit(metrics.LimitPendingOps, c)
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
	}
}

// prepared is what a subscription's lane work found, for the poller to
// finish.
type prepared struct {
	name   string
	kind   protocol.ChannelKind
	member protocol.PresenceMember
	res    presence.JoinResult
	cache  []byte
	ch     *channel
	inPres bool // this connection is now in the channel's presence key
	err    error
	resume *resumeState // set when the client resumes from a position
}

// resumeState is a resume's replay of what the client missed.
type resumeState struct {
	from    time.Time // where in the history to start looking
	through uint64    // the last position the client has: given, then replayed
	frames  []byte    // the replayed frames
	count   int
	failed  string // why it cannot be replayed ("expired", "too_many"), or ""
	reads   int
}

// resumeClockMargin widens where a resume looks in the history: a
// position's time is its job's, stored on one NATS node, and the history
// stamps deliveries on another.
const resumeClockMargin = 10 * time.Second

// maxResumeReads bounds how often a resume reads further when the channel
// keeps delivering while it reads.
const maxResumeReads = 5

// prepare sets up a subscription's shared state on the connection's lane:
// presence membership, the cached event, the channel's NATS subscription,
// and a resume's replay. Then the poller finishes it.
func (s *Server) prepare(ctx context.Context, c *conn, p *prepared) {
	app, sid := c.app, c.socketID()
	faultOnSubscribeWork(p.name)
	if p.kind.Auth == protocol.AuthPresence {
		p.res, p.err = s.presence.JoinLimited(ctx, app.ID, p.name, p.member, sid, s.opts.GatewayID,
			presence.Limits{Members: app.MaxPresenceMembers, UserConnections: app.MaxUserConnections})
		p.inPres = p.err == nil
	}
	if p.err == nil && p.kind.Cache {
		p.cache, p.err = s.cachedFrame(ctx, app.ID, p.name)
	}
	if p.err == nil {
		p.ch, p.err = s.hub.acquire(ctx, app, p.name)
	}
	if p.err != nil && p.inPres {
		s.presenceLeave(app, p.name, p.member.ID, sid)
		p.inPres = false
	}
	if p.err == nil && p.resume != nil {
		s.readResume(ctx, p)
	}
	c.Post(func() { s.finishSubscribe(c, p) })
}

// readResume reads from the history what followed the client's position
// on the channel. Its subscription is in place, so what is stored after
// the read arrives live.
func (s *Server) readResume(ctx context.Context, p *prepared) {
	r := p.resume
	if r.failed != "" {
		return
	}
	r.reads++
	limit := s.opts.MaxOutbound / 2
	_, err := s.history.After(ctx, p.ch.subject, r.through, r.from, func(data []byte) error {
		env, err := route.ParseDelivery(data)
		if err != nil {
			return nil
		}
		if len(r.frames)+len(env.Frame) > limit {
			return errResumeTooMany
		}
		r.frames = append(r.frames, env.Frame...)
		r.count++
		r.through = env.ID()
		return nil
	})
	switch {
	case errors.Is(err, errResumeTooMany):
		r.failed = "too_many"
	case err != nil:
		// Expired, or the history could not be read: nothing proves what
		// the client missed.
		r.failed = "expired"
	}
}

// errResumeTooMany stops a replay that would not fit what a client may
// have waiting (RESOUND_MAX_OUTBOUND): the client refetches instead.
var errResumeTooMany = errors.New("resume: more missed than fits")

// finishSubscribe joins a prepared subscription, on the poller goroutine,
// or undoes it if it was cancelled or the connection went away meanwhile.
func (s *Server) finishSubscribe(c *conn, p *prepared) {
	name, member, res, ch := p.name, p.member, p.res, p.ch
	pr := c.preparingFor(name)
	if pr == nil || pr.cancelled || c.Destroyed() || !c.IsOpen() {
		if pr != nil {
			delete(c.ext.preparing, name)
			c.releaseExt()
		}
		if ch != nil || p.inPres {
			app, sid := c.app, c.socketID()
			s.lanes.must(c.sidA, c, func(context.Context) {
				if ch != nil {
					s.hub.release(ch)
				}
				if p.inPres {
					if res.First {
						// The join was the user's first on the channel:
						// the others are owed member_added, whether or not
						// this leave is the user's last. Another connection
						// of the user may have joined meanwhile, and it
						// announced nothing.
						s.publishPresence(app, name, protocol.AppendTextFrame(nil, protocol.AppendMemberAdded(nil, name, member)), sid, res.Revision)
						s.recordMember(app, protocol.WebhookMemberAdded, name, member.ID, res.Revision)
					}
					s.presenceLeave(app, name, member.ID, sid)
				}
			})
		}
		return
	}
	if p.err == nil && p.resume != nil && p.resume.failed == "" && !s.joinResumed(c, p) {
		// The channel delivered past what the replay read: read on, on
		// the lane, and come back.
		if p.resume.reads >= maxResumeReads {
			p.resume.failed = "too_many"
		} else {
			s.lanes.must(c.sidA, c, func(ctx context.Context) {
				s.readResume(ctx, p)
				c.Post(func() { s.finishSubscribe(c, p) })
			})
			return
		}
	}
	delete(c.ext.preparing, name)
	c.releaseExt()
	switch {
	case errors.Is(p.err, presence.ErrFull):
		s.subscriptionError(c, name, "LimitReached", "The presence channel has reached its member limit", 403)
		return
	case errors.Is(p.err, presence.ErrUserConnections):
		s.limitHit(metrics.LimitUserConnections, c)
		s.subscriptionError(c, name, "LimitReached",
			fmt.Sprintf("This user has reached the limit of %d connections on the channel", c.app.MaxUserConnections), 403)
		return
	case p.err != nil:
		s.log.Error().Err(p.err).Str("channel", name).Msg("preparing subscription")
		s.subscriptionError(c, name, "ServerError", "Subscription failed, try again", 503)
		return
	case p.resume != nil && p.resume.failed == "":
		return // joined by joinResumed
	}
	frames := s.succeededFrame(name, res.Members)
	if p.kind.Cache {
		if p.cache != nil {
			frames = append(frames, p.cache...)
		} else {
			frames = protocol.AppendTextFrame(frames, protocol.AppendCacheMiss(nil, name))
			s.recordCacheMiss(ch)
		}
	}
	if p.resume != nil {
		s.prom.Resumes.WithLabelValues("expired").Inc()
		frames = protocol.AppendTextFrame(frames, protocol.AppendResumeFailed(nil, name, p.resume.failed))
	}
	var mp *protocol.PresenceMember
	if p.inPres {
		mp = &member
	}
	s.joined(c, ch, frames, mp, res.Revision, p.inPres && res.First)
}

// joinResumed joins a resuming subscriber with what it missed, unless the
// channel has written deliveries on this gateway past what the replay
// read: then it reports false, and the replay must read on. Under the
// channel's write lock, no delivery is written meanwhile: the subscriber
// gets subscription_succeeded, the replay, pusher_internal:resumed, then
// live deliveries, of which it skips those the replay had.
func (s *Server) joinResumed(c *conn, p *prepared) bool {
	ch, r := p.ch, p.resume
	frames := s.succeededFrame(p.name, p.res.Members)
	frames = append(frames, r.frames...)
	frames = protocol.AppendTextFrame(frames, protocol.AppendResumed(nil, p.name, r.count))
	var mp *protocol.PresenceMember
	if p.inPres {
		mp = &p.member
	}
	ok := func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		if ch.lastPos.Load() > r.through {
			return false
		}
		ch.add(member{c: c, presence: mp, presenceRev: p.res.Revision, skipThrough: r.through})
		c.Write(frames)
		return true
	}()
	if !ok {
		return false
	}
	s.prom.Resumes.WithLabelValues("ok").Inc()
	s.afterJoin(c, ch, mp, p.res.Revision, p.inPres && p.res.First)
	return true
}

// joined puts c on ch, whose reference it holds, and tells it so: the
// frames (subscription_succeeded and what follows it) go out under the
// channel's lock, so no event of the channel can reach c before them.
func (s *Server) joined(c *conn, ch *channel, frames []byte, member *protocol.PresenceMember, presenceRev uint64, announce bool) {
	ch.join(c, frames, member, presenceRev)
	s.afterJoin(c, ch, member, presenceRev, announce)
}

// afterJoin records a subscriber that has joined ch.
func (s *Server) afterJoin(c *conn, ch *channel, member *protocol.PresenceMember, presenceRev uint64, announce bool) {
	s.prom.MessagesOut.Inc()
	s.metrics.subscriptions.Add(1)
	if len(c.subs) == 0 {
		s.appStats(c.app).subscribed.Add(1)
	}
	c.addSub(chanSub{ch: ch, member: member})
	s.noteJoined(c, ch, member)
	if announce {
		app, sid, m, rev := c.app, c.socketID(), *member, presenceRev
		s.lanes.must(c.sidA, c, func(context.Context) {
			s.publishPresence(app, ch.name, protocol.AppendTextFrame(nil, protocol.AppendMemberAdded(nil, ch.name, m)), sid, rev)
			s.recordMember(app, protocol.WebhookMemberAdded, ch.name, m.ID, rev)
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
	s.noteLeft(c, subs)
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
	var left presence.Left
	s.retry("presence leave", func(ctx context.Context) (err error) {
		left, err = s.presence.LeaveOrdered(ctx, app.ID, channel, userID, socketID)
		return err
	})
	if left.Last {
		s.publishPresence(app, channel, protocol.AppendTextFrame(nil, protocol.AppendMemberRemoved(nil, channel, userID)), "", left.Revision)
		s.recordMember(app, protocol.WebhookMemberRemoved, channel, userID, left.Order)
	}
}
