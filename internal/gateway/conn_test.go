//go:build linux

package gateway

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/protocol"
)

// socketPair returns a connection of s on one end of a Unix socket pair
// with small buffers, and the other end, which the test reads.
func socketPair(t *testing.T, s *Server) (*conn, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
	t.Cleanup(func() { _ = unix.Close(fds[1]) })
	f := os.NewFile(uintptr(fds[0]), "socketpair")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return testConn(t, s, nc), fds[1]
}

// fill writes to c until the socket pushes back and output waits.
func fill(c *conn) {
	chunk := bytes.Repeat([]byte("x"), 1024)
	for i := 0; i < 1000; i++ {
		c.Write(chunk)
		c.Lock()
		waiting := c.WaitingLocked() > 0 || !c.OpenLocked()
		c.Unlock()
		if waiting {
			return
		}
	}
}

func TestSlowClientCutOffAtItsLimit(t *testing.T) {
	s := testConnServer(t, reactor.Native(), 64<<10, 1<<30)
	c, _ := socketPair(t, s)
	fill(c)
	for i := 0; i < 100 && c.IsOpen(); i++ {
		c.Write(bytes.Repeat([]byte("y"), 1024))
	}
	if c.IsOpen() {
		t.Fatal("a client holding more than its limit was not cut off")
	}
	if got := s.rx.Outbound(); got != 0 {
		t.Fatalf("%d bytes still charged to the process after the cut-off", got)
	}
}

// Many clients each below their own limit cannot together hold more than
// the process's budget.
func TestSlowClientsShareTheProcessBudget(t *testing.T) {
	const budget = 20 << 10
	s := testConnServer(t, reactor.Native(), 1<<20, budget)
	var cut int
	for i := 0; i < 10; i++ {
		c, _ := socketPair(t, s)
		fill(c)
		for j := 0; j < 4 && c.IsOpen(); j++ {
			c.Write(bytes.Repeat([]byte("z"), 1024))
		}
		if !c.IsOpen() {
			cut++
		}
		if got := s.rx.Outbound(); got > budget {
			t.Fatalf("%d bytes waiting, over the %d budget", got, budget)
		}
	}
	if cut == 0 {
		t.Fatal("nobody was cut off")
	}
}

// A client that pings and never reads holds one pong, whatever the number
// of pings (RFC 6455 §5.5.3), and gets it once it reads.
func TestOnlyTheLatestPongWaits(t *testing.T) {
	s := testConnServer(t, reactor.Native(), 1<<20, 1<<30)
	c, peer := socketPair(t, s)
	fill(c)
	c.Lock()
	before := c.WaitingLocked()
	c.Unlock()
	for i := 0; i < 1000; i++ {
		c.writePong(bytes.Repeat([]byte{byte(i)}, 125))
		c.writePusherPong()
	}
	c.Lock()
	after := c.WaitingLocked()
	ext := c.ext
	held := ext != nil && len(ext.pong) == 127 && ext.pusherPong
	c.Unlock()
	if after != before || !held {
		t.Fatalf("out grew %d -> %d, held pongs %v", before, after, held)
	}
	// The client reads: the poller flushes on each write edge, everything
	// goes out, the last pong with it. (The pongs are poller-owned: read
	// them on the poller.)
	var got []byte
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		// Whether all was written is asked before reading, so that the
		// read after it finds the last of it.
		pongHeld := make(chan bool)
		c.Post(func() { pongHeld <- c.ext != nil && c.ext.pong != nil })
		held := <-pongHeld
		c.Lock()
		done := c.WaitingLocked() == 0 && !held
		c.Unlock()
		n, _ := unix.Read(peer, buf)
		if n > 0 {
			got = append(got, buf[:n]...)
		}
		if done && n <= 0 {
			break
		}
		if n <= 0 {
			time.Sleep(time.Millisecond)
		}
	}
	wantTail := append(protocol.AppendFrame(nil, protocol.OpPong, bytes.Repeat([]byte{byte(999 % 256)}, 125)), s.frames.pong...)
	if !bytes.HasSuffix(got, wantTail) {
		t.Fatalf("the stream does not end with the latest pong and one pusher:pong: ...% x", got[max(0, len(got)-40):])
	}
	if n := bytes.Count(got, s.frames.pong); n != 1 {
		t.Fatalf("%d pusher:pong frames", n)
	}
}

// A connection's work runs in the order it was queued; different
// connections' work runs in parallel.
func TestAsyncLanesKeepOrderPerKey(t *testing.T) {
	a := newAsyncLanes(func(r any, c *conn) { t.Errorf("panic: %v", r) })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	a.run(ctx, &wg)
	defer func() { cancel(); wg.Wait() }()
	var mu sync.Mutex
	seen := map[uint64][]int{}
	for i := 0; i < 200; i++ {
		for key := uint64(0); key < 10; key++ {
			a.must(key, nil, func(context.Context) {
				mu.Lock()
				seen[key] = append(seen[key], i)
				mu.Unlock()
			})
		}
	}
	a.drain(10 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	for key, got := range seen {
		for i, v := range got {
			if v != i {
				t.Fatalf("key %d ran %v", key, got)
			}
		}
	}
}

// Admitted work is refused once a lane's backlog is full; work that may
// not be dropped is queued regardless.
func TestAsyncLanesRefuseOverBacklog(t *testing.T) {
	a := newAsyncLanes(func(any, *conn) {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	block := make(chan struct{})
	var wg sync.WaitGroup
	a.run(ctx, &wg)
	a.must(7, nil, func(context.Context) { <-block })
	refused := 0
	for i := 0; i < laneBacklog*2; i++ {
		if !a.try(7, nil, func(context.Context) {}) {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("nothing refused")
	}
	if !a.try(8, nil, func(context.Context) {}) {
		t.Fatal("another lane refused")
	}
	a.must(7, nil, func(context.Context) {}) // never refused
	close(block)
	a.drain(10 * time.Second)
	if q := a.queued.Load(); q != 0 {
		t.Fatalf("%d left queued", q)
	}
	cancel()
	wg.Wait()
}

// A panic in a piece of work is handed to the handler with its
// connection, and the lane goes on.
func TestAsyncLanesRecoverPanics(t *testing.T) {
	var mu sync.Mutex
	var got []any
	a := newAsyncLanes(func(r any, c *conn) { mu.Lock(); got = append(got, r); mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	a.run(ctx, &wg)
	defer func() { cancel(); wg.Wait() }()
	ran := make(chan struct{})
	a.must(1, nil, func(context.Context) { panic("boom") })
	a.must(1, nil, func(context.Context) { close(ran) })
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("the lane stopped after a panic")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "boom" {
		t.Fatalf("recovered %v", got)
	}
}
