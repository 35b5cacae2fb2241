package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/counts"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/internal/streams"
	"github.com/resoundhq/resound/internal/webhook"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// hookApp wants every webhook, at a receiver nothing answers: these tests
// look at the records the gateways store, not at their delivery.
var hookApp = config.App{ID: "777", Key: "key-hooks", Secret: "secret-hooks", Webhooks: []config.Webhook{{
	URL: "http://127.0.0.1:9/hooks", EventTypes: protocol.WebhookNames[:],
}}}

// hookTap collects the webhook records published on a NATS server, each
// once by its Nats-Msg-Id, as the stream stores them. It listens on the
// records' subjects rather than reading the stream: the stream is a work
// queue whose lanes belong to the workers' senders, which may take
// records from it while a test reads.
type hookTap struct {
	mu   sync.Mutex
	seen map[string]bool
	recs []webhook.Record
}

func tapHooks(t *testing.T, tc *testCluster) *hookTap {
	t.Helper()
	nc, err := nats.Connect(tc.a.Config().NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return tapHooksOn(t, nc)
}

func tapHooksOn(t *testing.T, nc *nats.Conn) *hookTap {
	t.Helper()
	h := &hookTap{seen: map[string]bool{}}
	_, err := nc.Subscribe(wire.HooksPrefix+">", func(m *nats.Msg) {
		var rec webhook.Record
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			t.Errorf("record %s: %v", m.Data, err)
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if id := m.Header.Get(jetstream.MsgIDHeader); !h.seen[id] {
			h.seen[id] = true
			h.recs = append(h.recs, rec)
		}
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// named returns the records of an event name on a channel ("" for all
// channels), in the order of their revisions (the order the sender puts
// them back in).
func (h *hookTap) named(name, channel string) []webhook.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []webhook.Record
	for _, r := range h.recs {
		if r.Event.Name == name && (channel == "" || r.Event.Channel == channel) {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Rev < out[j].Rev })
	return out
}

func (h *hookTap) all() []webhook.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]webhook.Record(nil), h.recs...)
}

// await waits until there are at least n records of name on channel.
func (h *hookTap) await(t *testing.T, n int, name, channel string) []webhook.Record {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d %s on %s (have %v)", n, name, channel, h.all()), func() bool { return len(h.named(name, channel)) >= n })
	return h.named(name, channel)
}

// settle waits until every record the nodes made is stored and heard:
// nothing waits in their recorders, and the tap has each of them.
func (h *hookTap) settle(t *testing.T, nodes ...*Node) {
	t.Helper()
	waitFor(t, "the webhook records stored", func() bool {
		var stored uint64
		for _, n := range nodes {
			if n.WebhookRecorder().Queued() > 0 {
				return false
			}
			stored += n.WebhookRecorder().Stored()
		}
		return uint64(len(h.all())) == stored
	})
}

// waitFor waits until cond holds, failing after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sharedState opens the cluster's shared-state buckets.
func sharedState(t *testing.T, n *Node) *cluster.Stores {
	t.Helper()
	js := natstest.Dial(t, n.Config().NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stores, err := cluster.Ensure(ctx, js, streams.Cluster(&n.Config().Settings))
	if err != nil {
		t.Fatal(err)
	}
	return stores
}

// subscribers is a channel's count in the shared state, by gateway (nil:
// no key).
func subscribers(t *testing.T, stores *cluster.Stores, app, channel string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := stores.Counts.Get(ctx, cluster.Key("subs", app, channel))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func expectOne(t *testing.T, recs []webhook.Record, what string) webhook.Record {
	t.Helper()
	if len(recs) != 1 {
		t.Fatalf("%s: %d records, want 1: %+v", what, len(recs), recs)
	}
	if recs[0].TimeMS == 0 {
		t.Fatalf("%s: no time: %+v", what, recs[0])
	}
	return recs[0]
}

// TestWebhookOccupiedAndVacatedOnceAcrossGateways: subscribers on both
// gateways make one channel_occupied, and once all have left, one
// channel_vacated, ordered after it; subscription_count follows the
// cluster's total.
func TestWebhookOccupiedAndVacatedOnceAcrossGateways(t *testing.T) {
	tc := startCluster(t, hookApp)
	tap, stores := tapHooks(t, tc), sharedState(t, tc.a)
	a1 := pushertest.Connect(t, tc.a.Addr().String(), hookApp.Key)
	a2 := pushertest.Connect(t, tc.a.Addr().String(), hookApp.Key)
	b1 := pushertest.Connect(t, tc.b.Addr().String(), hookApp.Key)
	for _, c := range []*pushertest.Client{a1, b1, a2} {
		c.Subscribe("room")
	}
	// Every gateway has written its count: any second occupied would be
	// made by now.
	waitFor(t, "3 subscribers counted", func() bool { return total(subscribers(t, stores, hookApp.ID, "room")) == 3 })
	tap.settle(t, tc.a, tc.b)
	occupied := expectOne(t, tap.named(protocol.WebhookChannelOccupied, "room"), "channel_occupied")
	if occupied.Rev == 0 || occupied.Event != (protocol.WebhookEvent{Name: protocol.WebhookChannelOccupied, Channel: "room"}) {
		t.Fatalf("occupied %+v", occupied)
	}
	counted := tap.named(protocol.WebhookSubscriptionCount, "room")
	if last := counted[len(counted)-1]; last.Event.SubscriptionCount == nil || *last.Event.SubscriptionCount != 3 {
		t.Fatalf("subscription_count records %+v: the last is not 3", counted)
	}

	for _, c := range []*pushertest.Client{a1, b1, a2} {
		c.Close()
	}
	waitFor(t, "the channel's count gone", func() bool { return subscribers(t, stores, hookApp.ID, "room") == nil })
	tap.settle(t, tc.a, tc.b)
	vacated := expectOne(t, tap.named(protocol.WebhookChannelVacated, "room"), "channel_vacated")
	if vacated.Rev <= occupied.Rev {
		t.Fatalf("vacated at rev %d, occupied at %d", vacated.Rev, occupied.Rev)
	}
	counted = tap.named(protocol.WebhookSubscriptionCount, "room")
	if last := counted[len(counted)-1]; *last.Event.SubscriptionCount != 0 || last.Rev != vacated.Rev {
		t.Fatalf("subscription_count records %+v: the last is not 0, with the vacating write", counted)
	}
	expectOne(t, tap.named(protocol.WebhookChannelOccupied, "room"), "channel_occupied")

	// Back again: occupied anew, after the vacated.
	a3 := pushertest.Connect(t, tc.b.Addr().String(), hookApp.Key)
	a3.Subscribe("room")
	again := tap.await(t, 2, protocol.WebhookChannelOccupied, "room")
	if again[1].Rev <= vacated.Rev {
		t.Fatalf("occupied again at rev %d, vacated at %d", again[1].Rev, vacated.Rev)
	}
}

// TestWebhookMembersOncePerUserAcrossGateways: one user's connections on
// both gateways make one member_added, and one member_removed once both
// have left; the channel's occupancy is recorded too, but no
// subscription_count (presence channels have none, as Pusher).
func TestWebhookMembersOncePerUserAcrossGateways(t *testing.T) {
	tc := startCluster(t, hookApp)
	tap, stores := tapHooks(t, tc), sharedState(t, tc.a)
	a := pushertest.Connect(t, tc.a.Addr().String(), hookApp.Key)
	b := pushertest.Connect(t, tc.b.Addr().String(), hookApp.Key)
	joinPresence(t, a, hookApp, "presence-room", "u1")
	joinPresence(t, b, hookApp, "presence-room", "u1")
	// Both joins are done (joinPresence waited for each), and both counts
	// written: any second member_added or occupied would be made by now.
	waitFor(t, "2 subscribers counted", func() bool { return total(subscribers(t, stores, hookApp.ID, "presence-room")) == 2 })
	tap.settle(t, tc.a, tc.b)
	added := expectOne(t, tap.named(protocol.WebhookMemberAdded, "presence-room"), "member_added")
	if added.Rev == 0 || added.Event != (protocol.WebhookEvent{Name: protocol.WebhookMemberAdded, Channel: "presence-room", UserID: "u1"}) {
		t.Fatalf("member_added %+v", added)
	}
	expectOne(t, tap.named(protocol.WebhookChannelOccupied, "presence-room"), "channel_occupied")

	a.Close()
	b.Close()
	// Both leaves are done (they run on the connections' lanes, the counts
	// on the channel's): any second member_removed would be made by now.
	members := presence.New(stores.Presence)
	waitFor(t, "the channel's count and members gone", func() bool {
		m, err := members.Members(context.Background(), hookApp.ID, "presence-room")
		return err == nil && m == nil && subscribers(t, stores, hookApp.ID, "presence-room") == nil
	})
	tap.settle(t, tc.a, tc.b)
	r := expectOne(t, tap.named(protocol.WebhookMemberRemoved, "presence-room"), "member_removed")
	if r.Rev <= added.Rev || r.Event.UserID != "u1" {
		t.Fatalf("member_removed %+v after member_added at %d", r, added.Rev)
	}
	expectOne(t, tap.named(protocol.WebhookChannelVacated, "presence-room"), "channel_vacated")
	if n := tap.named(protocol.WebhookSubscriptionCount, "presence-room"); len(n) != 0 {
		t.Fatalf("subscription_count on a presence channel: %+v", n)
	}
}

// TestWebhookClientEventsAndCacheMisses: an accepted client event makes
// one client_event with Pusher's fields (user_id on presence channels
// only); a refused one makes none; misses on a cache channel make one
// cache_miss per gateway.
func TestWebhookClientEventsAndCacheMisses(t *testing.T) {
	tc := startCluster(t, hookApp)
	tap := tapHooks(t, tc)
	a := pushertest.Connect(t, tc.a.Addr().String(), hookApp.Key)
	b := pushertest.Connect(t, tc.b.Addr().String(), hookApp.Key)
	for _, c := range []*pushertest.Client{a, b} {
		if m := subscribeAuth(t, c, hookApp.Key, hookApp.Secret, "private-chat", ""); m.Event != protocol.EventSubscriptionSucceeded {
			t.Fatalf("subscribe: %s", m.Raw)
		}
	}
	a.Send([]byte(`{"event":"client-typing","channel":"private-chat","data":{"who":"a"}}`))
	b.Expect("client-typing")
	b.Send([]byte(`{"event":"client-said","channel":"private-chat","data":"hello"}`))
	a.Expect("client-said")
	// Refused (not on the channel): no webhook.
	a.Send([]byte(`{"event":"client-x","channel":"private-elsewhere","data":{}}`))
	a.ExpectError(protocol.CodeUnauthorized)
	joinPresence(t, a, hookApp, "presence-chat", "7")
	joinPresence(t, b, hookApp, "presence-chat", "8")
	a.Expect(protocol.EventMemberAdded)
	a.Send([]byte(`{"event":"client-hi","channel":"presence-chat","data":{"n":1}}`))
	b.Expect("client-hi")

	tap.await(t, 3, protocol.WebhookClientEvent, "")
	tap.settle(t, tc.a, tc.b)
	events := tap.named(protocol.WebhookClientEvent, "")
	want := map[string]protocol.WebhookEvent{
		"client-typing": {Name: protocol.WebhookClientEvent, Channel: "private-chat", Event: "client-typing", Data: `{"who":"a"}`, SocketID: a.SocketID},
		"client-said":   {Name: protocol.WebhookClientEvent, Channel: "private-chat", Event: "client-said", Data: "hello", SocketID: b.SocketID},
		"client-hi":     {Name: protocol.WebhookClientEvent, Channel: "presence-chat", Event: "client-hi", Data: `{"n":1}`, SocketID: a.SocketID, UserID: "7"},
	}
	if len(events) != len(want) {
		t.Fatalf("client_event records %+v", events)
	}
	for _, e := range events {
		if e.Event != want[e.Event.Event] || e.Rev != 0 {
			t.Fatalf("client_event %+v, want %+v", e, want[e.Event.Event])
		}
	}

	// Three misses on gateway A, one on B: one cache_miss from each.
	for i, addr := range []string{tc.a.Addr().String(), tc.a.Addr().String(), tc.a.Addr().String(), tc.b.Addr().String()} {
		c := pushertest.Connect(t, addr, hookApp.Key)
		c.Subscribe("cache-news")
		if m := c.Expect(protocol.EventCacheMiss); m.Channel != "cache-news" {
			t.Fatalf("subscriber %d: %s", i, m.Raw)
		}
	}
	tap.await(t, 2, protocol.WebhookCacheMiss, "cache-news")
	tap.settle(t, tc.a, tc.b)
	misses := tap.named(protocol.WebhookCacheMiss, "cache-news")
	if len(misses) != 2 || misses[0].Event != (protocol.WebhookEvent{Name: protocol.WebhookCacheMiss, Channel: "cache-news"}) {
		t.Fatalf("cache_miss records %+v, want one per gateway", misses)
	}
}

// TestWebhookFilterAndAppsWithoutWebhooks: a webhook's channel filter
// decides what is recorded, and whether a channel's count is kept at all;
// an app without webhooks records nothing and writes no count.
func TestWebhookFilterAndAppsWithoutWebhooks(t *testing.T) {
	filtered := config.App{ID: "888", Key: "key-filtered", Secret: "secret-filtered", Webhooks: []config.Webhook{{
		URL: "http://127.0.0.1:9/hooks", EventTypes: []string{protocol.WebhookChannelOccupied, protocol.WebhookChannelVacated},
		Filter: config.WebhookFilter{ChannelNameStartsWith: "watched-"},
	}}}
	tc := startCluster(t, filtered, app1)
	tap, stores := tapHooks(t, tc), sharedState(t, tc.a)
	plain := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	plain.Subscribe("watched-1")
	f := pushertest.Connect(t, tc.b.Addr().String(), filtered.Key)
	f.Subscribe("other-1")
	f.Subscribe("watched-1")
	tap.await(t, 1, protocol.WebhookChannelOccupied, "watched-1")
	tap.settle(t, tc.a, tc.b)
	recs := tap.all()
	if len(recs) != 1 {
		t.Fatalf("records %+v, want watched-1's occupied alone", recs)
	}
	// Counts are kept only where a webhook needs them.
	if m := subscribers(t, stores, filtered.ID, "other-1"); m != nil {
		t.Fatalf("other-1 counted: %v", m)
	}
	if m := subscribers(t, stores, app1.ID, "watched-1"); m != nil {
		t.Fatalf("an app without webhooks counted: %v", m)
	}
	f.Close()
	tap.await(t, 1, protocol.WebhookChannelVacated, "watched-1")
	plain.Close()
	tap.settle(t, tc.a, tc.b)
	for _, r := range tap.all() {
		if r.Event.Channel != "watched-1" || !strings.HasPrefix(r.Event.Name, "channel_") {
			t.Fatalf("record %+v", r)
		}
	}
	if n := len(tap.all()); n != 2 {
		t.Fatalf("%d records, want occupied and vacated", n)
	}
}

// TestWebhookSweepRecordsADeadGatewaysVacatedAndRemoved: a gateway that
// dies without cleaning up leaves a channel counted and a member listed;
// the survivors' sweeps, run at once on both, record channel_vacated and
// member_removed once each.
func TestWebhookSweepRecordsADeadGatewaysVacatedAndRemoved(t *testing.T) {
	sc := startSweepCluster(t, 15*time.Second, hookApp, "dead-gw")
	live := sc.realGateways(t)
	tap := tapHooks(t, sc.testCluster)
	// What dead-gw held: the only subscriber of "lonely", and user 2 on a
	// presence channel a live gateway's user shares.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	chg, err := counts.New(sc.stores.Counts).ChangeSubscriptions(ctx, hookApp.ID, "lonely", "dead-gw", 1)
	if err != nil || !chg.Occupied() {
		t.Fatalf("dead-gw's count: %+v, %v", chg, err)
	}
	a1 := pushertest.Connect(t, sc.a.Addr().String(), hookApp.Key)
	joinPresence(t, a1, hookApp, "presence-room", "1")
	addMember(t, sc.stores, hookApp.ID, "presence-room", "2", "9.9", "dead-gw")
	sc.die(t, "dead-gw", true) // its key gone, as a sweep checks again

	var wg sync.WaitGroup
	for _, n := range []*Node{sc.a, sc.b} {
		wg.Add(1)
		go func() { defer wg.Done(); n.Gateway().Sweep(ctx, live) }()
	}
	wg.Wait()
	tap.await(t, 1, protocol.WebhookMemberRemoved, "presence-room")
	tap.await(t, 1, protocol.WebhookChannelVacated, "lonely")
	tap.settle(t, sc.a, sc.b)
	vacated := expectOne(t, tap.named(protocol.WebhookChannelVacated, "lonely"), "channel_vacated")
	if vacated.Rev <= chg.Rev {
		t.Fatalf("vacated at rev %d, the count written at %d", vacated.Rev, chg.Rev)
	}
	removed := expectOne(t, tap.named(protocol.WebhookMemberRemoved, "presence-room"), "member_removed")
	if removed.Event.UserID != "2" || removed.Rev == 0 {
		t.Fatalf("member_removed %+v", removed)
	}
	if v := tap.named(protocol.WebhookChannelVacated, "presence-room"); len(v) != 0 {
		t.Fatalf("presence-room still has user 1, but %+v", v)
	}
}

// TestWebhookAllInOne: the all-in-one gateway records into its embedded
// JetStream like any other, and what its closing connections vacate is
// stored before it stops.
func TestWebhookAllInOne(t *testing.T) {
	s := baseSettings(t)
	cfg, err := (&config.Config{Settings: s}).WithApp(hookApp)
	if err != nil {
		t.Fatal(err)
	}
	n := startOn(t, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	nc, err := n.embedded.Connect("tap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	tap := tapHooksOn(t, nc)
	c := pushertest.Connect(t, n.Addr().String(), hookApp.Key)
	c.Subscribe("room")
	tap.await(t, 1, protocol.WebhookChannelOccupied, "room")

	// Stopping: the gateway drains its connection (4200), and the vacated
	// it records once the client has gone is stored before the node
	// closes its NATS connections.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, webhook.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	before, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n.cancel() // what Close does first: the gateway stops, the embedded server stays
	c.ExpectClose(protocol.CodeReconnect)
	c.Close()
	waitFor(t, "the vacated stored", func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.LastSeq > before.State.LastSeq && len(tap.named(protocol.WebhookChannelVacated, "room")) == 1
	})
	if n.WebhookRecorder().Dropped() != 0 {
		t.Fatalf("%d records dropped", n.WebhookRecorder().Dropped())
	}
}
