package tcpproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// echoServer answers every line with itself.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, line string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// A cut resets the open connections and refuses new ones; a restore
// listens on the same address again, and connections flow.
func TestCutAndRestore(t *testing.T) {
	p, err := Start("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })

	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "one")
	roundTrip(t, b, "two")
	if s := p.Stats(); s.Accepted != 2 || s.Open != 2 || !s.Up {
		t.Fatalf("before the cut: %v", s)
	}

	p.Cut()
	for _, c := range []net.Conn{a, b} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("read after the cut: %v, want a reset or end of file", err)
		}
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while cut: %v, want connection refused", err)
	}
	if s := p.Stats(); s.Open != 0 || s.Up || s.Cuts != 1 {
		t.Fatalf("while cut: %v", s)
	}

	addr := p.Addr()
	if err := p.Restore(); err != nil {
		t.Fatal(err)
	}
	if p.Addr() != addr {
		t.Fatalf("restored on %s, not %s", p.Addr(), addr)
	}
	roundTrip(t, dial(t, addr), "three")
	if s := p.Stats(); s.Accepted != 3 || s.Open != 1 || !s.Up {
		t.Fatalf("after the restore: %v", s)
	}
}

// A side that closes cleanly is seen to close by the other, through the
// proxy, and the pair is forgotten.
func TestCleanCloseGoesThrough(t *testing.T) {
	p, err := Start("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	c := dial(t, p.Addr()).(*net.TCPConn)
	roundTrip(t, c, "x")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The echo server sees end of file and closes; so do we, in turn.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after half-close: %d, %v; want end of file", n, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Open != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pair still open: %v", p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A target that refuses is an accepted connection reset at once.
func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	_ = ln.Close()
	p, err := Start("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	// The reset may come before the dial returns, or after.
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err == nil {
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read through a proxy whose target is down succeeded")
		}
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial: %v, want success or a reset", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s := p.Stats(); s.DialErrs != 1 || s.Open != 0; s = p.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats: %v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// While swallowing, what a client writes is dropped: its writes succeed
// and no echo comes back. Turned off, the link carries bytes again.
func TestSwallow(t *testing.T) {
	p, err := Start("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")
	p.Swallow(true)
	if _, err := c.Write([]byte("lost\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 16)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes, %v: want nothing", n, err)
	}
	p.Swallow(false)
	roundTrip(t, c, "after")
}
