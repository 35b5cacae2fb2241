package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/internal/streams"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// sweepCluster is two gateways on one NATS server, plus direct access to
// the shared-state buckets they use and fake gateways that only
// heartbeat.
type sweepCluster struct {
	*testCluster
	stores *cluster.Stores
	fakes  map[string]*fakeGateway
}

// fakeGateway is a heartbeat key written as a gateway's registry would,
// with nothing behind it.
type fakeGateway struct {
	stop chan struct{}
	done <-chan struct{}
}

// die stops the heartbeat; with deleteKey it also deletes the key, as a
// clean shutdown does (a crash leaves it to expire).
func (sc *sweepCluster) die(t *testing.T, id string, deleteKey bool) {
	t.Helper()
	f := sc.fakes[id]
	close(f.stop)
	<-f.done
	if deleteKey {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sc.stores.Gateways.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// startSweepCluster is startCluster with the gateway TTL chosen and no
// worker pool (nothing here goes through the job stream). The fake
// gateways start heartbeating before the real ones start, so that every
// registry sees them alive in its first poll and its start-up sweep leaves
// what they hold alone; they beat until the test makes them die.
func startSweepCluster(t *testing.T, ttl time.Duration, app config.App, fakes ...string) *sweepCluster {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	srv := natstest.Server(t, true)
	s := baseSettings(t)
	s.NATSURL = srv.ClientURL()
	if ttl < 3*time.Second {
		t.Fatalf("RESOUND_GATEWAY_TTL must be at least 3s, not %v", ttl)
	}
	s.GatewayTTL = config.Seconds(ttl)

	js, err := jetstream.New(natstest.Conn(t, srv, "sweep-test"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stores, err := cluster.Ensure(ctx, js, streams.Cluster(&s))
	if err != nil {
		t.Fatal(err)
	}
	sc := &sweepCluster{stores: stores, fakes: map[string]*fakeGateway{}}
	for _, id := range fakes {
		f := &fakeGateway{stop: make(chan struct{})}
		f.done = heartbeat(t, stores, id, ttl/6, f.stop)
		sc.fakes[id] = f
		t.Cleanup(func() {
			select {
			case <-f.stop:
			default:
				close(f.stop)
			}
			<-f.done
		})
	}

	withApp, err := (&config.Config{Settings: s}).WithApp(app)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{secret: map[string]string{app.ID: app.Secret}, apps: withApp.Apps}
	cfg := &config.Config{Settings: s, Apps: tc.apps}
	tc.a, tc.b = startOn(t, cfg, log), startOn(t, cfg, log)
	tc.apiA = &pushertest.API{BaseURL: "http://" + tc.a.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}
	tc.apiB = &pushertest.API{BaseURL: "http://" + tc.b.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}
	sc.testCluster = tc
	return sc
}

// realGateways waits until both real gateways heartbeat (with the fakes
// still beating) and returns the live set as it is once the fakes are
// gone: the two real gateways.
func (sc *sweepCluster) realGateways(t *testing.T) map[string]bool {
	t.Helper()
	live := liveGateways(t, sc.stores, 2+len(sc.fakes))
	for id := range sc.fakes {
		if !live[id] {
			t.Fatalf("fake gateway %s is not in %v", id, live)
		}
		delete(live, id)
	}
	return live
}

// liveGateways waits until n gateways heartbeat and returns their ids.
func liveGateways(t *testing.T, stores *cluster.Stores, n int) map[string]bool {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		keys, err := stores.Gateways.Keys(ctx)
		cancel()
		if err == nil && len(keys) == n {
			live := map[string]bool{}
			for _, k := range keys {
				live[k] = true
			}
			return live
		}
		if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
			t.Fatalf("listing gateways: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d live gateways, have %v", n, keys)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expectMemberRemoved reads c's messages until member_removed for userID
// on channel arrives, failing on a removal of anyone else or when none
// comes within the bound.
func expectMemberRemoved(t *testing.T, c *pushertest.Client, channel, userID string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no member_removed for %q on %s within %v", userID, channel, within)
		}
		m, err := c.Read(left)
		if err != nil {
			t.Fatalf("no member_removed for %q on %s within %v: %v", userID, channel, within, err)
		}
		switch m.Event {
		case protocol.EventPing:
			continue
		case protocol.EventMemberRemoved:
		default:
			t.Fatalf("got %s while waiting for member_removed", m.Raw)
		}
		var d struct {
			UserID string `json:"user_id"`
		}
		if err := m.DataObject(&d); err != nil || m.Channel != channel || d.UserID != userID {
			t.Fatalf("got %s, want member_removed for %q on %s", m.Raw, userID, channel)
		}
		return
	}
}

func usersOf(t *testing.T, api *pushertest.API, channel string) string {
	t.Helper()
	r := api.Do(http.MethodGet, "/channels/"+channel+"/users", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("users of %s: %d %s", channel, r.Status, r.Body)
	}
	return string(r.Body)
}

func addMember(t *testing.T, stores *cluster.Stores, appID, channel, userID, socketID, gatewayID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := protocol.PresenceMember{ID: userID, Info: json.RawMessage(`{"name":"user ` + userID + `"}`)}
	if _, err := presence.New(stores.Presence).Join(ctx, appID, channel, m, socketID, gatewayID, 0); err != nil {
		t.Fatal(err)
	}
}

// TestSweepRemovesADeadGatewaysMembers: a gateway that dies must not leave
// its members behind. The sweep a live gateway runs removes them, tells
// the channel, and the HTTP API stops listing them. dead-gw heartbeats
// until the test deletes its key and calls Sweep with the live set as it
// is once dead-gw is gone (the registries may sweep too, after: only the
// write that removes a member announces it).
func TestSweepRemovesADeadGatewaysMembers(t *testing.T) {
	sc := startSweepCluster(t, 15*time.Second, app1, "dead-gw")
	live := sc.realGateways(t)
	a1 := pushertest.Connect(t, sc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")
	// User 2 is held by dead-gw.
	addMember(t, sc.stores, app1.ID, "presence-room", "2", "9.9", "dead-gw")
	if got := usersOf(t, sc.apiB, "presence-room"); got != `{"users":[{"id":"1"},{"id":"2"}]}` {
		t.Fatalf("users before the sweep: %s", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Gone as the sweep sees it: a sweep asks again about a gateway
	// whose key is still there (it may have come back).
	sc.die(t, "dead-gw", true)
	sc.a.Gateway().Sweep(ctx, live)

	expectMemberRemoved(t, a1, "presence-room", "2", 10*time.Second)
	for _, api := range []*pushertest.API{sc.apiA, sc.apiB} {
		if got := usersOf(t, api, "presence-room"); got != `{"users":[{"id":"1"}]}` {
			t.Fatalf("users after the sweep: %s", got)
		}
	}
	// Sweeping again, from the other gateway, finds nothing to announce:
	// the next thing a1 gets is its pong.
	sc.b.Gateway().Sweep(ctx, live)
	a1.SendJSON(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	a1.Expect(protocol.EventPong)
}

// TestSweepKeepsASecondConnectionOnALiveGateway: a user with connections
// on a dead gateway and on a live one stays, with no member_removed.
func TestSweepKeepsASecondConnectionOnALiveGateway(t *testing.T) {
	sc := startSweepCluster(t, 15*time.Second, app1, "dead-gw")
	live := sc.realGateways(t)
	a1 := pushertest.Connect(t, sc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")
	b3 := pushertest.Connect(t, sc.b.Addr().String(), app1.Key)
	joinPresence(t, b3, app1, "presence-room", "3")
	a1.Expect(protocol.EventMemberAdded)
	// User 3 also has a tab on dead-gw; user 4 only there.
	addMember(t, sc.stores, app1.ID, "presence-room", "3", "9.8", "dead-gw")
	addMember(t, sc.stores, app1.ID, "presence-room", "4", "9.9", "dead-gw")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Gone as the sweep sees it: a sweep asks again about a gateway
	// whose key is still there (it may have come back).
	sc.die(t, "dead-gw", true)
	sc.b.Gateway().Sweep(ctx, live)
	expectMemberRemoved(t, a1, "presence-room", "4", 10*time.Second)
	if got := usersOf(t, sc.apiA, "presence-room"); got != `{"users":[{"id":"1"},{"id":"3"}]}` {
		t.Fatalf("users after the sweep: %s", got)
	}
	// User 3's real connection closing is now their last: member_removed.
	b3.Close()
	expectMemberRemoved(t, a1, "presence-room", "3", 10*time.Second)
}

// TestSweepFreesADeadGatewaysSlotsAndSignsOutItsUsers: the sweep also
// gives back the connection slots a dead gateway held against
// max_connections, and announces its signed-in users as offline to their
// watchers.
func TestSweepFreesADeadGatewaysSlotsAndSignsOutItsUsers(t *testing.T) {
	quota := config.App{ID: "555", Key: "key-quota", Secret: "secret-quota", MaxConnections: 3}
	sc := startSweepCluster(t, 15*time.Second, quota, "dead-gw")
	live := sc.realGateways(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// dead-gw holds two of the three slots, and user 77 is signed in on it.
	if _, err := sc.stores.Counts.Put(ctx, cluster.Key("conns", quota.ID), []byte(`{"dead-gw":2}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.stores.Users.Put(ctx, cluster.Key(quota.ID, "77"), []byte(`{"8.8":"dead-gw"}`)); err != nil {
		t.Fatal(err)
	}

	c := pushertest.Connect(t, sc.a.Addr().String(), quota.Key)
	userData := `{"id":"42","watchlist":["77"]}`
	c.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": quota.Key + ":" + sign(quota.Secret, c.SocketID+"::user::"+userData), "user_data": userData}})
	c.Expect(protocol.EventSigninSuccess)
	if m := c.Expect(protocol.EventWatchlistEvents); m.DataString() != `{"events":[{"name":"online","user_ids":["77"]}]}` {
		t.Fatalf("initial watchlist %s", m.Raw)
	}
	full := pushertest.Dial(t, sc.b.Addr().String(), "/app/"+quota.Key)
	full.ExpectError(protocol.CodeOverQuota)
	full.ExpectClose(protocol.CodeOverQuota)

	// Gone as the sweep sees it: a sweep asks again about a gateway
	// whose key is still there (it may have come back).
	sc.die(t, "dead-gw", true)
	sc.b.Gateway().Sweep(ctx, live)

	if m := c.Expect(protocol.EventWatchlistEvents); m.DataString() != `{"events":[{"name":"offline","user_ids":["77"]}]}` {
		t.Fatalf("watchlist after the sweep %s", m.Raw)
	}
	if _, err := sc.stores.Users.Get(ctx, cluster.Key(quota.ID, "77")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("user 77 after the sweep: %v, want deleted", err)
	}
	e, err := sc.stores.Counts.Get(ctx, cluster.Key("conns", quota.ID))
	if err != nil {
		t.Fatal(err)
	}
	var counts map[string]int
	if err := json.Unmarshal(e.Value(), &counts); err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 {
		t.Fatalf("connection counts after the sweep: %s", e.Value())
	}
	for id, n := range counts {
		if !live[id] || n != 1 {
			t.Fatalf("connection counts after the sweep: %s", e.Value())
		}
	}
	// Two slots are free again.
	pushertest.Connect(t, sc.b.Addr().String(), quota.Key)
	pushertest.Connect(t, sc.a.Addr().String(), quota.Key)
}

// heartbeat writes a fake gateway's heartbeat key every period until stop
// is closed, as a live gateway's registry would.
func heartbeat(t *testing.T, stores *cluster.Stores, id string, period time.Duration, stop <-chan struct{}) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	put := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := stores.Gateways.Put(ctx, id, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
			t.Errorf("heartbeat of %s: %v", id, err)
		}
	}
	put()
	go func() {
		defer close(done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				put()
			}
		}
	}()
	return done
}

// TestRegistryDrivenSweepAfterAGatewayDies: with no explicit Sweep, a
// gateway whose heartbeat disappears has its members removed by the live
// gateways' registries. "ghost" heartbeats from before the real gateways
// start, so their registries have seen it alive.
func TestRegistryDrivenSweepAfterAGatewayDies(t *testing.T) {
	const ttl = 3 * time.Second // RESOUND_GATEWAY_TTL's minimum
	sc := startSweepCluster(t, ttl, app1, "ghost")
	sc.realGateways(t)
	a1 := pushertest.Connect(t, sc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")
	addMember(t, sc.stores, app1.ID, "presence-room", "ghost-user", "7.7", "ghost")
	if got := usersOf(t, sc.apiA, "presence-room"); got != `{"users":[{"id":"1"},{"id":"ghost-user"}]}` {
		t.Fatalf("users with the ghost: %s", got)
	}
	// It dies: its key is deleted, as a clean shutdown does.
	sc.die(t, "ghost", true)

	expectMemberRemoved(t, a1, "presence-room", "ghost-user", 30*time.Second)
	if got := usersOf(t, sc.apiB, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the ghost died: %s", got)
	}
}

// TestRegistryDrivenSweepAfterAHeartbeatExpires: a gateway that crashes
// (its key is never deleted, it just stops heartbeating) is cleaned up
// once the key expires.
func TestRegistryDrivenSweepAfterAHeartbeatExpires(t *testing.T) {
	const ttl = 3 * time.Second
	sc := startSweepCluster(t, ttl, app1, "crashed")
	sc.realGateways(t)
	b1 := pushertest.Connect(t, sc.b.Addr().String(), app1.Key)
	joinPresence(t, b1, app1, "presence-room", "1")
	addMember(t, sc.stores, app1.ID, "presence-room", "crashed-user", "6.6", "crashed")
	sc.die(t, "crashed", false) // no more heartbeats, no delete

	expectMemberRemoved(t, b1, "presence-room", "crashed-user", 30*time.Second)
	if got := usersOf(t, sc.apiA, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the crash: %s", got)
	}
}

// TestRegistryDrivenSweepOfAShortLivedGateway: a gateway whose heartbeat
// key appears and disappears between two polls of the survivors'
// registries is never seen gone; the leader's periodic sweep (the live
// gateway with the lowest id sweeps once per TTL) still removes its
// members, within TTL plus a TTL.
func TestRegistryDrivenSweepOfAShortLivedGateway(t *testing.T) {
	const ttl = 3 * time.Second
	sc := startSweepCluster(t, ttl, app1)
	sc.realGateways(t)
	a1 := pushertest.Connect(t, sc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sc.stores.Gateways.Put(ctx, "brief", []byte("now")); err != nil {
		t.Fatal(err)
	}
	addMember(t, sc.stores, app1.ID, "presence-room", "brief-user", "5.5", "brief")
	if err := sc.stores.Gateways.Delete(ctx, "brief"); err != nil {
		t.Fatal(err)
	}
	expectMemberRemoved(t, a1, "presence-room", "brief-user", 5*ttl)
	if got := usersOf(t, sc.apiB, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the sweep: %s", got)
	}
}
