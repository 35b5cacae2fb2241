package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

// realServer runs a real gateway, in process, on an embedded JetStream
// with one app.
func realServer(t *testing.T, app config.App) (*Server, string) {
	t.Helper()
	return realServerWith(t, app, nil)
}

// realServerWith is realServer with options of the test's own (set makes
// them).
func realServerWith(t *testing.T, app config.App, set func(*Options)) (*Server, string) {
	t.Helper()
	nc, js := natstest.JetStream(t, "review")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stores, err := cluster.Ensure(ctx, js, cluster.Options{GatewayTTL: 15 * time.Second, CacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if app.MaxMessageSize == 0 {
		app.MaxMessageSize = 10000
	}
	if app.ClientEventRateLimit == 0 {
		app.ClientEventRateLimit = 10
	}
	if app.MaxUserConnections == 0 {
		app.MaxUserConnections = 100
	}
	app.PingInterval = config.Seconds(60 * time.Second)
	app.ActivityTimeout = config.Seconds(30 * time.Second)
	apps, err := config.NewApps([]config.App{app})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Apps: apps, Conn: nc, Stores: stores, GatewayID: "gw-review",
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)}
	if set != nil {
		set(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(sctx, ln, http.NotFoundHandler()); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	for !s.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	return s, ln.Addr().String()
}

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

type rawClient struct {
	c   net.Conn
	sid string
}

func dialRaw(t *testing.T, addr, key string) *rawClient {
	t.Helper()
	conn, br, _, err := ws.Dial(context.Background(), "ws://"+addr+"/app/"+key+"?protocol=7")
	if err != nil {
		t.Fatal(err)
	}
	if br != nil { // bytes that came with the upgrade response
		conn = bufferedConn{conn, io.MultiReader(br, conn)}
	}
	t.Cleanup(func() { _ = conn.Close() })
	b, err := wsutil.ReadServerText(conn)
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Data string }
	var d struct {
		SocketID string `json:"socket_id"`
	}
	_ = json.Unmarshal(b, &m)
	_ = json.Unmarshal([]byte(m.Data), &d)
	if d.SocketID == "" {
		t.Fatalf("no socket id in %s", b)
	}
	return &rawClient{c: conn, sid: d.SocketID}
}

func (r *rawClient) send(t *testing.T, s string) {
	t.Helper()
	if err := wsutil.WriteClientText(r.c, []byte(s)); err != nil {
		t.Fatal(err)
	}
}

// With subscription_count on, every join and leave changes a channel's
// count, and each count costs a compare-and-set. A client subscribing and
// unsubscribing a ready public channel in a loop (the poller's fast path,
// which needs no admission) must not queue work faster than the lanes
// work it: at most one count update per channel waits at a time, and
// releasing a joined channel is done on the poller. Otherwise the lane's
// backlog grows with the client's send rate, and every connection sharing
// that lane has its subscriptions and client events refused meanwhile.
// (Found by a second reading of the change, as a failing test.)
func TestChurnOnOneChannelCannotFillALane(t *testing.T) {
	app := config.App{ID: "9", Key: "k9", Secret: "s9", SubscriptionCount: true}
	s, addr := realServer(t, app)
	first := dialRaw(t, addr, app.Key)
	first.send(t, `{"event":"pusher:subscribe","data":{"channel":"room"}}`)
	if _, err := wsutil.ReadServerText(first.c); err != nil { // subscription_succeeded
		t.Fatal(err)
	}
	go func() { // keep reading, so first is not cut off
		for {
			if _, err := wsutil.ReadServerText(first.c); err != nil {
				return
			}
		}
	}()
	att := dialRaw(t, addr, app.Key)
	go func() {
		for {
			if _, err := wsutil.ReadServerText(att.c); err != nil {
				return
			}
		}
	}()
	pair := []byte(`{"event":"pusher:subscribe","data":{"channel":"room"}}`)
	unsub := []byte(`{"event":"pusher:unsubscribe","data":{"channel":"room"}}`)
	var buf []byte
	for i := 0; i < 100; i++ {
		buf = buf[:0]
		for j := 0; j < 100; j++ {
			buf = append(buf, clientTextFrame(pair)...)
			buf = append(buf, clientTextFrame(unsub)...)
		}
		if _, err := att.c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	subject := s.hub.lookup(routeSubject(app.ID, "room"))
	if subject == nil {
		t.Fatal("no channel")
	}
	peak, refused := int64(0), false
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		peak = max(peak, s.lanes.queued.Load())
		// A bystander on the channel's lane subscribing or sending a
		// client event meanwhile.
		refused = refused || !s.lanes.try(hashSubject(s, subject.subject), nil, func(context.Context) {})
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("peak queued work %d (laneBacklog %d); try on the channel's lane refused: %v", peak, laneBacklog, refused)
	if peak > 4*laneBacklog {
		t.Errorf("one client's 10000 subscribe/unsubscribe pairs left %d pieces of work queued, past any backlog bound", peak)
	}
	if refused {
		t.Errorf("a bystander sharing the channel's lane is refused (503) because of another client's churn")
	}
}

func clientTextFrame(p []byte) []byte {
	f := ws.NewTextFrame(append([]byte(nil), p...))
	f = ws.MaskFrameInPlace(f)
	b, err := ws.CompileFrame(f)
	if err != nil {
		panic(fmt.Sprint(err))
	}
	return b
}

func routeSubject(appID, name string) string { return route.Subject(appID, name) }

func hashSubject(s *Server, subject string) uint64 { return maphash.String(s.hub.seed, subject) }

func (r *rawClient) presence(t *testing.T, app config.App, channel, user string, subscribe bool) {
	t.Helper()
	if !subscribe {
		r.send(t, fmt.Sprintf(`{"event":"pusher:unsubscribe","data":{"channel":%q}}`, channel))
		return
	}
	cd := fmt.Sprintf(`{"user_id":%q,"user_info":{}}`, user)
	auth := app.Key + ":" + protocol.Sign(app.Secret, r.sid+":"+channel+":"+cd)
	b, _ := json.Marshal(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": channel, "auth": auth, "channel_data": cd}})
	r.send(t, string(b))
}

// expect reads until a message whose event is ev, returning everything read.
func (r *rawClient) expect(t *testing.T, ev string) []string {
	t.Helper()
	var seen []string
	_ = r.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		b, err := wsutil.ReadServerText(r.c)
		if err != nil {
			t.Fatalf("waiting for %s: %v (read %v)", ev, err, seen)
		}
		seen = append(seen, string(b))
		var m struct{ Event string }
		_ = json.Unmarshal(b, &m)
		if m.Event == ev {
			return seen
		}
	}
}

func (r *rawClient) sidA(t *testing.T) uint64 {
	a, _, ok := parseSocketID([]byte(r.sid))
	if !ok {
		t.Fatal("bad socket id", r.sid)
	}
	return a
}

// A connection whose presence join was the user's first, but whose
// subscription is cancelled while being prepared, must still announce
// member_added: if another connection of the same user joined meanwhile
// (not first, so it announces nothing) and the cancelled one's leave is
// not the user's last, nobody else would, and the channel's other members
// would never learn the user is there, then get a member_removed for a
// user they never saw added. (Found by a second reading, as a failing
// test.)
func TestCancelledFirstJoinStillAnnouncesTheMember(t *testing.T) {
	app := config.App{ID: "8", Key: "k8", Secret: "s8"}
	s, addr := realServer(t, app)
	const ch = "presence-room"
	obs := dialRaw(t, addr, app.Key)
	obs.presence(t, app, ch, "observer", true)
	obs.expect(t, "pusher_internal:subscription_succeeded")

	a := dialRaw(t, addr, app.Key)
	b := dialRaw(t, addr, app.Key)
	for a.sidA(t)%laneCount == b.sidA(t)%laneCount {
		b = dialRaw(t, addr, app.Key)
	}
	gate1, gate2 := make(chan struct{}), make(chan struct{})
	s.lanes.must(a.sidA(t), nil, func(context.Context) { <-gate1 })
	a.presence(t, app, ch, "u", true)
	a.presence(t, app, ch, "u", false) // cancels while preparing
	a.send(t, `{"event":"pusher:ping","data":{}}`)
	a.expect(t, "pusher:pong") // the poller has handled both
	s.lanes.must(a.sidA(t), nil, func(context.Context) { <-gate2 })
	close(gate1) // a's join runs (the user's first); its undo queues behind gate2

	b.presence(t, app, ch, "u", true) // the same user, another connection
	b.expect(t, "pusher_internal:subscription_succeeded")
	close(gate2) // a's undo: not the user's last connection, so no member_removed

	b.presence(t, app, ch, "u", false) // the user's last connection leaves
	seen := obs.expect(t, "pusher_internal:member_removed")
	added := false
	for _, m := range seen {
		if strings.Contains(m, "member_added") {
			added = true
		}
	}
	if !added {
		t.Errorf("the observer got member_removed for u without ever getting member_added: %v", seen)
	}
}
