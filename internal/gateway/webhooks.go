package gateway

import (
	"sync"
	"time"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/webhook"
	"github.com/resoundhq/resound/protocol"
)

// WebhookRecorder takes the webhook records the gateway makes
// (webhook.Recorder appends them to the webhook stream). Record must
// never block: the gateway calls it on its pollers and async lanes.
type WebhookRecorder interface {
	Record(appID string, rec webhook.Record) bool
}

// Where the gateway records webhooks, each once for the whole cluster:
//
//   - channel_occupied, channel_vacated, subscription_count: after the
//     write of this gateway's subscription count that changed the
//     channel's total (subscriptionCountChanged), and in the sweep of the
//     counts of gateways that are gone; the compare-and-set makes exactly
//     one writer see each transition.
//   - member_added, member_removed: where pusher_internal:member_added
//     and member_removed are published, after the presence store's
//     transition (subscribe.go, reassert.go, the sweep).
//   - client_event: once a client event is accepted and relayed
//     (clientevents.go).
//   - cache_miss: where pusher:cache_miss is sent (subscribe.go),
//     de-duplicated (cacheMisses).
//
// Records carry the shared-state key's revision of their transition
// (webhook.Record.Rev), so that the sender can put one channel's records,
// made by several gateways, back in the order the key saw them.

// wantsHook reports whether the gateway records webhook events of this
// name on this channel of app. Apps without webhooks answer at once.
func (s *Server) wantsHook(app *config.App, name, channel string) bool {
	return s.opts.Webhooks != nil && app.WantsWebhook(name, channel)
}

// recordHook records ev, an event of app, with the revision of its
// transition (0 when none), if one of the app's webhooks wants it.
func (s *Server) recordHook(app *config.App, ev protocol.WebhookEvent, rev uint64) {
	if !s.wantsHook(app, ev.Name, ev.Channel) {
		return
	}
	s.opts.Webhooks.Record(app.ID, webhook.Record{TimeMS: time.Now().UnixMilli(), Rev: rev, Event: ev})
}

// recordMember records member_added or member_removed.
func (s *Server) recordMember(app *config.App, name, channel, userID string, rev uint64) {
	s.recordHook(app, protocol.WebhookEvent{Name: name, Channel: channel, UserID: userID}, rev)
}

// countHooks reports whether app's webhooks need the channel's
// subscription count kept in the shared state: for channel_occupied and
// channel_vacated on any channel, and for subscription_count on the
// channels that have the count (not presence channels, as Pusher: there
// member_added and member_removed say who is there).
func (s *Server) countHooks(app *config.App, channel string, presence bool) (occupancy, count bool) {
	if s.opts.Webhooks == nil || len(app.Webhooks) == 0 {
		return false, false
	}
	occupancy = app.WantsWebhook(protocol.WebhookChannelOccupied, channel) || app.WantsWebhook(protocol.WebhookChannelVacated, channel)
	count = !presence && app.WantsWebhook(protocol.WebhookSubscriptionCount, channel)
	return occupancy, count
}

// cacheMissWindow is how long a channel's cache_miss webhook stands for
// the misses after it. Pusher says only that the webhook is
// "de-duplicated"; one per channel per gateway every few seconds tells
// the app that a channel needs its cache filled, without a webhook per
// subscriber when many subscribe at once (a page many users load).
const cacheMissWindow = 5 * time.Second

// cacheMisses remembers the channels whose cache_miss this gateway
// recorded lately. Two generations, swapped every cacheMissWindow, bound
// it by the channels missed in two windows, with no sweep: a miss is
// recorded unless the channel is in either, so a channel's misses are
// recorded at most once per window (and at least once per two).
type cacheMisses struct {
	mu        sync.Mutex
	cur, prev map[string]struct{}
	since     time.Time // when cur began
}

// first reports whether key's miss is the first of the window, and
// remembers it.
func (m *cacheMisses) first(key string, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if age := now.Sub(m.since); m.cur == nil || age >= cacheMissWindow {
		m.prev = m.cur
		if age >= 2*cacheMissWindow {
			m.prev = nil // nothing of cur is recent any more
		}
		m.cur, m.since = map[string]struct{}{}, now
	}
	if _, ok := m.cur[key]; ok {
		return false
	}
	if _, ok := m.prev[key]; ok {
		return false
	}
	m.cur[key] = struct{}{}
	return true
}

// recordCacheMiss records cache_miss for a channel, once per
// cacheMissWindow on this gateway. It runs on the poller: it only looks
// in memory and queues.
func (s *Server) recordCacheMiss(ch *channel) {
	if !s.wantsHook(ch.app, protocol.WebhookCacheMiss, ch.name) || !s.cacheMisses.first(ch.subject, time.Now()) {
		return
	}
	s.recordHook(ch.app, protocol.WebhookEvent{Name: protocol.WebhookCacheMiss, Channel: ch.name}, 0)
}
