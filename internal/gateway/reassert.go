package gateway

import (
	"context"
	"time"

	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/protocol"
)

// Reassert writes again, into the shared state, what this gateway's
// connections hold: presence memberships, signed-in users, connection
// slots and subscription counts. The registry calls it when this
// gateway's heartbeat lapsed (it was cut off from NATS, or stalled, for a
// TTL): the other gateways then took it for dead and swept all of it,
// though its connections are alive. Each write is the same one the
// connection made when it joined or signed in, so what the sweep left is
// untouched, and what it removed comes back, announced once by the write
// that makes the transition (member_added, watchlist online).
//
// A sweep that listed the live gateways before this one's heartbeat came
// back may still land after this; so it runs twice, the second time a
// TTL later.
func (s *Server) Reassert(ctx context.Context) {
	s.reassert()
	time.AfterFunc(s.opts.GatewayTTL, func() {
		if s.baseCtx.Err() == nil {
			s.reassert()
		}
	})
}

// held is what one connection holds in the shared state.
type held struct {
	c       *conn
	userID  string
	members []chanSub // presence subscriptions
}

func (s *Server) reassert() {
	for _, p := range s.rx.Pollers() {
		// Connections' subscriptions and sign-ins are the poller's: read
		// them there, write them on each connection's lane, so that they
		// fall in order with the connection's own joins and leaves.
		p.Post(func() {
			for _, rc := range p.Matching(func(*reactor.Conn) bool { return true }) {
				c := sessionOf(rc)
				h := held{c: c, userID: c.signedInAs()}
				for _, cs := range c.subs {
					if cs.member != nil {
						h.members = append(h.members, cs)
					}
				}
				if h.userID == "" && len(h.members) == 0 {
					continue
				}
				s.lanes.must(c.sidA, c, func(context.Context) { s.reassertConn(h) })
			}
		})
	}
	for _, b := range s.slots {
		b.reassert()
	}
	for i := range s.hub.shards {
		sh := &s.hub.shards[i]
		sh.mu.Lock()
		var chans []*channel
		for _, ch := range sh.channels {
			if ch.refs > 0 {
				chans = append(chans, ch)
			}
		}
		sh.mu.Unlock()
		for _, ch := range chans {
			s.subscriptionCountChanged(ch)
		}
	}
}

// reassertConn writes one connection's memberships and sign-in again,
// each retried until it is made (or the gateway stops). A reassertion
// follows a lapse, when NATS was out of reach or overloaded, so its
// writes are the likeliest of all to time out; given up, the member
// stayed missing from the channel for good while its connection lived
// (the million-socket run's drain: 2,690 reassertions timed out, and
// 1,994 of 5,040 presence channels were left short). The retry holds the
// connection's lane, so its own later leave still comes after.
func (s *Server) reassertConn(h held) {
	app, sid := h.c.app, h.c.socketID()
	for _, cs := range h.members {
		m, name := *cs.member, cs.ch.name
		var res presence.JoinResult
		// No limits: the member was let in; a lapse must not throw it out.
		if !s.retry("presence reassertion", func(ctx context.Context) (err error) {
			res, err = s.presence.JoinLimited(ctx, app.ID, name, m, sid, s.opts.GatewayID, presence.Limits{})
			return err
		}) {
			return
		}
		if res.First {
			s.publishPresence(app, name, protocol.AppendTextFrame(nil, protocol.AppendMemberAdded(nil, name, m)), sid, res.Revision)
			s.recordMember(app, protocol.WebhookMemberAdded, name, m.ID, res.Revision)
		}
	}
	if h.userID != "" {
		var first bool
		if !s.retry("sign-in reassertion", func(ctx context.Context) (err error) {
			first, err = s.users.SignIn(ctx, app.ID, h.userID, sid, s.opts.GatewayID, 0)
			return err
		}) {
			return
		}
		if first {
			s.publishUserState(app, h.userID, true)
		}
	}
}
