package node

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/pkg/cluster"
	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/natsembed/natstest"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/pkg/worker"
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
	a, b = startOn(t, &cfgA, log), startOn(t, &cfgB, log)
	nc := natstest.Conn(t, srv, "test-worker")
	js, _ := jetstream.New(nc)
	stores, err := cluster.Ensure(context.Background(), js, ClusterOptions(&s))
	if err != nil {
		t.Fatal(err)
	}
	pool := worker.New(worker.Options{Conn: nc, JetStream: js, Limits: Limits(&s), Workers: 2, Log: log, Cache: stores.Cache,
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
	if w := watcher.Expect(protocol.EventWatchlistEvents); !strings.Contains(w.DataString(), "offline") {
		t.Fatalf("watchlist %s", w.Raw)
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
