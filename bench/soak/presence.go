package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/protocol"
)

// presenceOptions shape the presence driver.
type presenceOptions struct {
	Targets []attack.Target // the gateways, used in turn
	// Members is how many connections come and go at once.
	Members int
	// Channels is how many presence (and cache) channels they share.
	Channels int
	// Users is how many distinct user ids they take at random, fewer than
	// Members, so that one user often has connections on both gateways
	// and member_added / member_removed go out only for the first and last.
	Users int
	// Life is how long a connection stays, chosen in [Life/2, Life·3/2).
	Life time.Duration
	// EventEvery is how often a member sends a client event: far under
	// the app's client_event_rate_limit of 10 a second.
	EventEvery time.Duration
	// Sources are the client addresses, one per member in turn.
	Sources []string
}

// presenceDriver keeps presence members joining and leaving presence
// channels on every gateway, signing in and out with watchlists, reading
// cache channels and sending client events, so that the presence, users,
// counts and cache buckets see churn from two gateways at once for the
// whole run. It checks what a client can check on the way (its own id in
// the member list, no echo of its own client events, events on presence
// channels carry a user_id) and counts everything else.
type presenceDriver struct {
	o  presenceOptions
	wg sync.WaitGroup

	sessions, signins, joins, leavesClean, leavesAbrupt atomic.Int64
	clientSent, clientRecv, added, removed              atomic.Int64
	cacheEvents, cacheMisses, watchlist, pings          atomic.Int64

	mu sync.Mutex
	// refused counts connections a bound refused (503 while the
	// handshakes bound is held by an attack, 429): expected, not a fault.
	refused map[string]int
	// problems are what no bound explains: a subscription refused, an
	// unexpected pusher:error or close, a rule broken. Any fails the run.
	problems  map[string]int
	examples  []string
	connFails map[string]int // connections that failed otherwise (timeouts on a starved box)
}

func newPresenceDriver(o presenceOptions) *presenceDriver {
	return &presenceDriver{o: o, refused: map[string]int{}, problems: map[string]int{}, connFails: map[string]int{}}
}

func (d *presenceDriver) problem(kind, example string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.problems[kind]++
	if len(d.examples) < 20 {
		d.examples = append(d.examples, kind+": "+example)
	}
}

// start runs the members until ctx ends; wait waits for them to leave.
func (d *presenceDriver) start(ctx context.Context) {
	for i := range d.o.Members {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.member(ctx, i)
		}()
	}
}

func (d *presenceDriver) wait() { d.wg.Wait() }

func (d *presenceDriver) member(ctx context.Context, i int) {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	// Spread the first joins over a life, so that leaves are spread too.
	if !pause(ctx, time.Duration(rng.Int64N(int64(d.o.Life)))) {
		return
	}
	for n := 0; ctx.Err() == nil; n++ {
		t := d.o.Targets[(i+n)%len(d.o.Targets)]
		d.session(ctx, rng, t, d.o.Sources[i%len(d.o.Sources)])
		if !pause(ctx, time.Duration(200+rng.IntN(800))*time.Millisecond) {
			return
		}
	}
}

// session is one connection's life: connect, maybe sign in, join a
// presence channel and maybe a cache channel, send client events, leave
// (cleanly or by dropping the socket).
func (d *presenceDriver) session(ctx context.Context, rng *rand.Rand, t attack.Target, source string) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := t.Connect(cctx, attack.DialOptions{Source: source})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		var se attack.StatusError
		d.mu.Lock()
		if errors.As(err, &se) && (int(se) == http.StatusServiceUnavailable || int(se) == http.StatusTooManyRequests) {
			d.refused[strconv.Itoa(int(se))]++
		} else {
			d.connFails[errKind(err)]++
		}
		d.mu.Unlock()
		return
	}
	d.sessions.Add(1)
	user := "soak-user-" + strconv.Itoa(rng.IntN(d.o.Users))
	s := &session{d: d, c: c, user: user, events: make(chan string, 64), done: make(chan struct{})}
	go s.read()
	defer func() {
		s.closing.Store(true)
		c.Close()
		<-s.done
	}()

	if rng.IntN(2) == 0 {
		watch := []string{"soak-user-" + strconv.Itoa(rng.IntN(d.o.Users)), "soak-user-" + strconv.Itoa(rng.IntN(d.o.Users))}
		ud, _ := json.Marshal(map[string]any{"id": user, "watchlist": watch})
		auth := t.Key + ":" + protocol.Sign(t.Secret, protocol.UserAuthMessage(c.SocketID, string(ud)))
		if s.send(map[string]any{"event": protocol.EventSignin, "data": map[string]any{"auth": auth, "user_data": string(ud)}}) &&
			s.await(ctx, "signin", "signin") {
			d.signins.Add(1)
		}
	}
	presence := "presence-soak-" + strconv.Itoa(rng.IntN(d.o.Channels))
	cd, _ := json.Marshal(map[string]any{"user_id": user, "user_info": map[string]any{"name": user}})
	if !s.send(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{
		"channel": presence, "auth": t.ChannelAuth(c.SocketID, presence, string(cd)), "channel_data": string(cd)}}) ||
		!s.await(ctx, "join "+presence, "ok:"+presence) {
		return
	}
	d.joins.Add(1)
	channels := []string{presence}
	if rng.IntN(2) == 0 {
		cache := "cache-soak-" + strconv.Itoa(rng.IntN(d.o.Channels))
		if s.send(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{"channel": cache}}) &&
			s.await(ctx, "join "+cache, "ok:"+cache) {
			channels = append(channels, cache)
		}
	}

	life := d.o.Life/2 + time.Duration(rng.Int64N(int64(d.o.Life)))
	end := time.Now().Add(life)
	for k := 0; time.Now().Before(end); k++ {
		if !pause(ctx, d.o.EventEvery) || s.failed.Load() {
			return
		}
		if s.send(map[string]any{"event": "client-soak", "channel": presence, "data": map[string]any{"n": k, "from": c.SocketID}}) {
			d.clientSent.Add(1)
		}
	}
	if rng.IntN(2) == 0 {
		for _, ch := range channels {
			s.send(map[string]any{"event": protocol.EventUnsubscribe, "data": map[string]any{"channel": ch}})
		}
		// A ping answered means the server read the unsubscribes first.
		if s.send(map[string]any{"event": protocol.EventPing, "data": map[string]any{}}) {
			s.await(ctx, "pong", "pong")
		}
		d.leavesClean.Add(1)
	} else {
		d.leavesAbrupt.Add(1)
	}
}

// errKind names a connection failure for the counts.
func errKind(err error) string {
	var ce *attack.CloseError
	switch {
	case errors.As(err, &ce):
		return "closed " + strconv.Itoa(ce.Code)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

type session struct {
	d       *presenceDriver
	c       *attack.Conn
	user    string
	events  chan string // what await waits for: "signin", "ok:<channel>", "pong"
	closing atomic.Bool
	failed  atomic.Bool
	done    chan struct{} // closed when read returns
}

func (s *session) send(v any) bool {
	if err := s.c.SendJSON(v); err != nil {
		if !s.closing.Load() {
			s.failed.Store(true)
		}
		return false
	}
	return true
}

// await waits for the reader to see want; a failure is a problem.
func (s *session) await(ctx context.Context, what, want string) bool {
	deadline := time.After(15 * time.Second)
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			s.d.problem("no answer", what+" as "+s.user)
			return false
		case <-s.done:
			return false
		case e := <-s.events:
			if e == want {
				return true
			}
		}
	}
}

func (s *session) signal(e string) {
	select {
	case s.events <- e:
	default:
	}
}

// read handles everything the server sends until the connection ends.
func (s *session) read() {
	defer close(s.done)
	d := s.d
	for {
		m, err := s.c.ReadMessage(time.Hour)
		if err != nil {
			if !s.closing.Load() {
				s.failed.Store(true)
				d.problem("connection lost", fmt.Sprintf("%s: %v", s.user, err))
			}
			return
		}
		switch m.Event {
		case protocol.EventPing:
			d.pings.Add(1)
			s.send(map[string]any{"event": protocol.EventPong, "data": map[string]any{}})
		case protocol.EventPong:
			s.signal("pong")
		case protocol.EventSigninSuccess:
			s.signal("signin")
		case protocol.EventSubscriptionSucceeded:
			if len(m.Channel) > 9 && m.Channel[:9] == "presence-" {
				var p struct {
					Presence struct {
						IDs   []string `json:"ids"`
						Count int      `json:"count"`
					} `json:"presence"`
				}
				if err := m.DataObject(&p); err != nil || !slices.Contains(p.Presence.IDs, s.user) || p.Presence.Count != len(p.Presence.IDs) {
					d.problem("member list", fmt.Sprintf("%s on %s: %s", s.user, m.Channel, m.Raw))
				}
			}
			s.signal("ok:" + m.Channel)
		case protocol.EventSubscriptionError:
			d.problem("subscription refused", string(m.Raw))
		case protocol.EventError:
			d.problem("pusher:error", string(m.Raw))
		case protocol.EventMemberAdded:
			d.added.Add(1)
		case protocol.EventMemberRemoved:
			d.removed.Add(1)
		case protocol.EventCacheMiss:
			d.cacheMisses.Add(1)
		case "client-soak":
			d.clientRecv.Add(1)
			var data struct {
				From string `json:"from"`
			}
			_ = m.DataObject(&data)
			if data.From == s.c.SocketID {
				d.problem("own client event echoed", string(m.Raw))
			}
			if m.UserID == "" {
				d.problem("client event without user_id", string(m.Raw))
			}
		case cacheEvent:
			d.cacheEvents.Add(1)
		case "pusher_internal:watchlist_events":
			d.watchlist.Add(1)
		case protocol.EventSubscriptionCount:
		default:
			d.problem("unexpected event", string(m.Raw))
		}
	}
}

// PresenceResult is the driver's account, for the report.
type PresenceResult struct {
	Members, Channels, Users int
	Sessions, Signins, Joins int64
	LeavesClean, Abrupt      int64
	ClientSent, ClientRecv   int64
	MemberAdded, Removed     int64
	CacheEvents, CacheMisses int64
	Watchlist, Pings         int64
	Refused                  map[string]int
	ConnFailures             map[string]int
	Problems                 map[string]int
	Examples                 []string
}

func (d *presenceDriver) result() PresenceResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	return PresenceResult{
		Members: d.o.Members, Channels: d.o.Channels, Users: d.o.Users,
		Sessions: d.sessions.Load(), Signins: d.signins.Load(), Joins: d.joins.Load(),
		LeavesClean: d.leavesClean.Load(), Abrupt: d.leavesAbrupt.Load(),
		ClientSent: d.clientSent.Load(), ClientRecv: d.clientRecv.Load(),
		MemberAdded: d.added.Load(), Removed: d.removed.Load(),
		CacheEvents: d.cacheEvents.Load(), CacheMisses: d.cacheMisses.Load(),
		Watchlist: d.watchlist.Load(), Pings: d.pings.Load(),
		Refused: clone(d.refused), ConnFailures: clone(d.connFails), Problems: clone(d.problems),
		Examples: append([]string(nil), d.examples...),
	}
}

func clone(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// cacheEvent is what the cache ticker triggers on the cache channels.
const cacheEvent = "soak-cache"

// cacheTicker triggers an event on each cache channel every interval
// through the API, so that the cache bucket holds keys the whole run and
// new subscribers get them; it counts refusals.
func cacheTicker(ctx context.Context, t attack.Target, channels int, every time.Duration, source string) (sent, failed int) {
	api := t.API(source, true)
	var names []string
	for i := range channels {
		names = append(names, "cache-soak-"+strconv.Itoa(i))
	}
	for n := 0; pause(ctx, every); n++ {
		r := api.Trigger(names, cacheEvent, strconv.Itoa(n), "")
		if r.Status == http.StatusOK {
			sent++
		} else {
			failed++
		}
	}
	return sent, failed
}
