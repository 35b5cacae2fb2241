package gateway

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

// appStat counts what queries ask about one app on this gateway.
type appStat struct {
	// subscribed counts connections on at least one channel: Reverb's
	// /connections.
	subscribed atomic.Int64
	conns      prometheus.Gauge
	// The dashboard's figures (console.go).
	appCounters
}

func (s *Server) appStats(app *config.App) *appStat { return s.stats[app.ID] }

// publishToChannel sends a frame the gateway made itself (presence
// changes, client events, counts) to every subscriber of a channel on
// every gateway, through the channel's delivery subject.
func (s *Server) publishToChannel(app *config.App, channel string, frame []byte, excludeSocketID string) {
	s.publishDelivery(app, channel, route.Delivery{ExcludeSocketID: excludeSocketID, Frame: frame})
}

// publishPresence sends a member_added or member_removed, tagged with the
// presence revision of the change (0 when unknown: always delivered).
func (s *Server) publishPresence(app *config.App, channel string, frame []byte, excludeSocketID string, rev uint64) {
	s.publishDelivery(app, channel, route.Delivery{Seq: rev, Event: route.EventPresence, ExcludeSocketID: excludeSocketID, Frame: frame})
}

func (s *Server) publishDelivery(app *config.App, channel string, d route.Delivery) {
	env := route.AppendDelivery(make([]byte, 0, len(d.Frame)+32), d)
	subject := route.Subject(app.ID, channel)
	if s.opts.Local {
		// The only gateway there is: no NATS hop, and frames a gateway
		// makes are never replayed, so the history need not have them.
		_ = s.DeliverLocal(subject, env)
		return
	}
	if err := s.opts.Conn.Publish(subject, env); err != nil {
		s.log.Warn().Err(err).Str("channel", channel).Msg("publishing to channel")
	}
}

// cachedFrame returns the frame of the channel's cached event, or nil.
func (s *Server) cachedFrame(ctx context.Context, appID, channel string) ([]byte, error) {
	ev, err := s.cache.Get(ctx, appID, channel)
	if ev == nil || err != nil {
		return nil, err
	}
	return protocol.AppendTextFrame(nil, protocol.AppendChannelEvent(nil, ev.Event, channel, ev.Data, "")), nil
}

// subscriptionCountChanged writes this gateway's count of a channel's
// subscribers into the shared counts, where each gateway keeps its own
// under the channel's key, when something needs the cluster's total:
//   - pusher_internal:subscription_count, the total, for apps that turned
//     it on (never on presence channels, as Pusher);
//   - the webhooks: channel_occupied when this write takes the total from
//     0, channel_vacated when it takes it to 0 (the compare-and-set makes
//     exactly one gateway's write do each), subscription_count when the
//     total changed, paced as the event is.
//
// Apps that need none of these write nothing.
func (s *Server) subscriptionCountChanged(ch *channel) {
	if !ch.app.SubscriptionCount && (s.opts.Webhooks == nil || len(ch.app.Webhooks) == 0) {
		return // the common case, answered before anything is looked at
	}
	presence := protocol.ClassifyChannel(ch.name).Auth == protocol.AuthPresence
	event := ch.app.SubscriptionCount && !presence
	occupancy, countHook := s.countHooks(ch.app, ch.name, presence)
	if !event && !occupancy && !countHook {
		return
	}
	// At most one count update per channel waits at a time: it reads the
	// count when it runs, so a burst of joins and leaves (a client
	// subscribing and unsubscribing in a loop, a reconnect storm) costs
	// one write, not one each, and cannot fill a lane. A burst that ends
	// where it began writes nothing at all, and no webhook says anything
	// happened: from the cluster's view nothing did.
	if !ch.countQueued.CompareAndSwap(false, true) {
		return
	}
	// A count is the channel's, not a connection's: its lane is the
	// channel's, so that its counts are set in order.
	s.lanes.must(maphash.String(s.hub.seed, ch.subject), nil, func(ctx context.Context) {
		ch.countQueued.Store(false)
		ch.mu.RLock()
		local := len(ch.members)
		ch.mu.RUnlock()
		chg, err := s.counts.ChangeSubscriptions(ctx, ch.app.ID, ch.name, s.opts.GatewayID, local)
		if err != nil {
			s.log.Warn().Err(err).Str("channel", ch.name).Msg("counting subscriptions")
			return
		}
		switch {
		case chg.Occupied():
			s.recordHook(ch.app, protocol.WebhookEvent{Name: protocol.WebhookChannelOccupied, Channel: ch.name}, chg.Rev)
		case chg.Vacated():
			s.recordHook(ch.app, protocol.WebhookEvent{Name: protocol.WebhookChannelVacated, Channel: ch.name}, chg.Rev)
		}
		if !event && !countHook {
			return
		}
		total, changed := chg.After, chg.Before != chg.After
		// Pusher sends the count on every change, but at most every 5 s
		// once a channel has more than 100 subscribers.
		now := time.Now().UnixNano()
		if total > 100 && now-ch.countSentAt.Load() < int64(countInterval) {
			if changed && countHook {
				ch.countHookOwed.Store(true) // for the deferred run, which may write nothing
			}
			if ch.countPending.CompareAndSwap(false, true) {
				time.AfterFunc(countInterval, func() {
					ch.countPending.Store(false)
					s.subscriptionCountChanged(ch)
				})
			}
			return
		}
		ch.countSentAt.Store(now)
		if event {
			s.publishToChannel(ch.app, ch.name, protocol.AppendTextFrame(nil, protocol.AppendSubscriptionCount(nil, ch.name, total)), "")
		}
		if owed := ch.countHookOwed.Swap(false); countHook && (changed || owed) {
			s.recordHook(ch.app, protocol.WebhookEvent{Name: protocol.WebhookSubscriptionCount, Channel: ch.name, SubscriptionCount: &total}, chg.Rev)
		}
	})
}

// countInterval is Pusher's pace for subscription_count on busy channels.
const countInterval = 5 * time.Second

// acquireConnectionSlot counts a new connection against the app's
// max_connections, across the cluster. It runs on the handshake goroutine,
// before the connection is established.
func (s *Server) acquireConnectionSlot(ctx context.Context, app *config.App) error {
	return s.slots[app.ID].acquire(ctx)
}

// releaseConnectionSlot gives a closed connection's slot back; the
// batcher retries until it is written.
func (s *Server) releaseConnectionSlot(app *config.App) {
	s.slots[app.ID].giveBack()
}

// Sweep removes what gateways that are no longer live left in the shared
// state, and announces the presence members and users that left with
// them. The registry calls it when a gateway disappears, and at start-up.
// The stores' sweeps run under one driver with one rule for errors
// (cluster.Sweeper: retried with backoff within a third of the gateway
// TTL, counted in resound_state_retries_total, logged once per 10 s).
func (s *Server) Sweep(ctx context.Context, live map[string]bool) {
	s.sweeper.Sweep(ctx, live)
}

// newSweeper builds the sweep driver over the stores that hold per-gateway
// state, each step announcing what its removals change.
func (s *Server) newSweeper() *cluster.Sweeper {
	return cluster.NewSweeper(cluster.SweeperOptions{
		Steps: []cluster.SweepStep{
			{Name: "presence", Sweep: func(ctx context.Context, live cluster.Liveness) error {
				removed, err := s.presence.RemoveGatewaysExcept(ctx, live)
				for _, r := range removed {
					if app, ok := s.opts.Apps.ByID(r.App); ok {
						s.publishPresence(app, r.Channel, protocol.AppendTextFrame(nil, protocol.AppendMemberRemoved(nil, r.Channel, r.UserID)), "", 0)
						s.recordMember(app, protocol.WebhookMemberRemoved, r.Channel, r.UserID, r.Order)
					}
				}
				return err
			}},
			{Name: "users", Sweep: func(ctx context.Context, live cluster.Liveness) error {
				offline, err := s.users.RemoveGatewaysExcept(ctx, live)
				for _, u := range offline {
					if app, ok := s.opts.Apps.ByID(u.App); ok {
						s.publishUserState(app, u.UserID, false)
					}
				}
				return err
			}},
			{Name: "counts", Sweep: func(ctx context.Context, live cluster.Liveness) error {
				// Only the sweep whose write empties a channel's key sees
				// it emptied: channel_vacated is recorded once.
				vacated, err := s.counts.RemoveGatewaysExcept(ctx, live)
				for _, v := range vacated {
					if app, ok := s.opts.Apps.ByID(v.App); ok {
						s.recordHook(app, protocol.WebhookEvent{Name: protocol.WebhookChannelVacated, Channel: v.Channel}, v.Rev)
					}
				}
				return err
			}},
		},
		Live: func(ctx context.Context) (map[string]bool, error) {
			live, err := s.opts.Stores.LiveGateways(ctx)
			if err == nil {
				live[s.opts.GatewayID] = true
			}
			return live, err
		},
		Recheck: s.opts.Stores.GatewayLive,
		// Retries stop after a third of the TTL, so that a NATS that is
		// away does not hold the registry's sweeps (one at a time, beside
		// the heartbeat) behind this one: what is left waits for the next
		// sweep, and the live gateway with the lowest id sweeps once per
		// TTL.
		Budget:  s.opts.GatewayTTL / 3,
		Retried: s.prom.StateRetries.Inc,
		Log:     s.log,
	})
}

// terminate closes every connection of a user of an app on this
// gateway: connections signed in as the user (Pusher) and connections
// whose presence identity is the user (Reverb). The control plane calls it
// for wire.Terminate.
func (s *Server) terminate(req wire.TerminateRequest) {
	for _, p := range s.rx.Pollers() {
		p.Post(func() {
			hit := p.Matching(func(rc *reactor.Conn) bool {
				c := sessionOf(rc)
				if c.app.ID != req.App {
					return false
				}
				match := c.signedInAs() == req.UserID
				for _, cs := range c.subs {
					match = match || cs.userID() == req.UserID
				}
				return match
			})
			for _, rc := range hit {
				sessionOf(rc).closeWith(protocol.CodeUnauthorized, "Connection terminated by server")
			}
		})
	}
}

// answerQuery is this gateway's view of an app's channels, for the HTTP
// API's cluster-wide queries; false when it does not serve the app.
func (s *Server) answerQuery(q wire.QueryRequest) (wire.QueryReply, bool) {
	app, ok := s.opts.Apps.ByID(q.App)
	if !ok {
		return wire.QueryReply{}, false
	}
	r := wire.QueryReply{Gateway: s.opts.GatewayID, Channels: map[string]int{}}
	if st := s.appStats(app); st != nil {
		r.Connections = int(st.subscribed.Load())
	}
	s.hub.forApp(app.ID, func(ch *channel) {
		if q.ConnectionsOnly {
			return
		}
		if q.Channel != "" && ch.name != q.Channel {
			return
		}
		if q.Prefix != "" && !hasPrefix(ch.name, q.Prefix) {
			return
		}
		ch.mu.RLock()
		n := len(ch.members)
		ch.mu.RUnlock()
		if n > 0 {
			r.Channels[ch.name] = n
		}
	})
	return r, true
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// watchers index the connections watching each user's online state;
// the control plane holds the subscriptions.
type watchers struct {
	mu    sync.Mutex
	byKey map[string]map[*conn]struct{} // by user-state subject
}
