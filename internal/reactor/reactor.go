// Package reactor is the gateway's socket layer: it accepts nothing and
// parses nothing, but owns upgraded sockets from then on. It polls them,
// reads them into the session above, writes what the session hands it
// (never waiting on a slow client, cutting off one that passes its
// limits), and closes them. It knows nothing of Pusher, nor even of
// WebSocket: the session gives it a Handler, and holds each connection's
// Conn to write and close.
//
// A Poller is one loop that owns a share of the connections: their read
// side and the session state above it are only ever touched on it, so they
// need no lock. How a poller learns that a socket can be read or written is
// its backend's business. There are three, chosen at start-up
// (RESOUND_REACTOR):
//
//   - epoll (Linux, epoll_linux.go) and kqueue (macOS and the BSDs,
//     kqueue_bsd.go): the connection's descriptor leaves the Go runtime, is
//     made non-blocking and is watched edge-triggered; an idle connection
//     has no goroutine and no buffer. Both share the descriptor code in
//     fd.go.
//   - portable (everything, portable.go): the connection stays a net.Conn,
//     read by a goroutine of its own, and written by a goroutine that exists
//     only while output waits. The only choice on Windows, and forced
//     elsewhere by RESOUND_REACTOR=portable or the resound_portable build
//     tag, so that the test suite runs over it too.
package reactor

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Reactor names, as RESOUND_REACTOR takes them.
const (
	Auto     = "auto"
	Epoll    = "epoll"
	Kqueue   = "kqueue"
	Portable = "portable"
)

// Handler is the session above the reactor. Every call but Overflow is
// made on the connection's poller goroutine (for the portable backend: in
// the poller's turn), and is recovered from: a panic becomes Recovered.
type Handler interface {
	// Received hands the session bytes read from c; data is only valid
	// during the call. It returns false when c must be destroyed at once.
	Received(c *Conn, data []byte) bool
	// Scan looks at an open connection when its session asked (the
	// session's timers: pings, pong timeouts), and answers the tick at
	// which to look again. The reactor looks then or sooner (at most
	// scanHorizon ticks ahead, at least one), so the answer may come from
	// state that later changes only to put the timer off (activity
	// postpones a ping): the session checks again when it is looked at.
	// A new connection is first looked at the tick after it is added.
	Scan(c *Conn) (next uint32)
	// DrainedLocked is called, with c locked, once c's waiting output is
	// all written, if the session asked for it (WantDrainedLocked) while c
	// is open: what it held back can go out now, in order.
	DrainedLocked(c *Conn)
	// Destroyed is called once c's socket is closed and the poller has
	// forgotten it: the session releases what the connection held.
	Destroyed(c *Conn)
	// Overflow is called, with c locked and from any goroutine, when c is
	// cut off for the output waiting: past its own limit, or (total) past
	// the process's.
	Overflow(c *Conn, total bool)
	// Recovered handles a panic while handling c; c is nil for the
	// poller's own work.
	Recovered(r any, c *Conn)
}

// Config is what New needs.
type Config struct {
	// Kind is a resolved reactor name (Resolve).
	Kind    string
	Pollers int
	// MaxOutbound bounds one connection's waiting output, MaxOutboundTotal
	// all connections' together.
	MaxOutbound      int
	MaxOutboundTotal int64
	// Epoch is what ticks count from (Ticks).
	Epoch   time.Time
	Handler Handler
	Log     zerolog.Logger
}

// Reactor is a set of pollers sharing one output budget.
type Reactor struct {
	kind     string
	h        Handler
	log      zerolog.Logger
	epoch    time.Time
	maxOut   int
	maxTotal int64
	// outbound is the bytes waiting in every connection's out, against
	// maxTotal.
	outbound atomic.Int64
	pollers  []*Poller
	next     atomic.Uint32

	done chan struct{}
	wg   sync.WaitGroup
}

// New makes a reactor's pollers; Start runs them.
func New(cfg Config) (*Reactor, error) {
	r := &Reactor{kind: cfg.Kind, h: cfg.Handler, log: cfg.Log, epoch: cfg.Epoch,
		maxOut: cfg.MaxOutbound, maxTotal: cfg.MaxOutboundTotal, done: make(chan struct{})}
	for i := 0; i < max(cfg.Pollers, 1); i++ {
		be, err := newBackend(cfg.Kind)
		if err != nil {
			for _, p := range r.pollers {
				p.be.close()
			}
			return nil, fmt.Errorf("reactor: %s: %w", cfg.Kind, err)
		}
		r.pollers = append(r.pollers, &Poller{r: r, be: be, conns: make(map[int]*Conn)})
	}
	return r, nil
}

// Kind is the backend the pollers run: Epoll, Kqueue or Portable.
func (r *Reactor) Kind() string { return r.kind }

// Outbound is the bytes waiting in every connection's output.
func (r *Reactor) Outbound() int64 { return r.outbound.Load() }

// Pollers are the reactor's loops.
func (r *Reactor) Pollers() []*Poller { return r.pollers }

// Next is the poller a new connection goes to, round robin.
func (r *Reactor) Next() *Poller { return r.pollers[int(r.next.Add(1))%len(r.pollers)] }

// Start runs the pollers until Stop.
func (r *Reactor) Start() {
	for _, p := range r.pollers {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); p.be.run(p, r.done) }()
	}
}

// Stop stops the pollers, closes every connection left (without telling
// the session: it is going away too) and frees the backends.
func (r *Reactor) Stop() {
	close(r.done)
	for _, p := range r.pollers {
		p.wake()
	}
	r.wg.Wait()
	for _, p := range r.pollers {
		p.shutdown()
	}
}

// Conns lists every connection, on any goroutine: only their write side
// (Conn's methods) may be used from there.
func (r *Reactor) Conns() []*Conn {
	var out []*Conn
	for _, p := range r.pollers {
		p.mu.RLock()
		for _, c := range p.conns {
			out = append(out, c)
		}
		p.mu.RUnlock()
	}
	return out
}

// The times a connection keeps are ticks: whole seconds since the epoch,
// plus one so that 0 means "never". Timeouts are seconds long and the
// poller scans once a second, so finer times would only make every
// connection bigger.

// Ticks converts a time into ticks from epoch.
func Ticks(epoch, t time.Time) uint32 { return uint32(t.Sub(epoch)/time.Second) + 1 }

// DurationTicks is d in ticks, rounded up, at least one.
func DurationTicks(d time.Duration) uint32 {
	return uint32(max((d+time.Second-1)/time.Second, 1))
}

// Resolve turns a RESOUND_REACTOR value into the backend this platform
// will run.
func Resolve(kind string) (string, error) {
	switch kind {
	case "", Auto:
		if forcePortable || nativeReactor == "" {
			return Portable, nil
		}
		return nativeReactor, nil
	case Portable:
		return Portable, nil
	case Epoll, Kqueue:
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
		return Portable + " only"
	}
	return nativeReactor + " and " + Portable
}

// backend is a poller's readiness mechanism. Each poller has its own.
type backend interface {
	// open takes an upgraded socket from the Go runtime into c, which has
	// nothing else set yet.
	open(c *Conn, nc net.Conn) error
	// watch starts reporting c's readiness to p; c is in p.conns already.
	watch(p *Poller, c *Conn) error
	// run reports readiness to p until done is closed.
	run(p *Poller, done <-chan struct{})
	// wake makes run look at p's inbox soon.
	wake()
	// close frees the backend's resources once run has returned and every
	// connection's socket is closed.
	close()
}

func newBackend(kind string) (backend, error) {
	if kind == Portable {
		return newPortable(), nil
	}
	return newNativeBackend()
}

const (
	// scanInterval is the longest a poller sleeps: it runs its tick's
	// slot of the wheel, and the closing list, at least this often.
	scanInterval = time.Second
	// closingGrace is how long a closing connection may take to answer our
	// close frame before we drop it.
	closingGrace = 5 * time.Second
)

// Poller is one loop and the connections it owns. Each connection belongs
// to one poller for its whole life; its read side is only ever touched on
// that poller's goroutine (for the portable backend: while holding the
// poller's turn), so it needs no lock.
type Poller struct {
	r  *Reactor
	be backend

	mu    sync.RWMutex
	conns map[int]*Conn // by descriptor (portable: by a number of its own)

	// inbox holds work other goroutines hand to this poller: completions of
	// asynchronous steps that must touch a connection's poller-owned state.
	inboxMu sync.Mutex
	inbox   []func()

	// added are the connections Add took since the poller last looked,
	// to go on the wheel (guarded by mu: Add runs on other goroutines).
	added []*Conn

	// closing lists the connections that started closing, each once
	// (the transition happens once), for the grace check. closingMu is
	// taken with a connection's mu held (CloseLocked, abortLocked, on any
	// goroutine) and nothing is taken under it.
	closingMu sync.Mutex
	closing   []*Conn

	// Touched only on the poller goroutine.
	wheel timerWheel
	now   int64  // unix nanos of this wake-up
	tick  uint32 // the same, in ticks
}

// Now is the time of the poller's current turn, in unix nanoseconds. Only
// the poller goroutine may call it.
func (p *Poller) Now() int64 { return p.now }

// Tick is the time of the poller's current turn, in ticks. Only the
// poller goroutine may call it.
func (p *Poller) Tick() uint32 { return p.tick }

// Post runs f on the poller goroutine, soon.
func (p *Poller) Post(f func()) {
	p.inboxMu.Lock()
	p.inbox = append(p.inbox, f)
	p.inboxMu.Unlock()
	p.wake()
}

// Open takes an upgraded socket into c (an fd backend moves it out of the
// Go runtime: from then on the connection is a few dozen bytes of state).
// c can be written at once; Add starts reading it.
func (p *Poller) Open(c *Conn, nc net.Conn) error {
	if err := p.be.open(c, nc); err != nil {
		return err
	}
	c.p = p
	return nil
}

// Add registers an opened connection and starts watching its socket. On
// an error the connection is closed, and Destroyed is not called.
func (p *Poller) Add(c *Conn) error {
	p.mu.Lock()
	p.conns[int(c.fd)] = c
	p.added = append(p.added, c)
	p.mu.Unlock()
	if err := p.be.watch(p, c); err != nil {
		p.mu.Lock()
		delete(p.conns, int(c.fd))
		p.mu.Unlock() // left in added: discarded, it is dropped there
		c.discard()
		return err
	}
	return nil
}

// Matching lists the poller's connections for which match is true. Only
// the poller goroutine may call it, since match reads poller-owned state.
func (p *Poller) Matching(match func(*Conn) bool) []*Conn {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out []*Conn
	for _, c := range p.conns {
		if match(c) {
			out = append(out, c)
		}
	}
	return out
}

// wake makes the poller look at its inbox.
func (p *Poller) wake() { p.be.wake() }

// woke starts a turn of the loop: the time, then the work posted.
func (p *Poller) woke(now time.Time) {
	p.setNow(now)
	p.runInbox()
}

func (p *Poller) setNow(now time.Time) {
	p.now = now.UnixNano()
	p.tick = Ticks(p.r.epoch, now)
}

// scanDue looks at the connections due this tick (see timerWheel), and
// at the closing ones, once a tick (the turn's, set by woke).
func (p *Poller) scanDue() {
	if p.wheel.at == p.tick {
		return
	}
	p.mu.Lock()
	added := p.added
	p.added = nil
	p.mu.Unlock()
	for _, c := range added {
		p.wheel.schedule(c, p.tick+1, p.tick)
	}
	p.wheel.due(p.tick, p.scanOne)
	p.scanClosing()
}

func (p *Poller) runInbox() {
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
func (p *Poller) runSafely(f func()) {
	defer func() {
		if r := recover(); r != nil {
			p.r.h.Recovered(r, nil)
		}
	}()
	f()
}

// recoverConn, deferred, hands a panic while handling c to the session
// (which closes c): the poller and its other connections go on.
func (p *Poller) recoverConn(c *Conn) {
	if r := recover(); r != nil {
		p.r.h.Recovered(r, c)
	}
}

// received hands bytes read from c to the session, and destroys c when
// it says so. It reports whether c lives on.
func (p *Poller) received(c *Conn, data []byte) bool {
	if !p.r.h.Received(c, data) {
		p.destroy(c)
		return false
	}
	return true
}

// destroy closes a connection for good, forgets it, and tells the
// session. The poller goroutine calls it, and on the portable backend a
// connection's own reader goroutine too. Lock order: c.mu, then p.mu.
func (p *Poller) destroy(c *Conn) {
	c.mu.Lock()
	if c.state == stateDead {
		c.mu.Unlock()
		return
	}
	c.state = stateDead
	c.dropOutLocked()
	// Forget the descriptor before closing it: once closed, its number can
	// be handed to a new connection at once.
	p.mu.Lock()
	if p.conns[int(c.fd)] == c {
		delete(p.conns, int(c.fd))
	}
	p.mu.Unlock()
	c.closeSocketLocked()
	c.mu.Unlock()
	p.r.h.Destroyed(c)
}

// shutdown closes every connection left once the loop has stopped, then
// the backend.
//
// Lock order is a connection's mu before the poller's (destroy), so the
// connections are taken from the map first and closed after p.mu is let
// go: on the portable backend a connection's reader goroutine can be in
// destroy at the same moment, holding its c.mu and waiting for p.mu.
func (p *Poller) shutdown() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[int]*Conn{}
	p.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		if c.state != stateDead { // destroy may have closed it meanwhile
			c.state = stateDead
			c.closeSocketLocked()
		}
		c.mu.Unlock()
	}
	p.be.close()
}

// scanOne looks at a connection the wheel says is due: an open one's
// session answers when to look again; a closing one is on the closing
// list, a dead one is forgotten.
func (p *Poller) scanOne(c *Conn) {
	defer p.recoverConn(c)
	c.mu.Lock()
	open := c.state == stateOpen
	c.mu.Unlock()
	if open {
		p.wheel.schedule(c, p.r.h.Scan(c), p.tick)
	}
}

// noteClosing puts c on the closing list; c is locked, and has just
// started closing.
func (p *Poller) noteClosing(c *Conn) {
	p.closingMu.Lock()
	p.closing = append(p.closing, c)
	p.closingMu.Unlock()
}

// scanClosing destroys the closing connections whose peer has not closed
// within closingGrace.
func (p *Poller) scanClosing() {
	p.closingMu.Lock()
	closing := p.closing
	p.closing = nil
	p.closingMu.Unlock()
	if len(closing) == 0 {
		return
	}
	grace := uint16(DurationTicks(closingGrace))
	kept := closing[:0]
	for _, c := range closing {
		c.mu.Lock()
		state, closingAt := c.state, c.closingAt
		c.mu.Unlock()
		switch {
		case state == stateDead:
		case closingTick(p.tick)-closingAt >= grace:
			p.destroySafely(c)
		default:
			kept = append(kept, c)
		}
	}
	clear(closing[len(kept):])
	p.closingMu.Lock()
	p.closing = append(p.closing, kept...)
	p.closingMu.Unlock()
}

func (p *Poller) destroySafely(c *Conn) {
	defer p.recoverConn(c)
	p.destroy(c)
}

// Handler is the session the poller's connections belong to.
func (p *Poller) Handler() Handler { return p.r.h }

// Native is this platform's fd backend (Epoll or Kqueue), or "" where
// there is none.
func Native() string { return nativeReactor }

// Adopt takes into c a non-blocking descriptor the caller hands over, as
// Open does with a socket's. Only the fd backends take descriptors; the
// benchmarks use it to write to /dev/null.
func (p *Poller) Adopt(c *Conn, fd int) error {
	if _, ok := p.be.(*portable); ok {
		return fmt.Errorf("reactor: the %s backend takes no descriptors", Portable)
	}
	c.fd, c.p = int32(fd), p
	return nil
}
