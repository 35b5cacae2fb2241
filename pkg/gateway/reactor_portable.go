package gateway

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
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
	// from -1: conn.fd < 0 is what marks a portable connection.
	ids atomic.Int64
	// readers are the read goroutines, waited for by close.
	readers sync.WaitGroup
}

func newPortable() *portable { return &portable{kick: make(chan struct{}, 1)} }

// netConn is a portable connection: conn, and the net.Conn under it. conn
// comes first, so that a *conn with fd < 0 is the start of a netConn (see
// asNet). Holding the net.Conn there instead of in conn keeps conn, which
// every idle connection of the fd backends pays for, at its size.
type netConn struct {
	conn
	nc net.Conn
	// Guarded by conn.mu.
	writing bool // the write goroutine is running
	// flying is the output the write goroutine took from out and is
	// writing: still waiting as far as the limits are concerned.
	flying int
	// heldPongs: pongs were kept (writePong) while output waited; the
	// write goroutine has the poller write them once it is done.
	heldPongs bool
}

// asNet is the netConn a portable connection (fd < 0) is part of.
func (c *conn) asNet() *netConn { return (*netConn)(unsafe.Pointer(c)) }

func (b *portable) open(nc net.Conn) (*conn, error) {
	n := &netConn{nc: nc}
	n.fd = int(b.ids.Add(-1))
	return &n.conn, nil
}

func (b *portable) watch(p *poller, c *conn) error {
	b.readers.Add(1)
	go b.read(p, c.asNet())
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
func (b *portable) run(p *poller, done <-chan struct{}) {
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
		p.scanDue(now)
		b.turn.Unlock()
	}
}

// read reads one connection until it fails or is closed, handing each
// read to the session in the poller's turn.
func (b *portable) read(p *poller, n *netConn) {
	defer b.readers.Done()
	c := &n.conn
	buf := make([]byte, portableReadBuffer)
	for {
		k, err := n.nc.Read(buf)
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
func (b *portable) handle(p *poller, c *conn, data []byte, err error) (alive bool) {
	defer p.recoverConn(c)
	if c.destroyed {
		return false
	}
	now := time.Now()
	p.now, p.tick = now.UnixNano(), p.srv.ticks(now)
	if len(data) > 0 && !p.received(c, data) {
		return false
	}
	if err != nil {
		p.destroy(c) // the peer closed, or the socket was shut
		return false
	}
	return true
}

// The write side, on conn.mu.

// kickLocked starts the write goroutine unless it runs already.
func (n *netConn) kickLocked() {
	if n.writing {
		return
	}
	n.writing = true
	go n.writeOut()
}

// writeOut writes out until it is empty, then ends. A write that fails
// aborts the connection, as a failed non-blocking write does.
func (n *netConn) writeOut() {
	c := &n.conn
	srv := c.poller.srv
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
		srv.outbound.Add(-int64(len(buf)))
		if err != nil {
			c.abortLocked()
		}
	}
	n.writing = false
	switch {
	case c.state == stateOpen && n.heldPongs:
		// The pongs are the poller's (conn.ext): it writes them.
		n.heldPongs = false
		c.poller.post(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.state != stateOpen {
				return
			}
			if c.idleLocked() {
				c.writeHeldPongsLocked()
			} else {
				n.heldPongs = true
			}
		})
	case c.state == stateClosing && !c.shutWrite:
		c.shutWrite = true
		n.shutdownWrite()
	}
}

// shutdownWrite sends FIN after the last frame, as SHUT_WR does.
func (n *netConn) shutdownWrite() {
	if cw, ok := n.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = n.nc.Close()
}
