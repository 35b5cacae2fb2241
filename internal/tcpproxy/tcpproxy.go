// Package tcpproxy is a TCP proxy for fault tests: it stands between a
// process and a server (a gateway and nats-server, say) and can cut the
// link and restore it on the same address, so that the process sees what
// a network failure does to it: every connection reset at once, and new
// connections refused until the link is back.
//
// It copies bytes and nothing else, with two goroutines per connection;
// it is meant for tests, not for traffic that must be fast.
package tcpproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections accepted on one address to a target.
type Proxy struct {
	addr   string // the listening address, fixed at Start
	target string

	mu       sync.Mutex
	ln       net.Listener // nil while cut
	conns    map[net.Conn]struct{}
	closed   bool
	accepted int64 // connections accepted in all
	dialErrs int64 // accepted connections whose dial to the target failed
	cuts     int64
	// swallow drops what clients send instead of forwarding it, while
	// what the target sends still flows: bytes a client wrote, and
	// believes sent, that never arrive.
	swallow atomic.Bool

	wg sync.WaitGroup // the accept loop and every copying goroutine
}

// Start listens on listen ("127.0.0.1:0" for a free port) and forwards
// every connection to target.
func Start(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	return p, nil
}

// Addr is the address the proxy listens on, the same across cuts.
func (p *Proxy) Addr() string { return p.addr }

// Target is where connections go.
func (p *Proxy) Target() string { return p.target }

// Stats is what the proxy has done so far.
type Stats struct {
	Accepted int64 // connections accepted, in all
	Open     int   // connection pairs open now
	DialErrs int64 // accepted connections whose target refused them
	Cuts     int64
	Up       bool // listening
}

func (s Stats) String() string {
	return fmt.Sprintf("accepted %d, open %d, dial errors %d, cuts %d, up %v", s.Accepted, s.Open, s.DialErrs, s.Cuts, s.Up)
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Each pair is two entries in conns: the client's side and the
	// target's.
	return Stats{Accepted: p.accepted, Open: len(p.conns) / 2, DialErrs: p.dialErrs, Cuts: p.cuts, Up: p.ln != nil}
}

// Cut closes the listener and resets every connection at once (no FIN:
// what was in flight is lost, as on a link that fails), then waits until
// every goroutine of the proxy has returned. Until Restore, connecting to
// Addr is refused. Cutting a cut proxy does nothing.
func (p *Proxy) Cut() {
	p.mu.Lock()
	if p.ln == nil {
		p.mu.Unlock()
		return
	}
	_ = p.ln.Close()
	p.ln = nil
	p.cuts++
	for c := range p.conns {
		abort(c)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// Swallow makes the proxy drop, from now on, what clients send (on or
// off): what they write before a Cut is then lost on the way, the way
// bytes in flight are lost when a server dies, and nothing tells them.
func (p *Proxy) Swallow(on bool) { p.swallow.Store(on) }

// Restore listens on Addr again. The port was free a moment ago, but
// another socket of the machine may take it meanwhile (an outgoing
// connection's local port): Restore retries for up to five seconds before
// it gives up.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("tcpproxy: closed")
	}
	if p.ln != nil {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.serveLocked(ln)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tcpproxy: listening on %s again: %w", p.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close cuts the link for good.
func (p *Proxy) Close() error {
	p.Cut()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return nil
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serveLocked(ln)
}

func (p *Proxy) serveLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go p.acceptLoop(ln)
}

func (p *Proxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			// Closed by Cut; a temporary error (out of descriptors) is
			// not worth a retry in a test proxy: the test would see the
			// link as cut.
			return
		}
		p.mu.Lock()
		if p.ln != ln {
			// Cut between Accept and here.
			p.mu.Unlock()
			abort(c)
			continue
		}
		p.accepted++
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.forward(c, ln)
	}
}

// forward dials the target for the accepted c and copies both ways until
// either side ends or the link is cut.
func (p *Proxy) forward(c net.Conn, ln net.Listener) {
	defer p.wg.Done()
	t, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	p.mu.Lock()
	if err != nil || p.ln != ln {
		if err != nil {
			p.dialErrs++
		}
		delete(p.conns, c)
		p.mu.Unlock()
		abort(c)
		if t != nil {
			abort(t)
		}
		return
	}
	p.conns[t] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer p.wg.Done()
		copyHalf(t, c, &p.swallow)
		close(done)
	}()
	copyHalf(c, t, nil)
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, t)
	p.mu.Unlock()
	_ = c.Close()
	_ = t.Close()
}

// copyHalf copies src to dst, dropping what it reads while swallow is
// set, then passes src's end of file on as a half-close, so that a side
// that closes cleanly is seen to close. An error (a reset, a cut) resets
// both.
func copyHalf(dst, src net.Conn, swallow *atomic.Bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && (swallow == nil || !swallow.Load()) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				abort(dst)
				abort(src)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			abort(dst)
			abort(src)
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		_ = dst.Close()
	}
}

// abort closes c with a reset rather than a FIN.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
