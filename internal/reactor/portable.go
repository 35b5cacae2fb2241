package reactor

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// portableReadBuffer is each portable connection's read buffer: it has
// one of its own, since its reads block on its own goroutine. gobwas/ws
// and net/http read with 4 KiB too.
const portableReadBuffer = 4 << 10

// portable is the backend that needs nothing but net.Conn: Windows runs
// it, and any platform can be told to (RESOUND_REACTOR=portable). Each
// connection has a goroutine that reads it and, while output waits, one
// that writes it; the session code above sees the same poller as with
// epoll. The poller's goroutine becomes a lock, its turn: a read goroutine
// holds it while the session handles what it read, and the loop holds it
// for the inbox and the scan. Only one of them runs the poller's share of
// the session at a time, so poller-owned state needs no lock here either.
//
// It costs, per connection, a goroutine and its read buffer (about 8 KiB
// of stack and 4 KiB) where epoll and kqueue cost nothing, and a
// goroutine start per burst of output to an idle connection:
// docs/benchmarks.md has the figures.
type portable struct {
	turn sync.Mutex
	// kick wakes run for the inbox; one signal pending is enough.
	kick chan struct{}
	// ids number the connections, in place of descriptors, counting down
	// from -1; they only need to be unique among the poller's live
	// connections. (What marks a portable connection is Conn.net.)
	ids atomic.Int32
	// readers are the read goroutines, waited for by close.
	readers sync.WaitGroup
}

func newPortable() *portable { return &portable{kick: make(chan struct{}, 1)} }

// netSide is a portable connection's own state, which the fd backends'
// connections do without: Conn points to it, so that Conn, which every
// idle connection of the fd backends pays for, stays at its size.
type netSide struct {
	nc net.Conn
	// Guarded by Conn.mu.
	writing bool // the write goroutine is running
	// flying is the output the write goroutine took from out and is
	// writing: still waiting as far as the limits are concerned.
	flying int
}

func (b *portable) open(c *Conn, nc net.Conn) error {
	c.net = &netSide{nc: nc}
	c.fd = b.ids.Add(-1)
	return nil
}

func (b *portable) watch(p *Poller, c *Conn) error {
	b.readers.Add(1)
	go b.read(p, c)
	return nil
}

func (b *portable) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *portable) close() { b.readers.Wait() }

// run does the poller's own work, the inbox and the scan, in its turn.
func (b *portable) run(p *Poller, done <-chan struct{}) {
	t := time.NewTicker(scanInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-b.kick:
		case <-t.C:
		}
		b.turn.Lock()
		now := time.Now()
		p.woke(now)
		p.scanDue()
		b.turn.Unlock()
	}
}

// read reads one connection until it fails or is closed, handing each
// read to the session in the poller's turn.
func (b *portable) read(p *Poller, c *Conn) {
	defer b.readers.Done()
	nc := c.net.nc
	buf := make([]byte, portableReadBuffer)
	for {
		k, err := nc.Read(buf)
		b.turn.Lock()
		alive := b.handle(p, c, buf[:k], err)
		b.turn.Unlock()
		if !alive {
			return
		}
	}
}

// handle is one read's worth of work for the session, in the poller's
// turn. It reports whether the connection is still to be read.
func (b *portable) handle(p *Poller, c *Conn, data []byte, err error) (alive bool) {
	defer p.recoverConn(c)
	if c.Destroyed() {
		return false
	}
	p.setNow(time.Now())
	if len(data) > 0 && !p.received(c, data) {
		return false
	}
	if err != nil {
		p.destroy(c) // the peer closed, or the socket was shut
		return false
	}
	return true
}

// The write side, on Conn.mu.

// kickLocked starts the write goroutine unless it runs already.
func (n *netSide) kickLocked(c *Conn) {
	if n.writing {
		return
	}
	n.writing = true
	go n.writeOut(c)
}

// writeOut writes out until it is empty, then ends. A write that fails
// aborts the connection, as a failed non-blocking write does.
func (n *netSide) writeOut(c *Conn) {
	r := c.p.r
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.state != stateDead && len(c.out) > 0 {
		buf := c.out
		c.out = nil
		n.flying = len(buf)
		c.mu.Unlock()
		_, err := n.nc.Write(buf)
		c.mu.Lock()
		n.flying = 0
		r.outbound.Add(-int64(len(buf)))
		if err != nil {
			c.abortLocked()
		}
	}
	n.writing = false
	switch {
	case c.state == stateOpen && c.has(drainWanted):
		// What the session held back is the poller's (its state is
		// poller-owned): DrainedLocked runs there.
		c.clear(drainWanted)
		c.p.Post(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.state != stateOpen {
				return
			}
			if c.IdleLocked() {
				r.h.DrainedLocked(c)
			} else {
				c.set(drainWanted)
			}
		})
	case c.state == stateClosing && !c.has(shutWrite):
		c.set(shutWrite)
		n.shutdownWrite()
	}
}

// shutdownWrite sends FIN after the last bytes, as SHUT_WR does.
func (n *netSide) shutdownWrite() {
	if cw, ok := n.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = n.nc.Close()
}
