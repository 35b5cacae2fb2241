package node

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/pkg/cluster"
	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/natsembed"
	"github.com/resoundhq/resound/pkg/presence"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// startSweepCluster is startCluster with the gateway TTL chosen, no worker
// pool (nothing here goes through the job stream), and direct access to
// the shared-state buckets the gateways use.
func startSweepCluster(t *testing.T, ttl time.Duration, app config.App) (*testCluster, *cluster.Stores) {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), ListenPort: -1, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	s := baseSettings(t)
	s.NATSURL = srv.ClientURL()
	if ttl < 3*time.Second {
		t.Fatalf("RESOUND_GATEWAY_TTL must be at least 3s, not %v", ttl)
	}
	s.GatewayTTL = config.Seconds(ttl)
	withApp, err := (&config.Config{Settings: s}).WithApp(app)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{secret: map[string]string{app.ID: app.Secret}, apps: withApp.Apps}
	cfg := &config.Config{Settings: s, Apps: tc.apps}
	start := func() *Node {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		n, err := Start(ctx, Options{Config: cfg, Listener: ln, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n
	}
	tc.a, tc.b = start(), start()
	tc.apiA = &pushertest.API{BaseURL: "http://" + tc.a.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}
	tc.apiB = &pushertest.API{BaseURL: "http://" + tc.b.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}

	nc, err := srv.Connect("sweep-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stores, err := cluster.Ensure(ctx, js, ClusterOptions(&s))
	if err != nil {
		t.Fatal(err)
	}
	return tc, stores
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
// the channel, and the HTTP API stops listing them.
func TestSweepRemovesADeadGatewaysMembers(t *testing.T) {
	tc, stores := startSweepCluster(t, 15*time.Second, app1)
	live := liveGateways(t, stores, 2)
	if live["dead-gw"] {
		t.Fatal("dead-gw is live")
	}
	a1 := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")
	// User 2 is held by a gateway that is no longer there.
	addMember(t, stores, app1.ID, "presence-room", "2", "9.9", "dead-gw")
	if got := usersOf(t, tc.apiB, "presence-room"); got != `{"users":[{"id":"1"},{"id":"2"}]}` {
		t.Fatalf("users before the sweep: %s", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tc.a.Gateway().Sweep(ctx, live)

	expectMemberRemoved(t, a1, "presence-room", "2", 10*time.Second)
	if got := usersOf(t, tc.apiA, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the sweep: %s", got)
	}
	// The live member is untouched: the channel still answers pings and the
	// user is still listed by the other gateway too.
	if got := usersOf(t, tc.apiB, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the sweep, asked of B: %s", got)
	}
	// Sweeping again changes nothing and announces nothing.
	tc.b.Gateway().Sweep(ctx, live)
	a1.SendJSON(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	a1.Expect(protocol.EventPong)
}

// TestSweepKeepsASecondConnectionOnALiveGateway: a user with connections
// on a dead gateway and on a live one stays, with no member_removed.
func TestSweepKeepsASecondConnectionOnALiveGateway(t *testing.T) {
	tc, stores := startSweepCluster(t, 15*time.Second, app1)
	live := liveGateways(t, stores, 2)
	a1 := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")
	b3 := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	joinPresence(t, b3, app1, "presence-room", "3")
	a1.Expect(protocol.EventMemberAdded)
	// User 3 also had a tab on the dead gateway; user 4 only there.
	addMember(t, stores, app1.ID, "presence-room", "3", "9.8", "dead-gw")
	addMember(t, stores, app1.ID, "presence-room", "4", "9.9", "dead-gw")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tc.b.Gateway().Sweep(ctx, live)
	expectMemberRemoved(t, a1, "presence-room", "4", 10*time.Second)
	if got := usersOf(t, tc.apiA, "presence-room"); got != `{"users":[{"id":"1"},{"id":"3"}]}` {
		t.Fatalf("users after the sweep: %s", got)
	}
	// User 3's real connection closing is now their last: member_removed.
	b3.Close()
	expectMemberRemoved(t, a1, "presence-room", "3", 10*time.Second)
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
// gateways' registries.
func TestRegistryDrivenSweepAfterAGatewayDies(t *testing.T) {
	const ttl = 3 * time.Second // RESOUND_GATEWAY_TTL's minimum
	tc, stores := startSweepCluster(t, ttl, app1)
	liveGateways(t, stores, 2)
	a1 := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")

	// "ghost" heartbeats like a gateway for a while, so that the real
	// gateways' registries (which poll every TTL/3) have seen it alive.
	stop := make(chan struct{})
	beating := heartbeat(t, stores, "ghost", ttl/6, stop)
	liveGateways(t, stores, 3)
	addMember(t, stores, app1.ID, "presence-room", "ghost-user", "7.7", "ghost")
	if got := usersOf(t, tc.apiA, "presence-room"); got != `{"users":[{"id":"1"},{"id":"ghost-user"}]}` {
		t.Fatalf("users with the ghost: %s", got)
	}
	// Keep beating for more than two registry polls before dying.
	time.Sleep(2*ttl/3 + ttl/2)
	close(stop)
	<-beating
	// It dies: its key is deleted (as a clean shutdown does).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := stores.Gateways.Delete(ctx, "ghost"); err != nil {
		t.Fatal(err)
	}

	expectMemberRemoved(t, a1, "presence-room", "ghost-user", 30*time.Second)
	if got := usersOf(t, tc.apiB, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the ghost died: %s", got)
	}
}

// TestRegistryDrivenSweepAfterAHeartbeatExpires: a gateway that crashes
// (its key is never deleted, it just stops heartbeating) is cleaned up
// once the key expires.
func TestRegistryDrivenSweepAfterAHeartbeatExpires(t *testing.T) {
	const ttl = 3 * time.Second
	tc, stores := startSweepCluster(t, ttl, app1)
	liveGateways(t, stores, 2)
	b1 := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	joinPresence(t, b1, app1, "presence-room", "1")
	stop := make(chan struct{})
	beating := heartbeat(t, stores, "crashed", ttl/6, stop)
	liveGateways(t, stores, 3)
	addMember(t, stores, app1.ID, "presence-room", "crashed-user", "6.6", "crashed")
	time.Sleep(2*ttl/3 + ttl/2)
	close(stop) // the crash: no more heartbeats, no delete
	<-beating

	expectMemberRemoved(t, b1, "presence-room", "crashed-user", 30*time.Second)
	if got := usersOf(t, tc.apiA, "presence-room"); got != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the crash: %s", got)
	}
}

// BUG: a gateway whose heartbeat key appears and disappears between two
// polls of the survivors' registries is never noticed: Registry.Run only
// calls onGone for ids it has seen in an earlier poll, and nothing sweeps
// periodically. A gateway that starts, takes presence members and shuts
// down (deleting its key) within one poll interval (TTL/3, 5 s by default)
// leaves its members listed, with no member_removed, until some other
// gateway leaves or starts.
func TestRegistryDrivenSweepOfAShortLivedGateway(t *testing.T) {
	const ttl = 3 * time.Second
	tc, stores := startSweepCluster(t, ttl, app1)
	liveGateways(t, stores, 2)
	a1 := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	joinPresence(t, a1, app1, "presence-room", "1")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := stores.Gateways.Put(ctx, "brief", []byte("now")); err != nil {
		t.Fatal(err)
	}
	addMember(t, stores, app1.ID, "presence-room", "brief-user", "5.5", "brief")
	if err := stores.Gateways.Delete(ctx, "brief"); err != nil {
		t.Fatal(err)
	}
	// Five TTLs: far more than any registry needs to poll.
	expectMemberRemoved(t, a1, "presence-room", "brief-user", 5*ttl)
}
