package gateway

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/protocol"
)

// The portable backend's write side, on net.Pipe: a pipe's Write waits
// until the other end reads, so a peer that does not read is a client
// whose socket is full from the first byte. These run on every platform.

// portablePair returns a portable connection of a gateway with the given
// limits, its poller running, and the peer end of its pipe.
func portablePair(t *testing.T, maxOutbound int, maxTotal int64) (*Server, *conn, net.Conn) {
	t.Helper()
	s := testConnServer(t, reactor.Portable, maxOutbound, maxTotal)
	server, peer := net.Pipe()
	t.Cleanup(func() { _ = server.Close(); _ = peer.Close() })
	return s, testConn(t, s, server), peer
}

// Writes to a client that does not read never wait, and past its limit
// cut it off, giving its bytes back to the process's budget.
func TestPortableSlowClientCutOffAtItsLimit(t *testing.T) {
	s, c, _ := portablePair(t, 64<<10, 1<<30)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := 0; i < 200 && c.IsOpen(); i++ {
			c.Write(bytes.Repeat([]byte("y"), 1024))
		}
	}()
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("a write waited on a client that does not read")
	}
	if c.IsOpen() {
		t.Fatal("a client holding more than its limit was not cut off")
	}
	waitUntil(t, "bytes still charged to the process after the cut-off", func() bool { return s.rx.Outbound() == 0 })
	waitUntil(t, "the write goroutine did not end", func() bool {
		c.Lock()
		defer c.Unlock()
		return c.IdleLocked()
	})
}

// A client that pings while output waits holds one pong of each kind,
// whatever the number of pings, and gets them after that output once it
// reads.
func TestPortableOnlyTheLatestPongWaits(t *testing.T) {
	s, c, peer := portablePair(t, 1<<20, 1<<30)
	first := bytes.Repeat([]byte("x"), 1024)
	c.Write(first)
	waitUntil(t, "the write goroutine did not take the output", func() bool {
		c.Lock()
		defer c.Unlock()
		return !c.IdleLocked()
	})
	for i := 0; i < 1000; i++ {
		c.writePong(bytes.Repeat([]byte{byte(i)}, 125))
		c.writePusherPong()
	}
	c.Lock()
	waiting, ext := c.WaitingLocked(), c.ext
	held := ext != nil && len(ext.pong) == 127 && ext.pusherPong
	c.Unlock()
	if waiting != len(first) || !held {
		t.Fatalf("out holds %d bytes, held pongs %v", waiting, held)
	}

	lastPong := protocol.AppendFrame(nil, protocol.OpPong, bytes.Repeat([]byte{byte(999 % 256)}, 125))
	want := append(append(append([]byte(nil), first...), lastPong...), s.frames.pong...)
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("read %q: %v", got, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the client read %q, want the output, then the latest pong, then pusher:pong", got)
	}
}

// Closing sends the close frame after what waits, then half-closes: the
// peer reads everything and then the end of the stream.
func TestPortableCloseAfterOutput(t *testing.T) {
	_, c, peer := portablePair(t, 1<<20, 1<<30)
	c.Write([]byte("before"))
	c.closeWith(protocol.CodeReconnect, "Server shutting down, reconnect")
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatalf("read %q: %v", got, err)
	}
	want := protocol.AppendCloseFrame(protocol.AppendTextFrame(nil,
		protocol.AppendError(nil, protocol.CodeReconnect, "Server shutting down, reconnect")),
		uint16(protocol.CodeReconnect), "Server shutting down, reconnect")
	if !bytes.HasPrefix(got, []byte("before")) || !bytes.Equal(got[len("before"):], want) {
		t.Fatalf("the client read %q", got)
	}
}
