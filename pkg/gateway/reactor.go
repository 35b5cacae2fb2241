package gateway

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/protocol"
)

// The socket layer.
//
// A poller is one loop that owns a share of the connections: their read
// side and their Pusher state are only ever touched on it, so they need no
// lock. How a poller learns that a socket can be read or written is its
// backend's business, and the backend knows nothing of Pusher or even of
// WebSocket: it hands the poller readiness (fd backends) or bytes
// (portable), and the poller hands bytes to the session code
// (handleBytes). There are three backends, chosen at start-up
// (RESOUND_REACTOR):
//
//   - epoll (Linux, reactor_epoll_linux.go) and kqueue (macOS and the BSDs,
//     reactor_kqueue_bsd.go): the connection's descriptor leaves the Go
//     runtime, is made non-blocking and is watched edge-triggered; an idle
//     connection has no goroutine and no buffer. Both share the descriptor
//     code in reactor_fd.go.
//   - portable (everything, reactor_portable.go): the connection stays a
//     net.Conn, read by a goroutine of its own, and written by a goroutine
//     that exists only while output waits. The only choice on Windows, and
//     forced elsewhere by RESOUND_REACTOR=portable or the resound_portable
//     build tag, so that the test suite runs over it too.
//
// The files are named reactor_* so that the split into a package of its
// own (issue 12, item 3) is a move, not a rewrite: conn's write side
// (state, out, the socket) and these files are the reactor; everything
// else in the package is the session.

// Reactor names, as RESOUND_REACTOR takes them.
const (
	ReactorAuto     = "auto"
	ReactorEpoll    = "epoll"
	ReactorKqueue   = "kqueue"
	ReactorPortable = "portable"
)

// backend is a poller's readiness mechanism. Each poller has its own.
type backend interface {
	// open takes an upgraded socket from the Go runtime and returns the
	// connection that will own it, with only its socket set.
	open(nc net.Conn) (*conn, error)
	// watch starts reporting c's readiness to p; c is in p.conns already.
	watch(p *poller, c *conn) error
	// run reports readiness to p until done is closed.
	run(p *poller, done <-chan struct{})
	// wake makes run look at p's inbox soon.
	wake()
	// close frees the backend's resources once run has returned and every
	// connection's socket is closed.
	close()
}

// resolveReactor turns a RESOUND_REACTOR value into the backend this
// platform will run.
func resolveReactor(kind string) (string, error) {
	switch kind {
	case "", ReactorAuto:
		if forcePortable || nativeReactor == "" {
			return ReactorPortable, nil
		}
		return nativeReactor, nil
	case ReactorPortable:
		return ReactorPortable, nil
	case ReactorEpoll, ReactorKqueue:
		if kind != nativeReactor {
			return "", fmt.Errorf("gateway: reactor %q is not available on this platform (it has %q)", kind, nativeOrNone())
		}
		return kind, nil
	default:
		return "", fmt.Errorf("gateway: unknown reactor %q (auto, epoll, kqueue or portable)", kind)
	}
}

func nativeOrNone() string {
	if nativeReactor == "" {
		return ReactorPortable + " only"
	}
	return nativeReactor + " and " + ReactorPortable
}

func newBackend(kind string) (backend, error) {
	if kind == ReactorPortable {
		return newPortable(), nil
	}
	return newNativeBackend()
}

const (
	scanInterval = time.Second
	// closingGrace is how long a closing connection may take to answer our
	// close frame before we drop it.
	closingGrace = 5 * time.Second
)

// poller is one loop and the connections it owns. Each connection belongs
// to one poller for its whole life; its read side is only ever touched on
// that poller's goroutine (for the portable backend: while holding the
// poller's turn), so it needs no lock.
type poller struct {
	srv *Server
	be  backend

	mu    sync.RWMutex
	conns map[int]*conn // by descriptor (portable: by a number of its own)

	// inbox holds work other goroutines hand to this poller: completions of
	// asynchronous steps that must touch a connection's poller-owned state.
	inboxMu sync.Mutex
	inbox   []func()

	// Touched only on the poller goroutine.
	lastScan time.Time
	now      int64  // unix nanos of this wake-up
	tick     uint32 // the same, in connection ticks
}

func newPoller(srv *Server, kind string) (*poller, error) {
	be, err := newBackend(kind)
	if err != nil {
		return nil, err
	}
	return &poller{srv: srv, be: be, conns: make(map[int]*conn)}, nil
}

// run runs the poller until done is closed.
func (p *poller) run(done <-chan struct{}) { p.be.run(p, done) }

// wake makes the poller look at its inbox.
func (p *poller) wake() { p.be.wake() }

// post runs f on the poller goroutine, soon.
func (p *poller) post(f func()) {
	p.inboxMu.Lock()
	p.inbox = append(p.inbox, f)
	p.inboxMu.Unlock()
	p.wake()
}

// woke starts a turn of the loop: the time, then the work posted.
func (p *poller) woke(now time.Time) {
	p.now = now.UnixNano()
	p.tick = p.srv.ticks(now)
	p.runInbox()
}

// scanDue runs the once-a-second scan when it is due.
func (p *poller) scanDue(now time.Time) {
	if now.Sub(p.lastScan) >= scanInterval {
		p.lastScan = now
		p.scan()
	}
}

func (p *poller) runInbox() {
	p.inboxMu.Lock()
	work := p.inbox
	p.inbox = nil
	p.inboxMu.Unlock()
	for _, f := range work {
		p.runSafely(f)
	}
}

// runSafely runs f, recovering a panic: one piece of work going wrong must
// not stop the poller and every connection on it.
func (p *poller) runSafely(f func()) {
	defer func() {
		if r := recover(); r != nil {
			p.srv.recovered(metrics.PanicPoller, r, nil)
		}
	}()
	f()
}

// recoverConn, deferred, turns a panic while handling c into closing c
// with 1011: the poller and its other connections go on.
func (p *poller) recoverConn(c *conn) {
	if r := recover(); r != nil {
		p.srv.recovered(metrics.PanicPoller, r, c)
	}
}

// received hands bytes read from c to the session, and destroys c when
// it says so. It reports whether c lives on.
func (p *poller) received(c *conn, data []byte) bool {
	if !p.srv.handleBytes(c, data) {
		p.destroy(c)
		return false
	}
	return true
}

// add registers a connection and starts watching its socket.
func (p *poller) add(c *conn) error {
	p.mu.Lock()
	p.conns[c.fd] = c
	p.mu.Unlock()
	if err := p.be.watch(p, c); err != nil {
		p.mu.Lock()
		delete(p.conns, c.fd)
		p.mu.Unlock()
		return err
	}
	return nil
}

// matching lists the poller's connections for which match is true. Only
// the poller goroutine may call it, since match reads poller-owned state.
func (p *poller) matching(match func(*conn) bool) []*conn {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out []*conn
	for _, c := range p.conns {
		if match(c) {
			out = append(out, c)
		}
	}
	return out
}

// destroy closes a connection for good and forgets it. Only the poller
// goroutine calls it.
func (p *poller) destroy(c *conn) {
	c.mu.Lock()
	if c.state == stateDead {
		c.mu.Unlock()
		return
	}
	c.state = stateDead
	c.destroyed = true
	c.dropOutLocked()
	// Forget the descriptor before closing it: once closed, its number can
	// be handed to a new connection at once.
	p.mu.Lock()
	if p.conns[c.fd] == c {
		delete(p.conns, c.fd)
	}
	p.mu.Unlock()
	c.closeSocketLocked()
	c.mu.Unlock()

	c.reader.reset()
	if c.ext != nil {
		for _, pr := range c.ext.preparing {
			pr.cancelled = true // finishSubscribe undoes them
		}
		c.ext.subIndex = nil
	}
	subs := c.subs
	c.subs = nil
	p.srv.leave(c, subs)
	if len(subs) > 0 {
		p.srv.appStats(c.app).subscribed.Add(-1)
	}
	p.srv.signOut(c)
	if c.countedMax {
		p.srv.releaseConnectionSlot(c.app)
	}
	p.srv.perIP.release(c.ipSlot)
	c.ipSlot = nil
	p.srv.metrics.connections.Add(-1)
	p.srv.appStats(c.app).conns.Dec()
}

// shutdown closes every connection left once the loop has stopped, then
// the backend.
func (p *poller) shutdown() {
	p.mu.Lock()
	for _, c := range p.conns {
		c.mu.Lock()
		c.state = stateDead
		c.closeSocketLocked()
		c.mu.Unlock()
	}
	p.conns = map[int]*conn{}
	p.mu.Unlock()
	p.be.close()
}

// scan pings silent connections, closes those that never answered, and
// drops closing connections whose peer never finished the close.
func (p *poller) scan() {
	p.mu.RLock()
	conns := make([]*conn, 0, len(p.conns))
	for _, c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.RUnlock()
	for _, c := range conns {
		p.scanOne(c)
	}
}

func (p *poller) scanOne(c *conn) {
	defer p.recoverConn(c)
	now := p.tick
	c.mu.Lock()
	state, closingAt := c.state, c.closingAt
	c.mu.Unlock()
	switch state {
	case stateClosing:
		if now-closingAt >= durationTicks(closingGrace) {
			p.destroy(c)
		}
		return
	case stateDead:
		return
	}
	if c.pingSentAt != 0 {
		if now-c.pingSentAt >= durationTicks(p.srv.opts.PongTimeout) {
			c.closeWith(protocol.CodePongTimeout, "Pong reply not received in time")
		}
		return
	}
	if now-c.lastSeen >= durationTicks(c.app.PingInterval.Duration()) {
		c.pingSentAt = now
		c.write(p.srv.frames.ping)
	}
}
