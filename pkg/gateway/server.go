// Package gateway is the WebSocket side of Resound: an epoll reactor that
// holds client connections without a goroutine or buffers per idle
// connection, speaks the Pusher protocol on them, and writes the frames the
// workers encoded to every local subscriber. Plain HTTP requests on the
// same port go to the HTTP API handler, as they do in Reverb.
package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/resoundhq/resound/pkg/cluster"
	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/pkg/presence"
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
	Conn *nats.Conn
	// HTTP serves every request that is not a WebSocket upgrade on
	// {PathPrefix}/app/{key}.
	HTTP       http.Handler
	PathPrefix string
	// PongTimeout is how long a client may take to answer a server ping.
	PongTimeout time.Duration
	// MaxOutbound bounds the output queued for one client that is not
	// reading; past it the client is cut off.
	MaxOutbound int
	// HandshakeTimeout bounds the HTTP request and upgrade.
	HandshakeTimeout time.Duration
	// FlushTimeout bounds the wait for new delivery subscriptions to reach
	// NATS.
	FlushTimeout time.Duration
	// DrainWindow spreads the 4200 "reconnect" closes of a stopping
	// gateway over this long, so that its clients do not all land on the
	// other gateways at once. Zero closes them all at once.
	DrainWindow time.Duration
	Pollers     int
	Dispatchers int
	// Metrics receives the gateway's counters; nil keeps them unexported.
	Metrics *metrics.Gateway
	Log     zerolog.Logger
}

func (o *Options) defaults() {
	if o.PongTimeout <= 0 {
		o.PongTimeout = 30 * time.Second
	}
	if o.MaxOutbound <= 0 {
		o.MaxOutbound = 1 << 20
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
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
}

// Server is one gateway.
type Server struct {
	opts    Options
	log     zerolog.Logger
	hub     *hub
	pollers []*poller
	next    atomic.Uint32
	ready   atomic.Bool
	frames  struct{ ping, pong []byte }
	metrics struct {
		connections   atomic.Int64
		subscriptions atomic.Int64
	}
	prom      *metrics.Gateway
	dispatch  []chan *nats.Msg
	httpConns *connListener

	presence    *presence.Store
	stats       map[string]*appStat
	baseCtx     context.Context
	cancelBase  context.CancelFunc
	asyncSem    chan struct{}
	controlSubs []*nats.Subscription
	watchers    watchers
	userStates  chan *nats.Msg
	// readers recycles the handshake's request reader: the WebSocket path
	// is done with it once upgraded.
	readers sync.Pool
	// writers take chunks of large channels' fan-out, one queue each.
	writers []chan fanoutTask
}

// New builds a gateway; Serve runs it.
func New(opts Options) (*Server, error) {
	opts.defaults()
	if opts.Apps == nil || opts.Conn == nil || opts.HTTP == nil || opts.Stores == nil || opts.GatewayID == "" {
		return nil, errors.New("gateway: Apps, Conn, HTTP, Stores and GatewayID are required")
	}
	s := &Server{
		opts:       opts,
		log:        opts.Log.With().Str("component", "gateway").Str("gateway", opts.GatewayID).Logger(),
		presence:   presence.New(opts.Stores.Presence),
		stats:      map[string]*appStat{},
		asyncSem:   make(chan struct{}, maxAsync),
		userStates: make(chan *nats.Msg, 1<<12),
	}
	s.watchers.byKey = map[string]*watchEntry{}
	s.prom = opts.Metrics
	if s.prom == nil {
		s.prom = metrics.NewGateway(metrics.NewRegistry(), s.subscriptionCount, s.channelCount)
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	for _, app := range opts.Apps.All() {
		s.stats[app.ID] = &appStat{conns: s.prom.Connections.WithLabelValues(app.ID)}
	}
	s.frames.ping = protocol.AppendTextFrame(nil, protocol.MessagePing)
	s.frames.pong = protocol.AppendTextFrame(nil, protocol.MessagePong)
	s.dispatch = make([]chan *nats.Msg, opts.Dispatchers)
	for i := range s.dispatch {
		s.dispatch[i] = make(chan *nats.Msg, 1<<16)
	}
	s.hub = newHub(opts.Conn, s.dispatch)
	// One writer per core besides the dispatcher's own share.
	for i := 1; i < runtime.GOMAXPROCS(0); i++ {
		s.writers = append(s.writers, make(chan fanoutTask, 4))
	}
	for i := 0; i < opts.Pollers; i++ {
		p, err := newPoller(s)
		if err != nil {
			return nil, fmt.Errorf("gateway: epoll: %w", err)
		}
		s.pollers = append(s.pollers, p)
	}
	return s, nil
}

// Ready reports whether the gateway accepts connections.
func (s *Server) Ready() bool { return s.ready.Load() }

// NewMetrics registers a gateway's metrics in r; pass the result as
// Options.Metrics. The gauges read the server once it exists.
func NewMetrics(r *metrics.Registry, srv **Server) *metrics.Gateway {
	return metrics.NewGateway(r,
		func() float64 {
			if *srv == nil {
				return 0
			}
			return (*srv).subscriptionCount()
		},
		func() float64 {
			if *srv == nil {
				return 0
			}
			return (*srv).channelCount()
		})
}

func (s *Server) subscriptionCount() float64 { return float64(s.metrics.subscriptions.Load()) }
func (s *Server) channelCount() float64      { return float64(s.hub.channelCount()) }

// Channels is the number of channels with local subscribers.
func (s *Server) Channels() int { return s.hub.channelCount() }

// Serve accepts connections on ln until ctx ends, then closes every client
// connection with 4200 (reconnect at once) so that pusher-js moves to
// another gateway straight away.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range s.pollers {
		wg.Add(1)
		go func() { defer wg.Done(); p.run(done) }()
	}
	for _, d := range s.dispatch {
		wg.Add(1)
		go func() { defer wg.Done(); s.runDispatcher(d, done) }()
	}
	for _, w := range s.writers {
		wg.Add(1)
		go func() { defer wg.Done(); runWriter(w, done) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.runUserStates(done) }()
	if err := s.subscribeControl(); err != nil {
		close(done)
		wg.Wait()
		return fmt.Errorf("gateway: control subscriptions: %w", err)
	}
	s.httpConns = newConnListener(ln.Addr())
	httpSrv := &http.Server{
		Handler:           s.opts.HTTP,
		ReadHeaderTimeout: s.opts.HandshakeTimeout,
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
	for i := 0; i < maxAsync; i++ {
		select {
		case s.asyncSem <- struct{}{}:
		case <-time.After(5 * time.Second):
			i = maxAsync
		}
	}
	s.cancelBase()
	for _, sub := range s.controlSubs {
		_ = sub.Unsubscribe()
	}
	close(done)
	for _, p := range s.pollers {
		p.wake()
	}
	wg.Wait()
	for _, p := range s.pollers {
		p.mu.Lock()
		for fd, c := range p.conns {
			c.mu.Lock()
			c.state = stateDead
			_ = unix.Close(fd)
			c.mu.Unlock()
		}
		p.conns = map[int]*conn{}
		p.mu.Unlock()
		_ = unix.Close(p.epfd)
		_ = unix.Close(p.wakefd)
	}
	s.hub.clear()
	return nil
}

// drain closes every connection with code, spread over the drain window
// in batches every drainTick: a gateway with n clients closes about
// n*drainTick/window of them per tick, and one with few clients is done in
// a few ticks rather than waiting out the window.
func (s *Server) drain(code int, reason string) {
	var conns []*conn
	for _, p := range s.pollers {
		p.mu.RLock()
		for _, c := range p.conns {
			conns = append(conns, c)
		}
		p.mu.RUnlock()
	}
	if len(conns) == 0 {
		return
	}
	batch := drainBatch(len(conns), s.opts.DrainWindow)
	s.log.Info().Int("connections", len(conns)).Dur("window", s.opts.DrainWindow).Msg("draining")
	for i := 0; i < len(conns); i += batch {
		if i > 0 {
			time.Sleep(drainTick)
		}
		for _, c := range conns[i:min(i+batch, len(conns))] {
			c.closeWith(code, reason)
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
		go s.handshake(nc)
	}
}

// handshake reads the request line to route the connection: a WebSocket
// upgrade on {prefix}/app/{key} is upgraded here with gobwas/ws, reading
// the request straight off the socket; anything else goes to net/http.
func (s *Server) handshake(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	br, _ := s.readers.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(nc, 2048)
	} else {
		br.Reset(nc)
	}
	line, err := peekLine(br)
	if err != nil {
		s.putReader(br)
		_ = nc.Close()
		return
	}
	if !isWebSocketPath(line, s.opts.PathPrefix+"/app/") {
		_ = nc.SetDeadline(time.Time{})
		s.httpConns.push(&bufferedConn{Conn: nc, r: br})
		return
	}
	var key, origin string
	up := ws.Upgrader{
		OnHeader: func(k, v []byte) error {
			if origin == "" && bytes.EqualFold(k, []byte("Origin")) {
				origin = string(v)
			}
			return nil
		},
		OnRequest: func(uri []byte) error {
			path := uri
			if i := bytes.IndexByte(path, '?'); i >= 0 {
				path = path[:i]
			}
			k := path[len(s.opts.PathPrefix)+len("/app/"):]
			if len(k) == 0 || bytes.IndexByte(k, '/') >= 0 {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound))
			}
			key = string(k)
			return nil
		},
	}
	_, err = up.Upgrade(struct {
		io.Reader
		io.Writer
	}{br, nc})
	s.putReader(br)
	if err != nil {
		_ = nc.Close()
		return
	}
	s.prom.Handshakes.Inc()
	app, ok := s.opts.Apps.ByKey(key)
	if !ok {
		// pusher-js reads the code from the pusher:error, or from the
		// close frame: both say 4001, so it does not retry.
		refuse(nc, protocol.CodeAppNotFound, "Application does not exist")
		return
	}
	if !protocol.OriginAllowed(origin, app.AllowedOrigins) {
		// Reverb sends 4009 but leaves the socket open; Resound closes it.
		s.prom.Error(protocol.CodeUnauthorized, app.ID)
		refuse(nc, protocol.CodeUnauthorized, "Origin not allowed")
		return
	}
	counted := false
	if app.MaxConnections > 0 {
		if err := s.acquireConnectionSlot(app); err != nil {
			if !errors.Is(err, errOverQuota) {
				s.log.Warn().Err(err).Msg("counting connections")
			}
			s.prom.Error(protocol.CodeOverQuota, app.ID)
			refuse(nc, protocol.CodeOverQuota, "Application is over connection quota")
			return
		}
		counted = true
	}
	_ = nc.SetDeadline(time.Time{})
	if err := s.attach(nc, app, counted); err != nil {
		if counted {
			s.releaseConnectionSlot(app)
		}
		s.log.Warn().Err(err).Msg("attaching connection")
		_ = nc.Close()
	}
}

// attach moves an upgraded connection from the Go runtime to the reactor:
// the descriptor is duplicated, the net.Conn (and its runtime poller entry)
// closed, and from then on the connection is a few hundred bytes of state.
func (s *Server) attach(nc net.Conn, app *config.App, counted bool) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if dupErr != nil {
		return dupErr
	}
	_ = nc.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return err
	}
	p := s.pollers[int(s.next.Add(1))%len(s.pollers)]
	c := &conn{fd: fd, poller: p, app: app, lastSeen: time.Now().UnixNano(), countedMax: counted}
	c.sidA, c.sidB = newSocketID()
	established := protocol.AppendTextFrame(nil,
		protocol.AppendConnectionEstablished(nil, c.socketID(), int(app.ActivityTimeout.Duration()/time.Second)))
	// The socket is new and empty: this write goes out whole, before the
	// poller can deliver anything else.
	c.write(established)
	s.metrics.connections.Add(1)
	s.appStats(app).conns.Inc()
	if err := p.add(c); err != nil {
		s.metrics.connections.Add(-1)
		s.appStats(app).conns.Dec()
		_ = unix.Close(fd)
		return err
	}
	return nil
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
			return nil, errors.New("request line too long")
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return nil, err
		}
	}
}

// isWebSocketPath reports whether a request line is "GET {prefix}...".
func isWebSocketPath(line []byte, prefix string) bool {
	rest, ok := bytes.CutPrefix(line, []byte("GET "))
	return ok && bytes.HasPrefix(rest, []byte(prefix))
}

func (s *Server) putReader(br *bufio.Reader) {
	br.Reset(nil)
	s.readers.Put(br)
}

// refuse finishes an upgraded connection that may not stay: a pusher:error
// with the code, then a close frame with the same code.
func refuse(nc net.Conn, code int, message string) {
	msg := protocol.AppendTextFrame(nil, protocol.AppendError(nil, code, message))
	msg = protocol.AppendCloseFrame(msg, uint16(code), message)
	_ = nc.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = nc.Write(msg)
	lingerClose(nc)
}

// lingerClose half-closes and waits briefly for the peer to close, so that
// the last frames are read rather than lost to a reset.
func lingerClose(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		_, _ = io.Copy(io.Discard, io.LimitReader(nc, 64<<10))
	}
	_ = nc.Close()
}
