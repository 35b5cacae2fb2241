package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/streams"
	"github.com/resoundhq/resound/internal/worker"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// testCluster is two gateways and a worker pool on one NATS server, all in
// this process: what cluster-wide behaviour needs to be proven.
type testCluster struct {
	a, b   *Node
	apiA   *pushertest.API
	apiB   *pushertest.API
	apps   *config.Apps
	secret map[string]string
}

func baseSettings(t *testing.T) config.Settings {
	return config.Settings{
		Host: "127.0.0.1", DataDir: t.TempDir(), Workers: 2, LogLevel: "warn", LogFormat: "json",
		PingInterval: config.Seconds(60 * time.Second), ActivityTimeout: config.Seconds(30 * time.Second),
		PongTimeout: config.Seconds(30 * time.Second), MaxMessageSize: 10000, MaxEventSize: 10240,
		MaxRequestSize: 262144, QueueMaxBytes: 64 << 20, QueueMaxAge: config.Seconds(time.Hour),
		CacheTTL: config.Seconds(30 * time.Minute), GatewayTTL: config.Seconds(15 * time.Second),
	}
}

func startCluster(t *testing.T, apps ...config.App) *testCluster {
	t.Helper()
	return startClusterWith(t, nil, apps...)
}

// startClusterWith is startCluster with settings of the test's own.
func startClusterWith(t *testing.T, tweak func(*config.Settings), apps ...config.App) *testCluster {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	srv := natstest.Server(t, true)
	s := baseSettings(t)
	s.NATSURL = srv.ClientURL()
	if tweak != nil {
		tweak(&s)
	}
	filled := make([]config.App, len(apps))
	tc := &testCluster{secret: map[string]string{}}
	for i, app := range apps {
		cfg, err := (&config.Config{Settings: s}).WithApp(app)
		if err != nil {
			t.Fatal(err)
		}
		filled[i] = *cfg.Apps.All()[0]
		tc.secret[app.ID] = app.Secret
	}
	var err error
	tc.apps, err = config.NewApps(filled)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Settings: s, Apps: tc.apps}
	tc.a, tc.b = startOn(t, cfg, log), startOn(t, cfg, log)

	nc := natstest.Conn(t, srv, "test-worker")
	js, _ := jetstream.New(nc)
	stores, err := cluster.Ensure(context.Background(), js, streams.Cluster(&s))
	if err != nil {
		t.Fatal(err)
	}
	pool := worker.New(worker.Options{Conn: nc, JetStream: js, Limits: s.Limits(), Workers: 2, Log: log, Cache: stores.Cache,
		Apps: func(id string) bool { _, ok := tc.apps.ByID(id); return ok }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = pool.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	app := apps[0]
	tc.apiA = &pushertest.API{BaseURL: "http://" + tc.a.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}
	tc.apiB = &pushertest.API{BaseURL: "http://" + tc.b.Addr().String(), AppID: app.ID, Key: app.Key, Secret: app.Secret}
	return tc
}

// startOn starts a node with cfg on a free loopback port, closed when the
// test ends.
func startOn(t *testing.T, cfg *config.Config, log zerolog.Logger) *Node {
	t.Helper()
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

func sign(secret, msg string) string { return protocol.Sign(secret, msg) }

// subscribePrivate sends an authorized subscription and returns the first
// reply.
func subscribeAuth(t *testing.T, c *pushertest.Client, key, secret, channel, channelData string) pushertest.Message {
	t.Helper()
	data := map[string]any{"channel": channel}
	msg := c.SocketID + ":" + channel
	if channelData != "" {
		msg += ":" + channelData
		data["channel_data"] = channelData
	}
	data["auth"] = key + ":" + sign(secret, msg)
	c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": data})
	m, err := c.Read(10 * time.Second)
	if err != nil {
		t.Fatalf("subscribing to %s: %v", channel, err)
	}
	return m
}

type presenceData struct {
	Presence struct {
		IDs   []string                   `json:"ids"`
		Hash  map[string]json.RawMessage `json:"hash"`
		Count int                        `json:"count"`
	} `json:"presence"`
}

func joinPresence(t *testing.T, c *pushertest.Client, app config.App, channel, userID string) presenceData {
	t.Helper()
	cd := fmt.Sprintf(`{"user_id":%q,"user_info":{"name":"user %s"}}`, userID, userID)
	m := subscribeAuth(t, c, app.Key, app.Secret, channel, cd)
	if m.Event != protocol.EventSubscriptionSucceeded {
		t.Fatalf("join %s as %s: %s", channel, userID, m.Raw)
	}
	var d presenceData
	if err := m.DataObject(&d); err != nil {
		t.Fatalf("presence data %s: %v", m.Raw, err)
	}
	return d
}

var app1 = config.App{ID: "111", Key: "key-one", Secret: "secret-one"}

func TestPresenceAcrossGateways(t *testing.T) {
	tc := startCluster(t, app1)
	a1 := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	d := joinPresence(t, a1, app1, "presence-room", "1")
	if d.Presence.Count != 1 || d.Presence.IDs[0] != "1" {
		t.Fatalf("first member sees %+v", d)
	}
	b2 := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	d = joinPresence(t, b2, app1, "presence-room", "2")
	if d.Presence.Count != 2 {
		t.Fatalf("second member sees %+v", d)
	}
	m := a1.Expect(protocol.EventMemberAdded)
	var added struct {
		UserID   string          `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info"`
	}
	if m.DataObject(&added) != nil || added.UserID != "2" || !strings.Contains(string(added.UserInfo), "user 2") {
		t.Fatalf("member_added %s", m.Raw)
	}
	// User 1's second connection, on the other gateway: no member_added.
	b1 := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	d = joinPresence(t, b1, app1, "presence-room", "1")
	if d.Presence.Count != 2 {
		t.Fatalf("second connection of user 1 sees %+v", d)
	}
	// Closing one of user 1's connections: no member_removed.
	a1.Close()
	b3 := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	joinPresence(t, b3, app1, "presence-room", "3")
	m = b2.Expect(protocol.EventMemberAdded) // user 3, not a removal of user 1
	if !strings.Contains(m.DataString(), `"3"`) {
		t.Fatalf("want member_added for 3, got %s", m.Raw)
	}
	b1.Close()
	m = b2.Expect(protocol.EventMemberRemoved)
	if !strings.Contains(m.DataString(), `"1"`) {
		t.Fatalf("member_removed %s", m.Raw)
	}
	r := tc.apiA.Do(http.MethodGet, "/channels/presence-room/users", nil, nil)
	if r.Status != 200 || string(r.Body) != `{"users":[{"id":"2"},{"id":"3"}]}` {
		t.Fatalf("users: %d %s", r.Status, r.Body)
	}
}

func TestPresenceMemberLimit(t *testing.T) {
	small := config.App{ID: "222", Key: "key-small", Secret: "secret-small", MaxPresenceMembers: 2}
	tc := startCluster(t, small)
	var clients []*pushertest.Client
	for i, gw := range []*Node{tc.a, tc.b} {
		c := pushertest.Connect(t, gw.Addr().String(), small.Key)
		joinPresence(t, c, small, "presence-full", fmt.Sprint(i+1))
		clients = append(clients, c)
	}
	clients[0].Expect(protocol.EventMemberAdded)
	third := pushertest.Connect(t, tc.a.Addr().String(), small.Key)
	m := subscribeAuth(t, third, small.Key, small.Secret, "presence-full", `{"user_id":"3"}`)
	if m.Event != protocol.EventSubscriptionError || m.Channel != "presence-full" || !strings.Contains(m.DataString(), "LimitReached") {
		t.Fatalf("third member got %s", m.Raw)
	}
	third.ExpectError(protocol.CodeUnauthorized)
	// An existing member may add a connection; the others saw nothing.
	again := pushertest.Connect(t, tc.b.Addr().String(), small.Key)
	joinPresence(t, again, small, "presence-full", "1")
	clients[0].SendJSON(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	clients[0].Expect(protocol.EventPong)
}

func TestClientEventsAcrossGateways(t *testing.T) {
	tc := startCluster(t, app1)
	a := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	b := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	for _, c := range []*pushertest.Client{a, b} {
		if m := subscribeAuth(t, c, app1.Key, app1.Secret, "private-chat", ""); m.Event != protocol.EventSubscriptionSucceeded {
			t.Fatalf("subscribe: %s", m.Raw)
		}
	}
	a.Send([]byte(`{"event":"client-typing","channel":"private-chat","data":{"who":"a"}}`))
	m := b.Expect("client-typing")
	if m.Channel != "private-chat" || string(m.Data) != `{"who":"a"}` || m.UserID != "" {
		t.Fatalf("relayed %s", m.Raw)
	}
	// The sender does not get its own event: the next thing it sees is the
	// other side's.
	b.Send([]byte(`{"event":"client-reply","channel":"private-chat","data":{}}`))
	a.Expect("client-reply")

	// Presence: the relayed event carries the sender's user_id.
	joinPresence(t, a, app1, "presence-chat", "7")
	joinPresence(t, b, app1, "presence-chat", "8")
	a.Expect(protocol.EventMemberAdded)
	a.Send([]byte(`{"event":"client-hi","channel":"presence-chat","data":{}}`))
	m = b.Expect("client-hi")
	if m.UserID != "7" {
		t.Fatalf("presence client event %s", m.Raw)
	}
}

func TestClientEventRejections(t *testing.T) {
	none := config.App{ID: "333", Key: "key-none", Secret: "secret-none", AcceptClientEventsFrom: "none"}
	tc := startCluster(t, app1, none)
	a := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	other := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	subscribeAuth(t, other, app1.Key, app1.Secret, "private-x", "")
	a.Subscribe("public")

	a.Send([]byte(`{"event":"client-x","channel":"public","data":{}}`))
	a.ExpectError(protocol.CodeUnauthorized)
	a.Send([]byte(`{"event":"client-x","channel":"private-x","data":{}}`)) // not a member
	a.ExpectError(protocol.CodeUnauthorized)
	a.Send([]byte(`{"event":"client-x","channel":"private-encrypted-x","data":{}}`))
	a.ExpectError(protocol.CodeUnauthorized)

	n := pushertest.Connect(t, tc.a.Addr().String(), none.Key)
	subscribeAuth(t, n, none.Key, none.Secret, "private-x", "")
	n.Send([]byte(`{"event":"client-x","channel":"private-x","data":{}}`))
	n.ExpectError(protocol.CodeClientRateLimit)

	// Over 10 per second: 4301, and the connection stays.
	subscribeAuth(t, a, app1.Key, app1.Secret, "private-x", "")
	for i := 0; i < 15; i++ {
		a.Send([]byte(fmt.Sprintf(`{"event":"client-n","channel":"private-x","data":{"i":%d}}`, i)))
	}
	a.ExpectError(protocol.CodeClientRateLimit)
	got := 0
	for {
		m, err := other.Read(time.Second)
		if err != nil {
			break
		}
		if m.Event == "client-n" {
			got++
		}
	}
	if got < 10 || got >= 15 {
		t.Fatalf("the other member got %d of 15 events, want 10 to 14", got)
	}
	a.SendJSON(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	for i := 0; ; i++ {
		m, err := a.Read(5 * time.Second)
		if err != nil || i > 20 {
			t.Fatalf("no pong after the rate limit: %v", err)
		}
		if m.Event == protocol.EventPong {
			break
		}
	}
}

func TestCacheChannels(t *testing.T) {
	tc := startCluster(t, app1)
	mustOK(t, tc.apiA.Trigger([]string{"cache-news"}, "headline", `{"n":1}`, ""))
	mustOK(t, tc.apiA.Trigger([]string{"cache-news"}, "headline", `{"n":2}`, ""))
	c := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	// The worker stores the cache after delivering; wait until it is there.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := tc.apiA.Do(http.MethodGet, "/channels/cache-news", nil, map[string][]string{"info": {"cache"}})
		if strings.Contains(string(r.Body), `{\"n\":2}`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Subscribe("cache-news")
	m := c.Expect("headline")
	if m.DataString() != `{"n":2}` {
		t.Fatalf("cached event %s", m.Raw)
	}
	c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": "cache-empty"}})
	c.Expect(protocol.EventSubscriptionSucceeded)
	if m := c.Expect(protocol.EventCacheMiss); m.Channel != "cache-empty" {
		t.Fatalf("cache_miss %s", m.Raw)
	}
}

func TestSigninServerToUserAndTerminate(t *testing.T) {
	tc := startCluster(t, app1)
	c := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	bystander := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	bystander.Subscribe("news")

	userData := `{"id":"42","watchlist":["43"]}`
	c.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": app1.Key + ":" + sign(app1.Secret, c.SocketID+"::user::"+userData), "user_data": userData}})
	c.Expect(protocol.EventSigninSuccess)

	forged := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	forged.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": app1.Key + ":" + sign("wrong", forged.SocketID+"::user::"+userData), "user_data": userData}})
	forged.ExpectError(protocol.CodeUnauthorized)
	forged.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": "#server-to-user-42"}})
	forged.Expect(protocol.EventSubscriptionError)

	c.Subscribe("#server-to-user-42")
	mustOK(t, tc.apiB.Trigger([]string{"#server-to-user-42"}, "note", "hi", ""))
	c.Expect("note")

	// User 43 signs in on the other gateway: 42 watches them.
	w := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	ud := `{"id":"43"}`
	w.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": app1.Key + ":" + sign(app1.Secret, w.SocketID+"::user::"+ud), "user_data": ud}})
	w.Expect(protocol.EventSigninSuccess)
	m := c.Expect(protocol.EventWatchlistEvents)
	if !strings.Contains(m.DataString(), `"online"`) || !strings.Contains(m.DataString(), `"43"`) {
		t.Fatalf("watchlist %s", m.Raw)
	}
	w.Close()
	m = c.Expect(protocol.EventWatchlistEvents)
	if !strings.Contains(m.DataString(), `"offline"`) {
		t.Fatalf("watchlist %s", m.Raw)
	}

	r := tc.apiB.Do(http.MethodPost, "/users/42/terminate_connections", []byte(`{}`), nil)
	if r.Status != 200 {
		t.Fatalf("terminate: %d %s", r.Status, r.Body)
	}
	c.ExpectError(protocol.CodeUnauthorized)
	c.ExpectClose(protocol.CodeUnauthorized)
	mustOK(t, tc.apiA.Trigger([]string{"news"}, "still", "here", ""))
	bystander.Expect("still")
}

func TestQueriesAcrossGateways(t *testing.T) {
	tc := startCluster(t, app1)
	a := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	b := pushertest.Connect(t, tc.b.Addr().String(), app1.Key)
	a.Subscribe("orders")
	b.Subscribe("orders")
	b.Subscribe("other")
	joinPresence(t, a, app1, "presence-lobby", "1")
	joinPresence(t, b, app1, "presence-lobby", "2")

	get := func(path string, q map[string][]string) (int, map[string]any) {
		r := tc.apiA.Do(http.MethodGet, path, nil, q)
		var v map[string]any
		_ = json.Unmarshal(r.Body, &v)
		return r.Status, v
	}
	st, v := get("/channels/orders", map[string][]string{"info": {"subscription_count"}})
	if st != 200 || v["occupied"] != true || v["subscription_count"] != float64(2) {
		t.Fatalf("channel orders: %d %v", st, v)
	}
	st, v = get("/channels/presence-lobby", map[string][]string{"info": {"user_count"}})
	if st != 200 || v["user_count"] != float64(2) {
		t.Fatalf("presence-lobby: %d %v", st, v)
	}
	// Attributes that do not apply are left out, as Reverb does (issue 12;
	// internal/httpapi's TestQueryAttributesAnswerAsReverb has every case).
	if st, v = get("/channels/orders", map[string][]string{"info": {"user_count"}}); st != 200 || fmt.Sprint(v) != "map[occupied:true]" {
		t.Fatalf("user_count on a public channel: %d %v", st, v)
	}
	st, v = get("/channels/presence-lobby", map[string][]string{"info": {"subscription_count,user_count"}})
	if st != 200 || fmt.Sprint(v) != "map[occupied:true user_count:2]" {
		t.Fatalf("subscription_count,user_count on presence: %d %v", st, v)
	}
	if st, _ = get("/channels/orders/users", nil); st != 400 {
		t.Fatalf("users of a public channel: %d", st)
	}
	st, v = get("/channels", nil)
	chans, _ := v["channels"].(map[string]any)
	if st != 200 || len(chans) != 3 {
		t.Fatalf("channels: %d %v", st, v)
	}
	st, v = get("/channels", map[string][]string{"filter_by_prefix": {"presence-"}, "info": {"user_count"}})
	if st != 200 || fmt.Sprint(v["channels"]) != "map[presence-lobby:map[user_count:2]]" {
		t.Fatalf("presence channels: %d %v", st, v)
	}
	st, v = get("/channels", map[string][]string{"info": {"user_count,subscription_count"}})
	if st != 200 || fmt.Sprint(v["channels"]) != "map[orders:map[subscription_count:2] other:map[subscription_count:1] presence-lobby:map[user_count:2]]" {
		t.Fatalf("user_count without a presence prefix: %d %v", st, v)
	}
	st, v = get("/connections", nil)
	if st != 200 || v["connections"] != float64(2) {
		t.Fatalf("connections: %d %v", st, v)
	}
	body := []byte(`{"name":"e","data":"d","channels":["orders","presence-lobby"],"info":"subscription_count,user_count"}`)
	r := tc.apiB.Do(http.MethodPost, "/events", body, nil)
	if r.Status != 200 || string(r.Body) != `{"channels":{"orders":{"subscription_count":2},"presence-lobby":{"user_count":2}}}` {
		t.Fatalf("trigger info: %d %s", r.Status, r.Body)
	}
}

func TestOriginsAndConnectionQuota(t *testing.T) {
	limited := config.App{ID: "444", Key: "key-limited", Secret: "secret-limited", MaxConnections: 2,
		AllowedOrigins: []string{"*.example.com"}}
	tc := startCluster(t, limited)
	dial := func(addr, origin string) *pushertest.Client {
		return pushertest.DialWith(t, addr, "/app/"+limited.Key, ws.HandshakeHeaderHTTP(http.Header{"Origin": {origin}}))
	}
	bad := dial(tc.a.Addr().String(), "https://evil.test")
	bad.ExpectError(protocol.CodeUnauthorized)
	bad.ExpectClose(protocol.CodeUnauthorized)
	apex := dial(tc.a.Addr().String(), "https://example.com")
	apex.ExpectError(protocol.CodeUnauthorized)

	one := dial(tc.a.Addr().String(), "https://app.example.com")
	one.Expect(protocol.EventConnectionEstablished)
	two := dial(tc.b.Addr().String(), "https://app.example.com")
	two.Expect(protocol.EventConnectionEstablished)
	three := dial(tc.b.Addr().String(), "https://app.example.com")
	three.ExpectError(protocol.CodeOverQuota)
	three.ExpectClose(protocol.CodeOverQuota)
	// A slot frees when a connection leaves.
	one.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dial(tc.a.Addr().String(), "https://app.example.com")
		m, err := c.Read(5 * time.Second)
		if err == nil && m.Event == protocol.EventConnectionEstablished {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed: %s %v", m.Raw, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSubscriptionCountEvents(t *testing.T) {
	counted := config.App{ID: "555", Key: "key-counted", Secret: "secret-counted", SubscriptionCount: true}
	tc := startCluster(t, counted, app1)
	count := func(c *pushertest.Client) int {
		t.Helper()
		m := c.Expect(protocol.EventSubscriptionCount)
		var d struct {
			N int `json:"subscription_count"`
		}
		if err := m.DataObject(&d); err != nil {
			t.Fatalf("subscription_count %s", m.Raw)
		}
		return d.N
	}
	a := pushertest.Connect(t, tc.a.Addr().String(), counted.Key)
	a.Subscribe("room")
	if n := count(a); n != 1 {
		t.Fatalf("count %d, want 1", n)
	}
	b := pushertest.Connect(t, tc.b.Addr().String(), counted.Key)
	b.Subscribe("room")
	// Both see the count reach 2, across gateways.
	for _, c := range []*pushertest.Client{a, b} {
		for n := count(c); n != 2; n = count(c) {
		}
	}
	b.Close()
	if n := count(a); n != 1 {
		t.Fatalf("after a leave, count %d, want 1", n)
	}
	// Apps that did not turn it on get no count.
	plain := pushertest.Connect(t, tc.a.Addr().String(), app1.Key)
	plain.Subscribe("room")
	plain.ExpectSilence(500 * time.Millisecond)
}
