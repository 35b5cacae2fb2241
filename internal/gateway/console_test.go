package gateway

import (
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

// entries is a Console that watches every app and keeps what it is given.
type entries struct {
	mu  sync.Mutex
	got []wire.ConsoleEntry
}

func (e *entries) Watching(string) bool { return true }
func (e *entries) Record(_ string, en wire.ConsoleEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, en)
}

// consoleServer is just enough of a gateway for its figures and console.
func consoleServer(c Console) (*Server, *conn, *channel) {
	app := &config.App{ID: "1", Key: "k", Secret: "s"}
	apps, _ := config.NewApps([]config.App{*app})
	app, _ = apps.ByID("1")
	s := &Server{log: zerolog.Nop(), stats: map[string]*appStat{}, epoch: time.Now()}
	s.opts.Apps, s.opts.Console = apps, c
	s.prom = metrics.NewGateway(metrics.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 })
	s.stats["1"] = &appStat{conns: s.prom.Connections.WithLabelValues("1")}
	s.hub = newHub(nil, nil, 0)
	cn := &conn{app: app, sidA: 12, sidB: 34}
	ch := &channel{app: app, name: "presence-room", subject: "s", index: map[*conn]int{}}
	return s, cn, ch
}

// Nobody watching, the console's call sites on the connection and
// subscription paths build nothing and allocate nothing: they count. (A
// server close also counts resound_errors_total, as it did before.)
func TestConsoleUnwatchedAllocatesNothing(t *testing.T) {
	s, c, ch := consoleServer(console.New(console.Options{Apps: []string{"1"}}))
	member := &protocol.PresenceMember{ID: "u1"}
	subs := []chanSub{{ch: ch, member: member}}
	msg := protocol.ClientMessage{Event: "client-typing", Channel: ch.name, HasChannel: true, Data: []byte(`{"x":1}`)}
	n := testing.AllocsPerRun(1000, func() {
		s.noteJoined(c, ch, member)
		s.noteClientEvent(c, msg, "u1")
		s.noteLeft(c, subs)
		s.noteClosing(c, 1000, "", true)
		s.noteDestroyed(c)
	})
	if n != 0 {
		t.Fatalf("%v allocations per connection's life, unwatched", n)
	}
	st := s.Stats("")["1"]
	if st.Subscriptions != 0 || st.PresenceMembers != 0 || st.MessagesIn < 1000 || st.Errors != 0 {
		t.Fatalf("figures: %+v", st)
	}
}

func TestConsoleEntries(t *testing.T) {
	rec := &entries{}
	s, c, ch := consoleServer(rec)
	s.stats["1"].connections.Add(1)
	s.noteJoined(c, ch, &protocol.PresenceMember{ID: "u1"})
	s.noteClientEvent(c, protocol.ClientMessage{Event: "client-typing", Channel: ch.name, Data: []byte(`{"typing":true}`)}, "u1")
	s.APITriggered(c.app, []protocol.Trigger{{Name: "Order", Data: `{"id":1}`, Channels: []string{"a", "b", "c", "d", "e"}}})
	s.sendErrorStats(c)
	s.noteClosing(c, protocol.CodeUnauthorized, "Connection terminated by server", false)
	s.noteLeft(c, []chanSub{{ch: ch, member: &protocol.PresenceMember{ID: "u1"}}})
	s.noteDestroyed(c)
	want := []wire.ConsoleEntry{
		{Kind: wire.ConsoleSubscribed, SocketID: "12.34", Channel: "presence-room", UserID: "u1"},
		{Kind: wire.ConsoleClientEvent, SocketID: "12.34", Channel: "presence-room", Event: "client-typing", UserID: "u1", Detail: `{"typing":true}`},
		{Kind: wire.ConsoleAPIMessage, Channel: "a, b, c (+2 more)", Event: "Order", Detail: `{"id":1}`},
		{Kind: wire.ConsoleError, SocketID: "12.34", Event: protocol.EventError, Channel: "private-x", Detail: "4009 Connection is unauthorized"},
		{Kind: wire.ConsoleError, SocketID: "12.34", Event: protocol.EventError, Detail: "4009 Connection terminated by server"},
		{Kind: wire.ConsoleUnsubscribed, SocketID: "12.34", Channel: "presence-room", UserID: "u1"},
		{Kind: wire.ConsoleDisconnection, SocketID: "12.34", Detail: "4009 Connection terminated by server"},
	}
	if len(rec.got) != len(want) {
		t.Fatalf("entries:\n%+v\nwant\n%+v", rec.got, want)
	}
	for i := range want {
		if rec.got[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, rec.got[i], want[i])
		}
	}
	st := s.Stats("1")["1"]
	if st.MessagesIn != 2 || st.Errors != 2 || st.Connections != 0 || st.Subscriptions != 0 {
		t.Fatalf("figures: %+v", st)
	}
	// A connection that vanishes without a close says so.
	rec.got = nil
	s.noteDestroyed(c)
	if len(rec.got) != 1 || rec.got[0].Detail != "connection lost" {
		t.Fatalf("lost connection: %+v", rec.got)
	}
}

// sendErrorStats is subscriptionRefused's accounting without a socket to
// write to.
func (s *Server) sendErrorStats(c *conn) {
	s.errorSent(c.app, c, protocol.CodeUnauthorized, "Connection is unauthorized", "private-x")
}
