package gateway

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/protocol"
)

const (
	readBufferSize = 64 << 10
	// maxReadsPerWake bounds how long one busy connection can hold its
	// poller before the others get a turn; the rest waits in the ready
	// list.
	maxReadsPerWake = 4
	scanInterval    = time.Second
	// closingGrace is how long a closing connection may take to answer our
	// close frame before we drop it.
	closingGrace = 5 * time.Second
)

// poller is one epoll instance and the goroutine that waits on it. Each
// connection belongs to one poller for its whole life; its read side is
// only ever touched on that poller's goroutine, so it needs no lock.
type poller struct {
	srv  *Server
	epfd int
	// wakefd is an eventfd in the epoll set, so that stopping does not wait
	// for epoll_wait's timeout.
	wakefd int
	buf    []byte

	mu    sync.RWMutex
	conns map[int]*conn // by descriptor

	// inbox holds work other goroutines hand to this poller: completions of
	// asynchronous steps that must touch a connection's poller-owned state.
	inboxMu sync.Mutex
	inbox   []func()

	// Touched only on the poller goroutine.
	again    []*conn // connections with unread input left
	lastScan time.Time
	now      int64  // unix nanos of this wake-up
	tick     uint32 // the same, in connection ticks
}

func newPoller(srv *Server) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(fd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		_ = unix.Close(fd)
		_ = unix.Close(wake)
		return nil, err
	}
	return &poller{srv: srv, epfd: fd, wakefd: wake, buf: make([]byte, readBufferSize), conns: make(map[int]*conn)}, nil
}

// post runs f on the poller goroutine, soon.
func (p *poller) post(f func()) {
	p.inboxMu.Lock()
	p.inbox = append(p.inbox, f)
	p.inboxMu.Unlock()
	p.wake()
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

func (p *poller) readSafely(c *conn) {
	defer p.recoverConn(c)
	p.readFrom(c)
}

func (p *poller) flushSafely(c *conn) {
	defer p.recoverConn(c)
	c.flush()
}

// wake interrupts epoll_wait.
func (p *poller) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(p.wakefd, one[:])
}

// add registers a connection. Edge-triggered, with read and write interest
// set once for the connection's life: no epoll_ctl per write.
func (p *poller) add(c *conn) error {
	p.mu.Lock()
	p.conns[c.fd] = c
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
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

func (p *poller) lookup(fd int) *conn {
	p.mu.RLock()
	c := p.conns[fd]
	p.mu.RUnlock()
	return c
}

// run waits for readiness until done is closed.
func (p *poller) run(done <-chan struct{}) {
	events := make([]unix.EpollEvent, 256)
	for {
		select {
		case <-done:
			return
		default:
		}
		timeout := int(scanInterval / time.Millisecond)
		if len(p.again) > 0 {
			timeout = 0
		}
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if err != nil && err != unix.EINTR {
			p.srv.log.Error().Err(err).Msg("epoll_wait")
			return
		}
		now := time.Now()
		p.now = now.UnixNano()
		p.tick = p.srv.ticks(now)
		p.runInbox()
		again := p.again
		p.again = nil
		for _, c := range again {
			p.readSafely(c)
		}
		for i := 0; i < n; i++ {
			ev := events[i]
			if int(ev.Fd) == p.wakefd {
				var b [8]byte
				_, _ = unix.Read(p.wakefd, b[:])
				continue
			}
			c := p.lookup(int(ev.Fd))
			if c == nil {
				continue
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				p.flushSafely(c)
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				p.readSafely(c)
			}
		}
		if now.Sub(p.lastScan) >= scanInterval {
			p.lastScan = now
			p.scan()
		}
	}
}

// readFrom reads what the socket holds and handles every whole frame.
func (p *poller) readFrom(c *conn) {
	if c.destroyed {
		return // queued on the ready list before it was destroyed
	}
	for i := 0; i < maxReadsPerWake; i++ {
		n, err := unix.Read(c.fd, p.buf)
		switch {
		case n > 0:
			if !p.srv.handleBytes(c, p.buf[:n]) {
				p.destroy(c)
				return
			}
			if n < len(p.buf) {
				return // drained; new data raises a new edge
			}
		case n == 0:
			p.destroy(c) // the peer closed
			return
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
		default:
			p.destroy(c)
			return
		}
	}
	p.again = append(p.again, c)
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
	_ = unix.Close(c.fd)
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
		p.srv.releaseConnectionSlot(c)
	}
	p.srv.perIP.release(c.ipSlot)
	c.ipSlot = nil
	p.srv.metrics.connections.Add(-1)
	p.srv.appStats(c.app).conns.Dec()
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
