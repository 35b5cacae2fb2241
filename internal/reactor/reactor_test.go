package reactor

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
)

// echo is a session that writes back what it reads, and records what the
// reactor tells it.
type echo struct {
	mu        sync.Mutex
	overflows []bool
	destroyed int
}

func (e *echo) Received(c *Conn, data []byte) bool {
	c.Write(append([]byte(nil), data...))
	return true
}
func (e *echo) Scan(*Conn) uint32   { return 0 }
func (e *echo) DrainedLocked(*Conn) {}
func (e *echo) Destroyed(*Conn)     { e.mu.Lock(); e.destroyed++; e.mu.Unlock() }
func (e *echo) Overflow(_ *Conn, total bool) {
	e.mu.Lock()
	e.overflows = append(e.overflows, total)
	e.mu.Unlock()
}
func (e *echo) Recovered(r any, _ *Conn) { panic(r) }

func start(t *testing.T, kind string, maxOut int, maxTotal int64) (*Reactor, *echo) {
	t.Helper()
	h := &echo{}
	r, err := New(Config{Kind: kind, Pollers: 1, MaxOutbound: maxOut, MaxOutboundTotal: maxTotal,
		Epoch: time.Now(), Handler: h, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Stop)
	return r, h
}

func open(t *testing.T, r *Reactor, nc net.Conn) *Conn {
	t.Helper()
	c := &Conn{}
	p := r.Next()
	if err := p.Open(c, nc); err != nil {
		t.Fatal(err)
	}
	if err := p.Add(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// backends are the reactor kinds this platform has.
func backends() []string {
	if Native() == "" {
		return []string{Portable}
	}
	return []string{Portable, Native()}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Bytes read go to the session, what it writes goes back, and the peer
// closing destroys the connection, on every backend this platform has.
func TestEchoAndClose(t *testing.T) {
	for _, kind := range backends() {
		t.Run(kind, func(t *testing.T) {
			r, h := start(t, kind, 1<<20, 1<<30)
			peer, server := tcpPair(t)
			open(t, r, server)
			if _, err := peer.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, 5)
			if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, []byte("hello")) {
				t.Fatalf("read %q, %v", got, err)
			}
			_ = peer.Close()
			waitFor(t, "the connection was not destroyed", func() bool {
				h.mu.Lock()
				defer h.mu.Unlock()
				return h.destroyed == 1
			})
		})
	}
}

// A peer that does not read is cut off past its limit, without the
// writer waiting, and its bytes go back to the process's budget.
func TestCutOffPastTheLimit(t *testing.T) {
	r, h := start(t, Portable, 64<<10, 1<<30)
	server, peer := net.Pipe() // a pipe's Write waits for the reader: full from the first byte
	t.Cleanup(func() { _ = server.Close(); _ = peer.Close() })
	c := open(t, r, server)
	for i := 0; i < 200 && c.IsOpen(); i++ {
		c.Write(bytes.Repeat([]byte("y"), 1024))
	}
	if c.IsOpen() {
		t.Fatal("a peer holding more than its limit was not cut off")
	}
	h.mu.Lock()
	overflows := h.overflows
	h.mu.Unlock()
	if len(overflows) != 1 || overflows[0] {
		t.Fatalf("overflows %v, want one of the connection's own limit", overflows)
	}
	waitFor(t, "bytes still charged to the process", func() bool { return r.Outbound() == 0 })
}

// Conn is what every idle connection of the fd backends costs, on top of
// the session's state.
func TestConnSize(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("64-bit platforms only")
	}
	if got := unsafe.Sizeof(Conn{}); got > 56 {
		t.Fatalf("Conn is %d bytes, want at most 56", got)
	}
}

// A connection the session closes, whose peer never closes its end, is
// destroyed once closingGrace has passed (looked at from the poller's
// closing list, not the wheel), on every backend.
func TestClosingPeerThatNeverClosesIsDestroyedAfterTheGrace(t *testing.T) {
	for _, kind := range backends() {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r, h := start(t, kind, 1<<20, 1<<30)
			peer, server := tcpPair(t)
			c := open(t, r, server)
			c.Lock()
			c.CloseLocked([]byte("bye"))
			c.Unlock()
			began := time.Now()
			// The peer reads the last bytes and the end of the stream, and
			// keeps its own end open.
			_ = peer.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(peer)
			if err != nil || string(got) != "bye" {
				t.Fatalf("peer read %q, %v", got, err)
			}
			waitFor(t, "the closing connection was not destroyed", func() bool {
				h.mu.Lock()
				defer h.mu.Unlock()
				return h.destroyed == 1
			})
			if waited := time.Since(began); waited < closingGrace-time.Second {
				t.Fatalf("destroyed after %v, before the grace of %v", waited, closingGrace)
			}
		})
	}
}
