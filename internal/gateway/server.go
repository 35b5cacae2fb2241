// Package gateway is the WebSocket side of Resound: on the sockets a
// reactor holds (internal/reactor: epoll on Linux, kqueue on macOS and the
// BSDs, without a goroutine or buffers per idle connection, or a portable
// one on net.Conn anywhere else), it speaks the Pusher protocol
// (sessions.go is where the two meet), and writes the frames the workers
// encoded to every local subscriber. Plain HTTP requests on the
// same port go to the HTTP API handler, as they do in Reverb.
package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cache"
	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/counts"
	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/internal/users"
	"github.com/resoundhq/resound/protocol"
)

// Options configure a Server.
type Options struct {
	Apps *config.Apps
	// Stores is the state shared by all gateways: presence, signed-in
	// users, counts and cached events.
	Stores *cluster.Stores
	// GatewayID names this gateway in the shared state.
	GatewayID string
	// Conn carries deliveries from the workers.
	Conn       *nats.Conn
	PathPrefix string
	// PongTimeout is how long a client may take to answer a server ping.
	PongTimeout time.Duration
	// MaxOutbound bounds the output queued for one client that is not
	// reading; past it the client is cut off.
	MaxOutbound int
	// MaxOutboundTotal bounds the output queued for all clients together;
	// a write that would pass it cuts off the client it was for.
	MaxOutboundTotal int64
	// MaxChannels bounds the channels one connection may be on or
	// subscribing to.
	MaxChannels int
	// HandshakeTimeout bounds the time from accept to a complete request
	// head: the upgrade, or the first HTTP request.
	HandshakeTimeout time.Duration
	// MaxRequestHead bounds the request line and headers, in bytes.
	MaxRequestHead int
	// MaxHandshakes bounds the handshakes in progress at once: the
	// sockets waiting for their request head, waiting for a handshake
	// worker, or on one. It is the bound of the handshake queue.
	MaxHandshakes int
	// HandshakeWorkers is how many goroutines run handshakes (0: four per
	// GOMAXPROCS). A socket gets one only once its whole request head has
	// come (handshake.go), so a slow client does not hold one.
	HandshakeWorkers int
	// MaxHTTPConnections bounds the plain HTTP connections open at once.
	MaxHTTPConnections int
	// MaxConnectionsPerIP bounds the open connections of one client
	// address; 0 is no bound.
	MaxConnectionsPerIP int
	// TrustedProxies are the load balancers whose X-Forwarded-For or
	// PROXY header names the client.
	TrustedProxies config.CIDRs
	// ProxyProtocol: connections from trusted proxies start with a PROXY
	// protocol header.
	ProxyProtocol bool
	// FlushTimeout bounds the wait for new delivery subscriptions to reach
	// NATS.
	FlushTimeout time.Duration
	// DrainWindow spreads the 4200 "reconnect" closes of a stopping
	// gateway over this long, so that its clients do not all land on the
	// other gateways at once. Zero closes them all at once.
	DrainWindow time.Duration
	// Reactor is the socket layer: ReactorAuto (the default: epoll on
	// Linux, kqueue on macOS and the BSDs, portable elsewhere),
	// ReactorEpoll, ReactorKqueue or ReactorPortable (RESOUND_REACTOR).
	Reactor     string
	Pollers     int
	Dispatchers int
	// DispatchQueue is how many deliveries may wait for each dispatcher;
	// past it, NATS drops them as a slow consumer (and the gateway catches
	// up from the history).
	DispatchQueue int
	// History keeps the recent deliveries: gateways catch up from it
	// after a gap, and clients resume from it. Nil turns both off.
	History *history.History
	// HistoryTTL is how long the history keeps deliveries.
	HistoryTTL time.Duration
	// GatewayTTL is how long after its last heartbeat a gateway counts
	// as dead (RESOUND_GATEWAY_TTL).
	GatewayTTL time.Duration
	// Local: the process's workers hand every delivery to this gateway
	// (all-in-one), so it subscribes to no delivery subject in NATS, and
	// has no gap to catch up with.
	Local bool
	// TLS, when set, makes the port serve wss:// and https:// (tls.go).
	TLS *tls.Config
	// Registry is where the gateway registers its metrics (Metrics); nil
	// keeps them unexported.
	Registry *metrics.Registry
	// Webhooks takes the webhook records of the transitions this gateway
	// makes (webhooks.go); nil records none.
	Webhooks WebhookRecorder
	// Console, when set, gets the debug console's entries (console.go).
	Console Console
	Log     zerolog.Logger
}

func (o *Options) defaults() {
	if o.PongTimeout <= 0 {
		o.PongTimeout = 30 * time.Second
	}
	if o.MaxOutbound <= 0 {
		o.MaxOutbound = 1 << 20
	}
	if o.MaxOutboundTotal <= 0 {
		o.MaxOutboundTotal = 256 << 20
	}
	if o.MaxChannels <= 0 {
		o.MaxChannels = 1000
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.MaxRequestHead <= 0 {
		o.MaxRequestHead = 16 << 10
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = 2048
	}
	if o.HandshakeWorkers <= 0 {
		o.HandshakeWorkers = 4 * runtime.GOMAXPROCS(0)
	}
	if o.MaxHTTPConnections <= 0 {
		o.MaxHTTPConnections = 1024
	}
	if o.GatewayTTL <= 0 {
		o.GatewayTTL = 15 * time.Second
	}
	if o.FlushTimeout <= 0 {
		o.FlushTimeout = 5 * time.Second
	}
	if o.Pollers <= 0 {
		o.Pollers = runtime.GOMAXPROCS(0)
	}
	if o.Dispatchers <= 0 {
		o.Dispatchers = runtime.GOMAXPROCS(0)
	}
	if o.DispatchQueue <= 0 {
		o.DispatchQueue = 1 << 16
	}
}

// Server is one gateway.
type Server struct {
	opts Options
	log  zerolog.Logger
	hub  *hub
	// rx is the socket layer: the pollers, their sockets, and the output
	// budget.
	rx      *reactor.Reactor
	ready   atomic.Bool
	frames  struct{ ping, pong []byte }
	metrics struct {
		connections   atomic.Int64
		subscriptions atomic.Int64
	}
	prom      *metrics.Gateway
	limitLogs limitLoggers
	// epoch is when the gateway started: connections keep times as ticks
	// from it.
	epoch    time.Time
	dispatch []chan *nats.Msg
	// replays carry catch-up's replays and releases to each dispatcher.
	replays []chan replayItem
	catchup *catchup // nil when there is nothing to catch up with
	// lastEmpty is when each dispatcher last found its queue empty (unix
	// nanos), and disconnectedAt when the NATS link last broke: where the
	// callbacks that ask for catch-ups start.
	lastEmpty      []atomic.Int64
	disconnectedAt atomic.Int64
	history        *history.History
	httpConns      *connListener

	presence *presence.Store
	users    *users.Store
	counts   *counts.Store
	cache    *cache.Store
	// sweeper drives the stores' sweeps after gateways that are gone.
	sweeper *cluster.Sweeper
	// slots count connections of the apps with max_connections; built by
	// New, only read after.
	slots      map[string]*slotBatcher
	stats      map[string]*appStat
	baseCtx    context.Context
	cancelBase context.CancelFunc
	lanes      *asyncLanes
	retryLog   zerolog.Logger
	// control owns the control subscriptions (terminate, query, ready,
	// watched users' states) and dispatches them to the gateway.
	control *controlPlane

	// Handshake admission: handshakes in progress, plain HTTP connections
	// open, connections per client address, and the goroutines finishing
	// refused sockets.
	handshakes atomic.Int64
	storm      stormTrim
	httpOpen   atomic.Int64
	perIP      *ipLimiter
	rejecting  chan struct{}
	watchers   watchers
	// cacheMisses de-duplicates cache_miss webhooks.
	cacheMisses cacheMisses
	// handshakePool recycles handshakes, reader and all: a connect storm
	// makes next to no garbage.
	handshakePool sync.Pool
	// headReaders are the handshakes' head parsers, one per handshake
	// running (on a worker, or a TLS one's goroutine).
	headReaders sync.Pool
	// heads reads new sockets' request heads as their bytes come, without
	// a goroutine per socket (on epoll); handshakeQueue takes the sockets
	// whose head is in to the handshake workers. It holds at most
	// MaxHandshakes, since every handshake in it is counted in handshakes.
	heads          *reactor.Readiness
	handshakeQueue chan *handshake
	// writers take chunks of large channels' fan-out, one queue each.
	writers []chan fanoutTask
	// closes keep watched connections' close codes for the console.
	closes closeNotes
}

// New builds a gateway; Serve runs it.
func New(opts Options) (*Server, error) {
	opts.defaults()
	if opts.Apps == nil || opts.Conn == nil || opts.Stores == nil || opts.GatewayID == "" {
		return nil, errors.New("gateway: Apps, Conn, Stores and GatewayID are required")
	}
	s := &Server{
		opts:      opts,
		epoch:     time.Now(),
		log:       opts.Log.With().Str("component", "gateway").Str("gateway", opts.GatewayID).Logger(),
		presence:  presence.New(opts.Stores.Presence),
		users:     users.New(opts.Stores.Users),
		counts:    counts.New(opts.Stores.Counts),
		cache:     cache.New(opts.Stores.Cache, opts.Stores.CacheTTL()),
		stats:     map[string]*appStat{},
		slots:     map[string]*slotBatcher{},
		perIP:     newIPLimiter(opts.MaxConnectionsPerIP),
		rejecting: make(chan struct{}, maxRejecting),
	}
	s.lanes = newAsyncLanes(s.recoveredAsync)
	s.handshakePool.New = func() any { return s.newHandshake() }
	s.headReaders.New = func() any { return bufio.NewReaderSize(nil, headBufferSize) }
	s.retryLog = s.log.Sample(&zerolog.BurstSampler{Burst: 1, Period: limitLogPeriod})
	s.watchers.byKey = map[string]map[*conn]struct{}{}
	s.control = newControlPlane(opts.Conn, opts.GatewayID, s, s.recoverNATS, s.log)
	s.limitLogs = newLimitLoggers(s.log)
	reg := opts.Registry
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	s.prom = metrics.NewGateway(reg, s.subscriptionCount, s.channelCount)
	s.sweeper = s.newSweeper()

	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	for _, app := range opts.Apps.All() {
		s.stats[app.ID] = &appStat{conns: s.prom.Connections.WithLabelValues(app.ID)}
		if app.MaxConnections > 0 {
			s.slots[app.ID] = &slotBatcher{srv: s, app: app}
		}
	}
	s.frames.ping = protocol.AppendTextFrame(nil, protocol.MessagePing)
	s.frames.pong = protocol.AppendTextFrame(nil, protocol.MessagePong)
	s.dispatch = make([]chan *nats.Msg, opts.Dispatchers)
	s.replays = make([]chan replayItem, opts.Dispatchers)
	for i := range s.dispatch {
		s.dispatch[i] = make(chan *nats.Msg, opts.DispatchQueue)
		s.replays[i] = make(chan replayItem, 1<<10)
	}
	s.hub = newHub(opts.Conn, s.dispatch, opts.FlushTimeout)
	s.hub.local = opts.Local
	s.history = opts.History
	if opts.History != nil && !opts.Local {
		s.catchup = newCatchup(s, opts.History, max(opts.HistoryTTL, time.Minute))
		s.hub.mark = s.catchup.latest
	}
	s.lastEmpty = make([]atomic.Int64, opts.Dispatchers)
	for i := range s.lastEmpty {
		s.lastEmpty[i].Store(time.Now().UnixNano())
	}
	// One writer per core besides the dispatcher's own share.
	for i := 1; i < runtime.GOMAXPROCS(0); i++ {
		s.writers = append(s.writers, make(chan fanoutTask, 4))
	}
	kind, err := reactor.Resolve(opts.Reactor)
	if err == nil && opts.TLS != nil {
		kind, err = tlsReactor(opts.Reactor)
	}
	if err != nil {
		return nil, err
	}
	s.rx, err = reactor.New(reactor.Config{
		Kind: kind, Pollers: opts.Pollers,
		MaxOutbound: opts.MaxOutbound, MaxOutboundTotal: opts.MaxOutboundTotal,
		Epoch: s.epoch, Handler: &sessions{s: s}, Log: s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s.handshakeQueue = make(chan *handshake, opts.MaxHandshakes)
	return s, nil
}

// Reactor names, as RESOUND_REACTOR and Options.Reactor take them
// (internal/reactor has the socket layer itself).
const (
	ReactorAuto     = reactor.Auto
	ReactorEpoll    = reactor.Epoll
	ReactorKqueue   = reactor.Kqueue
	ReactorPortable = reactor.Portable
)

// Reactor is the socket layer the gateway runs: ReactorEpoll,
// ReactorKqueue or ReactorPortable.
func (s *Server) Reactor() string { return s.rx.Kind() }

// Ready reports whether the gateway accepts connections.
func (s *Server) Ready() bool { return s.ready.Load() }

// Metrics are the gateway's metrics, registered in Options.Registry: the
// HTTP API counts its triggers there too.
func (s *Server) Metrics() *metrics.Gateway { return s.prom }

func (s *Server) subscriptionCount() float64 { return float64(s.metrics.subscriptions.Load()) }
func (s *Server) channelCount() float64      { return float64(s.hub.channelCount()) }

// Channels is the number of channels with local subscribers.
func (s *Server) Channels() int { return s.hub.channelCount() }

// Serve accepts connections on ln until ctx ends, then closes every client
// connection with 4200 (reconnect at once) so that pusher-js moves to
// another gateway straight away. api serves every request on ln that is
// not a WebSocket upgrade on {PathPrefix}/app/{key}, as Reverb's port
// does. It is Serve's rather than New's so that the API can be built
// after the gateway, with the gateway's readiness and metrics, and start-up
// has no forward reference.
func (s *Server) Serve(ctx context.Context, ln net.Listener, api http.Handler) error {
	// The heads wait where the connections will: in epoll with the epoll
	// reactor, on goroutines with the portable one (whose connections
	// each have a reader goroutine anyway).
	heads, err := reactor.NewReadiness(s.rx.Kind())
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	s.heads = heads
	done := make(chan struct{})
	var wg sync.WaitGroup
	s.lanes.run(s.baseCtx, &wg)
	s.rx.Start()
	for i := range s.dispatch {
		wg.Add(1)
		go func() { defer wg.Done(); s.runDispatcher(i, done) }()
	}
	for _, w := range s.writers {
		wg.Add(1)
		go func() { defer wg.Done(); runWriter(w, done) }()
	}
	for range s.opts.HandshakeWorkers {
		wg.Add(1)
		go func() { defer wg.Done(); s.runHandshakes(done) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.control.run(done) }()
	if s.catchup != nil {
		s.watchLink()
		wg.Add(1)
		go func() { defer wg.Done(); s.catchup.run(s.baseCtx) }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				s.hub.sweepIdle(channelLinger)
				if s.storm.due(now, s.handshakes.Load()) {
					go s.trimMemory()
				}
			case <-s.hub.crowded:
				s.hub.sweepIdle(0) // too many idle: drop them all now
			case <-done:
				return
			}
		}
	}()
	if err := s.control.start(); err != nil {
		s.heads.Close()
		close(done)
		wg.Wait()
		return fmt.Errorf("gateway: control subscriptions: %w", err)
	}
	s.httpConns = newConnListener(ln.Addr())
	httpSrv := &http.Server{
		Handler:           s.recoverHTTP(api),
		ReadHeaderTimeout: s.opts.HandshakeTimeout,
		MaxHeaderBytes:    s.opts.MaxRequestHead,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          nil,
	}
	go func() { _ = httpSrv.Serve(s.httpConns) }()

	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		s.acceptLoop(ctx, ln)
	}()
	s.ready.Store(true)
	<-ctx.Done()
	s.ready.Store(false)
	_ = ln.Close()
	<-acceptDone
	// The sockets still waiting for their head are closed by the workers,
	// which run until done.
	s.heads.Close()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutdownCtx)
	s.drain(protocol.CodeReconnect, "Server shutting down, reconnect")
	// Give the close frames a moment to leave, then stop the reactor.
	deadline := time.Now().Add(2 * time.Second)
	for s.metrics.connections.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// Let the shared-state updates of the closed connections (presence
	// leaves, released slots) finish before stopping.
	s.lanes.drain(5 * time.Second)
	s.cancelBase()
	s.control.stop()
	close(done)
	wg.Wait()
	s.rx.Stop()
	s.hub.clear()
	return nil
}

// drain closes every connection with code, spread over the drain window
// in batches every drainTick: a gateway with n clients closes about
// n*drainTick/window of them per tick, and one with few clients is done in
// a few ticks rather than waiting out the window.
func (s *Server) drain(code int, reason string) {
	conns := s.rx.Conns()
	if len(conns) == 0 {
		return
	}
	batch := drainBatch(len(conns), s.opts.DrainWindow)
	s.log.Info().Int("connections", len(conns)).Dur("window", s.opts.DrainWindow).Msg("draining")
	for i := 0; i < len(conns); i += batch {
		if i > 0 {
			time.Sleep(drainTick)
		}
		for _, rc := range conns[i:min(i+batch, len(conns))] {
			sessionOf(rc).closeWith(code, reason)
		}
	}
}

const drainTick = 100 * time.Millisecond

// drainBatch is how many of n connections to close per drainTick so that
// the closes spread over window.
func drainBatch(n int, window time.Duration) int {
	ticks := int(window / drainTick)
	if ticks <= 1 || n == 0 {
		return max(n, 1)
	}
	return (n + ticks - 1) / ticks
}

func (s *Server) acceptLoop(ctx context.Context, ln net.Listener) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors (EMFILE) or similar: wait instead of
			// spinning on a listener that will fail again at once.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			s.prom.AcceptBackoff.Inc()
			s.log.Warn().Err(err).Dur("backoff", backoff).Msg("accept failed")
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		s.admit(nc)
	}
}

// admit starts a new socket's handshake, unless too many are in progress
// (the handshake queue is full) or its address is at its cap. It runs on
// the accept goroutine, so it never waits: the handshake deadline starts
// here, and the socket's request head is read as its bytes come
// (handshake.go) before a handshake worker takes it.
func (s *Server) admit(nc net.Conn) {
	if s.handshakes.Add(1) > int64(s.opts.MaxHandshakes) {
		s.handshakes.Add(-1)
		s.limitHit(metrics.LimitHandshakes, nil)
		s.reject(nc, response503, true)
		return
	}
	s.storm.admitted.Add(1)
	peer := peerAddr(nc)
	trusted := s.opts.TrustedProxies.Contains(peer)
	var slot *ipSlot
	if !trusted {
		// A trusted proxy's connections carry many clients; theirs are
		// counted once the PROXY header or X-Forwarded-For names them.
		var ok bool
		if slot, ok = s.perIP.acquire(peer); !ok {
			s.handshakes.Add(-1)
			s.limitHit(metrics.LimitConnectionsPerIP, nil)
			s.reject(nc, response429, true)
			return
		}
	}
	h := s.handshakePool.Get().(*handshake)
	h.start(nc, trusted, slot)
}

// runHandshakes is a handshake worker: it takes the sockets whose request
// head is in (or whose wait for it ended) off the queue, until done.
func (s *Server) runHandshakes(done <-chan struct{}) {
	for {
		select {
		case h := <-s.handshakeQueue:
			h.step()
		case <-done:
			return
		}
	}
}

// handshakeFailed closes a socket whose handshake went wrong, answering
// what can be answered and counting the bounds that bit.
func (s *Server) handshakeFailed(nc net.Conn, err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errHeadTooLarge):
		s.limitHit(metrics.LimitRequestHead, nil)
		s.reject(nc, response431, false)
	case errors.Is(err, errLineTooLong):
		s.limitHit(metrics.LimitRequestHead, nil)
		s.reject(nc, response414, false)
	case errors.As(err, &ne) && ne.Timeout():
		s.limitHit(metrics.LimitHandshakeTimeout, nil)
		_ = nc.Close()
	case errors.Is(err, proxyproto.ErrNoProxyProtocol), errors.Is(err, proxyproto.ErrCantReadVersion1Header),
		errors.Is(err, proxyproto.ErrLineMustEndWithCrlf):
		s.reject(nc, response400, false)
	default:
		// gobwas has answered a bad upgrade with a 4xx already; anything
		// else is a socket that went away.
		_ = nc.Close()
	}
}

// attach hands an upgraded connection to a poller, whose backend takes
// the socket (an fd backend moves it out of the Go runtime: from then on
// the connection is a few hundred bytes of state).
func (s *Server) attach(nc net.Conn, app *config.App, slot *ipSlot) (*conn, error) {
	p := s.rx.Next()
	c := &conn{app: app, lastSeen: s.ticks(time.Now()), ipSlot: slot}
	if err := p.Open(&c.Conn, nc); err != nil {
		return nil, err
	}
	c.sidA, c.sidB = newSocketID()
	established := protocol.AppendTextFrame(nil,
		protocol.AppendConnectionEstablished(nil, c.socketID(), int(app.ActivityTimeout.Duration()/time.Second)))
	// The socket is new and empty: this write goes out whole, before the
	// poller can deliver anything else.
	c.Write(established)
	s.metrics.connections.Add(1)
	st := s.appStats(app)
	st.conns.Inc()
	st.connections.Add(1)
	if err := p.Add(&c.Conn); err != nil {
		s.metrics.connections.Add(-1)
		st.conns.Dec()
		st.connections.Add(-1)
		return nil, err
	}
	return c, nil
}

// newSocketID draws the two numbers of a socket id. Random, like Reverb's,
// so ids are unique across gateways without coordination.
func newSocketID() (uint64, uint64) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	a := uint64(binary.BigEndian.Uint32(b[:4])%1_000_000_000) + 1
	c := uint64(binary.BigEndian.Uint32(b[4:])%1_000_000_000) + 1
	return a, c
}

// errLineTooLong is a request line longer than the routing buffer.
var errLineTooLong = errors.New("request line too long")

func peekLine(br *bufio.Reader) ([]byte, error) {
	if _, err := br.Peek(1); err != nil {
		return nil, err
	}
	for {
		// Look at everything already read before asking for one byte more:
		// Peek blocks until it has all it was asked for.
		b, _ := br.Peek(br.Buffered())
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return b[:i], nil
		}
		if len(b) >= br.Size() {
			return nil, errLineTooLong
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return nil, err
		}
	}
}

// readHead reads a request's line and headers, up to and including the
// blank line that ends them. The head limiter bounds it.
func readHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil:
			return nil, err
		case len(line) <= 2 && (len(line) == 1 || line[0] == '\r'):
			return head, nil
		}
	}
}

// isWebSocketPath reports whether a request line is "GET {prefix}...".
func isWebSocketPath(line []byte, prefix string) bool {
	rest, ok := bytes.CutPrefix(line, []byte("GET "))
	return ok && bytes.HasPrefix(rest, []byte(prefix))
}

// refuse finishes an upgraded connection that may not stay: a pusher:error
// with the code, then a close frame with the same code. The linger after
// them waits as a refused socket's does (admission.go), not on the
// handshake worker: a refused client that keeps its socket open must not
// hold a worker.
func (s *Server) refuse(nc net.Conn, code int, message string) {
	msg := protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, message))
	msg = protocol.AppendCloseFrame(msg, uint16(code), message)
	s.finishRefused(nc, msg, false)
}

// lingerClose half-closes and waits briefly for the peer to close, so that
// the last frames are read rather than lost to a reset.
func lingerClose(nc net.Conn) {
	// *net.TCPConn, and *tls.Conn, which sends its close_notify first.
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_, _ = io.Copy(io.Discard, io.LimitReader(nc, 64<<10))
	}
	_ = nc.Close()
}
