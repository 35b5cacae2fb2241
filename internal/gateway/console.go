package gateway

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

// What the dashboard sees of a gateway (issue 11): its figures per app,
// answered to wire.Stats (Stats), and the debug console's entries, handed
// to a Console.
//
// The figures are atomic counters bumped where the gateway already does
// the work: a connection, a subscription, a frame batch. The console's
// entries are built only while a dashboard watches the app: every call
// site checks Console.Watching first, one atomic load when nobody does,
// so an unwatched gateway neither builds nor allocates anything for it.

// Console hears what the debug console shows; internal/console implements
// it. Neither method may block: they are called on pollers.
type Console interface {
	// Watching reports whether a dashboard watches the app now.
	Watching(app string) bool
	// Record takes one entry of the app.
	Record(app string, e wire.ConsoleEntry)
}

// appCounters are one app's figures on this gateway (wire.AppStats).
type appCounters struct {
	connections   atomic.Int64
	subscriptions atomic.Int64
	presence      atomic.Int64 // subscriptions to presence channels
	messagesIn    atomic.Int64 // API events and client events accepted
	deliveries    atomic.Int64 // event frames written to sockets
	errors        atomic.Int64 // pusher:error sent, closes with 4xxx
}

// maxDetail is how much of a payload an entry carries before the console
// cuts it to its own bound: enough for that, without copying a 10 KB
// payload to keep 200 bytes of it.
const maxDetail = 256

func detail(b []byte) string { return string(b[:min(len(b), maxDetail)]) }

// watched reports whether the app's console is watched; a gateway
// without a console (tests) never is.
func (s *Server) watched(app *config.App) bool {
	return s.opts.Console != nil && s.opts.Console.Watching(app.ID)
}

// Stats are this gateway's figures for one app, or for every app when
// app is "" (wire.Stats).
func (s *Server) Stats(app string) map[string]wire.AppStats {
	channels := s.hub.channelsPerApp(app)
	out := make(map[string]wire.AppStats)
	for _, a := range s.opts.Apps.All() {
		if app != "" && a.ID != app {
			continue
		}
		st := s.stats[a.ID]
		if st == nil {
			continue
		}
		out[a.ID] = wire.AppStats{
			Connections:     int(st.connections.Load()),
			Channels:        channels[a.ID],
			Subscriptions:   int(st.subscriptions.Load()),
			PresenceMembers: int(st.presence.Load()),
			MessagesIn:      st.messagesIn.Load(),
			DeliveriesOut:   st.deliveries.Load(),
			Errors:          st.errors.Load(),
		}
	}
	return out
}

// channelsPerApp counts the channels with local subscribers (or
// subscriptions on their way) of one app, or of every app.
func (h *hub) channelsPerApp(app string) map[string]int {
	out := map[string]int{}
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, ch := range sh.channels {
			if ch.refs > 0 && (app == "" || ch.app.ID == app) {
				out[ch.app.ID]++
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// APITriggered hears of the events of a trigger JetStream stored (the
// HTTP API's): they count as messages in, and the console shows them.
func (s *Server) APITriggered(app *config.App, events []protocol.Trigger) {
	if st := s.stats[app.ID]; st != nil {
		st.messagesIn.Add(int64(len(events)))
	}
	if !s.watched(app) {
		return
	}
	for _, ev := range events {
		e := wire.ConsoleEntry{Kind: wire.ConsoleAPIMessage, Event: ev.Name, Channel: channelList(ev.Channels),
			Detail: ev.Data[:min(len(ev.Data), maxDetail)]}
		if ev.SocketID != "" {
			e.SocketID = ev.SocketID // the connection excluded (toOthers)
		}
		s.opts.Console.Record(app.ID, e)
	}
}

// channelList names a trigger's channels, the first few of them when
// there are many (Pusher allows 100).
func channelList(chs []string) string {
	const shown = 3
	if len(chs) <= shown {
		return strings.Join(chs, ", ")
	}
	return strings.Join(chs[:shown], ", ") + " (+" + strconv.Itoa(len(chs)-shown) + " more)"
}

// noteConnected records a new connection: h is its handshake, still
// holding the request's origin and forwarded address.
func (s *Server) noteConnected(c *conn, h *handshake) {
	if !s.watched(c.app) {
		return
	}
	addr := peerAddr(h.nc)
	if h.slot != nil {
		addr = h.slot.addr
	} else if len(h.forwarded) > 0 {
		if a, ok := forwardedClient(h.forwarded, s.opts.TrustedProxies); ok {
			addr = a
		}
	}
	d := "ip " + addr.String()
	if !addr.IsValid() {
		d = "ip unknown"
	}
	if len(h.origin) > 0 {
		d += ", origin " + detail(h.origin)
	}
	s.opts.Console.Record(c.app.ID, wire.ConsoleEntry{Kind: wire.ConsoleConnection, SocketID: c.socketID(), Detail: d})
}

// noteClosing counts a close the server decided, and keeps its code and
// reason for the disconnection entry while the app is watched. A close
// with a Pusher code other than 4200 (reconnect, which asks nothing of
// the client but to come back) counts as an error. peer is the client's
// own close, which is no error. It may run on any goroutine.
func (s *Server) noteClosing(c *conn, code int, reason string, peer bool) {
	switch {
	case peer:
	case code >= 4000 && code != protocol.CodeReconnect:
		s.errorSent(c.app, c, code, reason, "")
	default:
		s.prom.Error(code, c.app.ID)
	}
	if !s.watched(c.app) {
		return
	}
	d := strconv.Itoa(code)
	switch {
	case peer:
		d += " closed by the client"
	case reason != "":
		d += " " + reason
	}
	s.closes.keep(c, d)
}

// noteDestroyed counts and records a connection gone.
func (s *Server) noteDestroyed(c *conn) {
	if st := s.stats[c.app.ID]; st != nil {
		st.connections.Add(-1)
	}
	d, closed := s.closes.take(c)
	if !s.watched(c.app) {
		return
	}
	if !closed {
		d = "connection lost"
	}
	s.opts.Console.Record(c.app.ID, wire.ConsoleEntry{Kind: wire.ConsoleDisconnection, SocketID: c.socketID(), Detail: d})
}

// closeNotes keep the close codes and reasons of watched connections
// between their close and their end, for their disconnection entries.
// Closes happen on any goroutine (drains, terminations, catch-ups), so
// this is not the connection's own state, which only its poller touches;
// and it is not a field of conn, whose size is every idle connection's
// cost. Nobody watching, it is empty and take is one atomic load.
type closeNotes struct {
	n  atomic.Int64
	mu sync.Mutex
	m  map[*conn]string
}

// maxCloseNotes bounds the notes kept: a drain of a big gateway while
// watched leaves the rest of its disconnections without their codes.
const maxCloseNotes = 10000

func (cn *closeNotes) keep(c *conn, d string) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.m == nil {
		cn.m = make(map[*conn]string)
	}
	if _, ok := cn.m[c]; ok || len(cn.m) >= maxCloseNotes {
		return // the first close is the one that counts
	}
	cn.m[c] = d
	cn.n.Add(1)
}

func (cn *closeNotes) take(c *conn) (string, bool) {
	if cn.n.Load() == 0 {
		return "", false
	}
	cn.mu.Lock()
	defer cn.mu.Unlock()
	d, ok := cn.m[c]
	if ok {
		delete(cn.m, c)
		cn.n.Add(-1)
	}
	return d, ok
}

// noteJoined counts and records a subscription that has joined ch.
func (s *Server) noteJoined(c *conn, ch *channel, member *protocol.PresenceMember) {
	if st := s.stats[c.app.ID]; st != nil {
		st.subscriptions.Add(1)
		if member != nil {
			st.presence.Add(1)
		}
	}
	if !s.watched(c.app) {
		return
	}
	e := wire.ConsoleEntry{Kind: wire.ConsoleSubscribed, SocketID: c.socketID(), Channel: ch.name}
	if member != nil {
		e.UserID = member.ID
	}
	s.opts.Console.Record(c.app.ID, e)
}

// noteLeft counts and records subscriptions that have left.
func (s *Server) noteLeft(c *conn, subs []chanSub) {
	if st := s.stats[c.app.ID]; st != nil {
		st.subscriptions.Add(-int64(len(subs)))
		for _, cs := range subs {
			if cs.member != nil {
				st.presence.Add(-1)
			}
		}
	}
	if !s.watched(c.app) {
		return
	}
	sid := c.socketID()
	for _, cs := range subs {
		s.opts.Console.Record(c.app.ID, wire.ConsoleEntry{Kind: wire.ConsoleUnsubscribed, SocketID: sid, Channel: cs.ch.name, UserID: cs.userID()})
	}
}

// noteClientEvent counts and records a client event accepted for relay.
func (s *Server) noteClientEvent(c *conn, m protocol.ClientMessage, userID string) {
	if st := s.stats[c.app.ID]; st != nil {
		st.messagesIn.Add(1)
	}
	if !s.watched(c.app) {
		return
	}
	s.opts.Console.Record(c.app.ID, wire.ConsoleEntry{Kind: wire.ConsoleClientEvent, SocketID: c.socketID(),
		Channel: m.Channel, Event: m.Event, UserID: userID, Detail: detail(m.Data)})
}

// errorSent counts an error sent to a client of app (a pusher:error, a
// close with a Pusher code), and hands it to the console, which keeps
// the app's last errors whether or not anyone watches (the dashboard's
// "recent errors"). c is the connection, nil before there is one;
// channel, when set, is the subscription refused.
func (s *Server) errorSent(app *config.App, c *conn, code int, message, channel string) {
	s.prom.Error(code, app.ID)
	if st := s.stats[app.ID]; st != nil {
		st.errors.Add(1)
	}
	if s.opts.Console == nil {
		return
	}
	e := wire.ConsoleEntry{Kind: wire.ConsoleError, Event: protocol.EventError, Channel: channel,
		Detail: strconv.Itoa(code) + " " + message}
	if c != nil {
		e.SocketID = c.socketID()
	}
	s.opts.Console.Record(app.ID, e)
}
