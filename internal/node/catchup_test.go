package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/gateway"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/streams"
	"github.com/resoundhq/resound/internal/worker"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// linkProxy forwards TCP to a target; cut drops every connection and
// refuses new ones until mend.
type linkProxy struct {
	t      *testing.T
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	p := &linkProxy{t: t, target: target}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *linkProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
}

func (p *linkProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *linkProxy) mend() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(ln)
}

// twoGateways starts gateways A and B and a worker on one NATS server; B
// reaches NATS through a proxy.
func twoGateways(t *testing.T, tweak func(*config.Settings), app config.App) (a, b *Node, proxy *linkProxy, api *pushertest.API, app2 config.App) {
	return twoGatewaysWith(t, tweak, app, nil)
}

// twoGatewaysWith is twoGateways with B's gateway options adjusted.
func twoGatewaysWith(t *testing.T, tweak func(*config.Settings), app config.App, gwB func(*gateway.Options)) (a, b *Node, proxy *linkProxy, api *pushertest.API, app2 config.App) {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	srv := natstest.Server(t, true)
	proxy = newLinkProxy(t, srv.ClientURL()[len("nats://"):])
	s := baseSettings(t)
	s.HistoryTTL, s.HistoryMaxBytes = config.Seconds(time.Minute), 64<<20
	if tweak != nil {
		tweak(&s)
	}
	cfg, err := (&config.Config{Settings: s}).WithApp(app)
	if err != nil {
		t.Fatal(err)
	}
	cfgA, cfgB := *cfg, *cfg
	cfgA.NATSURL, cfgB.NATSURL = srv.ClientURL(), "nats://"+proxy.addr
	a, b = startOn(t, &cfgA, log), startOnWith(t, &cfgB, log, gwB)
	nc := natstest.Conn(t, srv, "test-worker")
	js, _ := jetstream.New(nc)
	stores, err := cluster.Ensure(context.Background(), js, streams.Cluster(&s))
	if err != nil {
		t.Fatal(err)
	}
	pool := worker.New(worker.Options{Conn: nc, JetStream: js, Limits: s.Limits(), Workers: 2, Log: log, Cache: stores.Cache,
		Apps: func(id string) bool { return id == app.ID }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = pool.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	api = &pushertest.API{BaseURL: "http://" + a.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}
	return a, b, proxy, api, *cfg.Apps.All()[0]
}

// A gateway cut off from NATS for longer than RESOUND_GATEWAY_TTL is taken
// for dead: the other sweeps its presence member (member_removed) and its
// signed-in user. When its link is back, it says them again: the member is
// listed again, the others get member_added once, and a watcher of the
// user gets online.
func TestGatewayReassertsWhatItHoldsAfterItsHeartbeatLapsed(t *testing.T) {
	app := config.App{ID: appID, Key: appKey, Secret: secret}
	a, b, proxy, api, filled := twoGateways(t, func(s *config.Settings) { s.GatewayTTL = config.Seconds(3 * time.Second) }, app)
	observer := pushertest.Connect(t, a.Addr().String(), appKey)
	joinPresence(t, observer, filled, "presence-room", "observer")
	watcher := pushertest.Connect(t, a.Addr().String(), appKey)
	ud := `{"id":"watcher","watchlist":["member"]}`
	watcher.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": appKey + ":" + sign(secret, watcher.SocketID+"::user::"+ud), "user_data": ud}})
	watcher.Expect("pusher:signin_success")

	m := pushertest.Connect(t, b.Addr().String(), appKey)
	mud := `{"id":"member"}`
	m.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": appKey + ":" + sign(secret, m.SocketID+"::user::"+mud), "user_data": mud}})
	m.Expect("pusher:signin_success")
	joinPresence(t, m, filled, "presence-room", "member")
	observer.Expect(protocol.EventMemberAdded)
	watcher.Expect(protocol.EventWatchlistEvents) // online

	proxy.cut()
	expectMemberRemoved(t, observer, "presence-room", "member", 20*time.Second)
	// offline, after at most one more online: on a loaded machine B's
	// heartbeat may lapse once before the cut, and be healed, too.
	for i := 0; ; i++ {
		w := watcher.Expect(protocol.EventWatchlistEvents)
		if strings.Contains(w.DataString(), "offline") {
			break
		}
		if i == 1 || !strings.Contains(w.DataString(), "online") {
			t.Fatalf("watchlist %s, want offline", w.Raw)
		}
	}
	proxy.mend()
	added := observer.Expect(protocol.EventMemberAdded)
	if !strings.Contains(added.DataString(), `"member"`) {
		t.Fatalf("member_added %s", added.Raw)
	}
	if w := watcher.Expect(protocol.EventWatchlistEvents); !strings.Contains(w.DataString(), "online") {
		t.Fatalf("watchlist %s", w.Raw)
	}
	if users := usersOf(t, api, "presence-room"); !strings.Contains(users, `"member"`) {
		t.Fatalf("users after the lapse: %s", users)
	}
	// Once: the second pass a TTL later finds it all there.
	observer.ExpectSilence(4 * time.Second)
	mustOK(t, api.Trigger([]string{"presence-room"}, "still", "here", ""))
	m.Expect("still")
}

// A reassertion after a lapse is made however long the shared state
// refuses it: here the presence bucket takes no writes from before B's
// link comes back until after B's second pass (a TTL after the first).
// Given up after one try, as it was, the member stayed missing while its
// connection lived (the million-socket run's drain left 1,994 of 5,040
// presence channels short).
func TestGatewayReassertionRetriesUntilItsWritesAreMade(t *testing.T) {
	const ttl = 3 * time.Second
	app := config.App{ID: appID, Key: appKey, Secret: secret}
	a, b, proxy, api, filled := twoGateways(t, func(s *config.Settings) { s.GatewayTTL = config.Seconds(ttl) }, app)
	observer := pushertest.Connect(t, a.Addr().String(), appKey)
	joinPresence(t, observer, filled, "presence-room", "observer")
	m := pushertest.Connect(t, b.Addr().String(), appKey)
	joinPresence(t, m, filled, "presence-room", "member")
	observer.Expect(protocol.EventMemberAdded)

	// The test's own link to NATS, not through B's proxy.
	js := natstest.Dial(t, "nats://"+proxy.target)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, "KV_"+cluster.BucketPresence)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	subjects := cfg.Subjects
	refuse := func(on bool) {
		t.Helper()
		cfg.Subjects = subjects
		if on {
			// No stream takes the bucket's subjects: every write is
			// refused (no responders); reads by stream name still work.
			cfg.Subjects = []string{"resound-test.nowhere.>"}
		}
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}

	proxy.cut()
	expectMemberRemoved(t, observer, "presence-room", "member", 20*time.Second)
	refuse(true)
	before := retries(t, b)
	proxy.mend()
	// Wait for B's reassertion to be refused, then for its second pass to
	// have been due too.
	for deadline := time.Now().Add(30 * time.Second); retries(t, b) == before; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("B never retried a refused write after its link came back")
		}
	}
	time.Sleep(ttl + time.Second)
	refuse(false)
	added := observer.Expect(protocol.EventMemberAdded)
	if !strings.Contains(added.DataString(), `"member"`) {
		t.Fatalf("member_added %s", added.Raw)
	}
	if users := usersOf(t, api, "presence-room"); !strings.Contains(users, `"member"`) {
		t.Fatalf("users after the lapse: %s", users)
	}
}

// retries is a node's resound_state_retries_total.
func retries(t *testing.T, n *Node) float64 {
	t.Helper()
	mfs, err := n.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "resound_state_retries_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// Two gateways and a worker on one NATS server; gateway B reaches NATS
// through a proxy that is cut for a while, with events triggered on A
// before, during and after. B's client, connected throughout, receives
// every event exactly once and in order: B reads what it missed from the
// history when its link comes back.
func TestGatewayCatchesUpAfterItsLinkWasCut(t *testing.T) {
	_, b, proxy, api, _ := twoGateways(t, nil, config.App{ID: appID, Key: appKey, Secret: secret})
	quiet := pushertest.Connect(t, b.Addr().String(), appKey)
	quiet.Subscribe("quiet")
	busy := pushertest.Connect(t, b.Addr().String(), appKey)
	busy.Subscribe("busy")
	n := 0
	trigger := func(k int) {
		for i := 0; i < k; i++ {
			n++
			mustOK(t, api.Trigger([]string{"busy"}, "e", fmt.Sprint(n), ""))
		}
	}
	trigger(5)
	for i := 1; i <= 5; i++ {
		if m := busy.Expect("e"); m.DataString() != fmt.Sprint(i) {
			t.Fatalf("before the cut: %s", m.Raw)
		}
	}
	proxy.cut()
	time.Sleep(500 * time.Millisecond) // B notices
	trigger(10)
	// A channel that gets one event during the cut and nothing after.
	mustOK(t, api.Trigger([]string{"quiet"}, "q", "only", ""))
	proxy.mend()
	for i := 6; i <= 15; i++ {
		if m := busy.Expect("e"); m.DataString() != fmt.Sprint(i) {
			t.Fatalf("missed during the cut: got %s, want %d", m.Raw, i)
		}
	}
	if m := quiet.Expect("q"); m.DataString() != "only" {
		t.Fatalf("quiet channel: %s", m.Raw)
	}
	trigger(5)
	for i := 16; i <= 20; i++ {
		if m := busy.Expect("e"); m.DataString() != fmt.Sprint(i) {
			t.Fatalf("after the cut: got %s, want %d", m.Raw, i)
		}
	}
	busy.ExpectSilence(300 * time.Millisecond)
	quiet.ExpectSilence(10 * time.Millisecond)
}

// startOnWith is startOn with the gateway's options adjusted.
func startOnWith(t *testing.T, cfg *config.Config, log zerolog.Logger, gw func(*gateway.Options)) *Node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Start(ctx, Options{Config: cfg, Listener: ln, Log: log, Gateway: gw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// A gateway whose dispatcher falls behind a burst has NATS drop
// deliveries as a slow consumer (here: a queue of 8 for one dispatcher
// writing to 40 subscribers). It notices, holds what follows, reads what
// was dropped back from the history, and every subscriber gets every
// event once, in order.
func TestGatewayCatchesUpAfterNATSDroppedDeliveries(t *testing.T) {
	_, b, _, api, _ := twoGatewaysWith(t, nil, config.App{ID: appID, Key: appKey, Secret: secret},
		func(o *gateway.Options) { o.DispatchQueue, o.Dispatchers = 8, 1 })
	var clients []*pushertest.Client
	for i := 0; i < 40; i++ {
		c := pushertest.Connect(t, b.Addr().String(), appKey)
		c.Subscribe("burst")
		clients = append(clients, c)
	}
	const batches, perBatch = 40, 10
	var wg sync.WaitGroup
	var order sync.Mutex // batches one after another, each as fast as the API takes it
	for i := 0; i < batches; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			order.Lock()
			defer order.Unlock()
			var batch []map[string]any
			for j := 0; j < perBatch; j++ {
				batch = append(batch, map[string]any{"name": "e", "channel": "burst", "data": fmt.Sprint(i*perBatch + j)})
			}
			body, _ := json.Marshal(map[string]any{"batch": batch})
			if r := api.Do(http.MethodPost, "/batch_events", body, nil); r.Status != 200 {
				t.Errorf("batch: %d %s", r.Status, r.Body)
			}
		}()
		wg.Wait() // in order: each batch's events are numbered after the last's
	}
	want := batches * perBatch
	for ci, c := range clients {
		last := -1
		for k := 0; k < want; k++ {
			m, err := c.Read(10 * time.Second)
			if err != nil {
				t.Fatalf("client %d after %d events (last %d): %v; %s", ci, k, last, err, scrape(t, b))
			}
			var v int
			fmt.Sscan(m.DataString(), &v)
			if v <= last {
				t.Fatalf("client %d: %d after %d", ci, v, last)
			}
			last = v
		}
		if last != want-1 {
			t.Fatalf("client %d: last %d", ci, last)
		}
	}
	clients[0].ExpectSilence(200 * time.Millisecond)
	m := scrape(t, b)
	t.Logf("catch-ups: %s", m)
}

// scrape returns a node's resound_catchups_total lines.
func scrape(t *testing.T, n *Node) string {
	var out []string
	mfs, err := n.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "resound_catchups_total" || mf.GetName() == "resound_catchup_replayed_total" {
			for _, m := range mf.GetMetric() {
				out = append(out, fmt.Sprintf("%s%v=%v", mf.GetName(), m.GetLabel(), m.GetCounter().GetValue()))
			}
		}
	}
	return strings.Join(out, " ")
}
