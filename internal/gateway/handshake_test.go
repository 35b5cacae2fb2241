package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/metrics"
)

// The handshake queue (handshake.go): new sockets wait for their request
// head without a goroutine, then for one of a few handshake workers.

var hsApp = config.App{ID: "1", Key: "hs-key", Secret: "hs-secret"}

// partialHead is the start of an upgrade that never ends: a slowloris.
const partialHead = "GET /app/hs-key?protocol=7 HTTP/1.1\r\nHost: x\r\n"

func limitHits(s *Server, l metrics.Limit) float64 {
	return counterValue(s.prom.LimitHits.WithLabelValues(string(l)))
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// dialSlow opens a socket to addr and sends it the start of a head, and no
// more.
func dialSlow(t *testing.T, addr, start string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if start != "" {
		if _, err := c.Write([]byte(start)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// dialWithin upgrades and reads connection_established, giving up after
// limit (a condition's deadline, not a measure: a handshake here takes
// milliseconds).
func dialWithin(addr, key string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+addr+"/app/"+key+"?protocol=7")
	if err != nil {
		return err
	}
	defer conn.Close()
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	_ = conn.SetReadDeadline(time.Now().Add(limit))
	b := make([]byte, 512)
	n, err := io.ReadAtLeast(r, b, 2)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b[:n]), "pusher:connection_established") {
		return errors.New("no connection_established in " + string(b[:n]))
	}
	return nil
}

// Slow clients wait for their heads outside the workers: with two workers
// and many clients that sent half a head, another client still connects
// at once, on the epoll reactor (one goroutine waits for all heads) and
// the portable one (a goroutine each).
func TestSlowHandshakesDoNotHoldTheWorkers(t *testing.T) {
	for _, kind := range []string{ReactorAuto, ReactorPortable} {
		t.Run(kind, func(t *testing.T) {
			s, addr := realServerWith(t, hsApp, func(o *Options) {
				o.Reactor = kind
				o.HandshakeWorkers = 2
				o.HandshakeTimeout = time.Minute
			})
			const slow = 40
			for i := range slow {
				start := partialHead
				if i%2 == 1 {
					start = "" // connected, and silent
				}
				dialSlow(t, addr, start)
			}
			waitUntil(t, "slow handshakes admitted", func() bool { return s.handshakes.Load() == slow })
			for range 3 {
				if err := dialWithin(addr, hsApp.Key, 10*time.Second); err != nil {
					t.Fatalf("a bystander's handshake behind %d slow ones: %v", slow, err)
				}
			}
			waitUntil(t, "only the slow handshakes in progress", func() bool { return s.handshakes.Load() == slow })
		})
	}
}

// RESOUND_MAX_HANDSHAKES bounds the queue: the sockets waiting for a
// head count, and the one past it gets 503 at once.
func TestHandshakeQueueIsBounded(t *testing.T) {
	s, addr := realServerWith(t, hsApp, func(o *Options) {
		o.MaxHandshakes = 8
		o.HandshakeWorkers = 1
		o.HandshakeTimeout = time.Minute
	})
	var waiting []net.Conn
	for range 8 {
		waiting = append(waiting, dialSlow(t, addr, partialHead))
	}
	waitUntil(t, "queue full", func() bool { return s.handshakes.Load() == 8 })

	c := dialSlow(t, addr, "GET /app/hs-key?protocol=7 HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 503") {
		t.Fatalf("past the bound: %q, %v; want a 503", line, err)
	}
	if n := limitHits(s, metrics.LimitHandshakes); n != 1 {
		t.Fatalf("handshakes limit hit %v times, want 1", n)
	}

	// A client that goes away gives its place back.
	_ = waiting[0].Close()
	waitUntil(t, "a place free", func() bool { return s.handshakes.Load() == 7 })
	if err := dialWithin(addr, hsApp.Key, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// The handshake deadline runs from accept: a client that trickles its head
// a byte at a time does not get more time with each byte.
func TestHandshakeDeadlineRunsFromAccept(t *testing.T) {
	const timeout = time.Second
	s, addr := realServerWith(t, hsApp, func(o *Options) { o.HandshakeTimeout = timeout })
	c := dialSlow(t, addr, "")
	accepted := time.Now()
	closed := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		closed <- err
	}()
	head := partialHead + strings.Repeat("X-Pad: 1\r\n", 100)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case err := <-closed:
			if err == nil {
				t.Fatal("the server answered a head it never got")
			}
			if since := time.Since(accepted); since < timeout {
				t.Fatalf("closed after %v, before the %v deadline", since, timeout)
			}
			waitUntil(t, "timeout counted", func() bool { return limitHits(s, metrics.LimitHandshakeTimeout) == 1 })
			waitUntil(t, "handshake over", func() bool { return s.handshakes.Load() == 0 })
			return
		case <-tick.C:
			if i >= len(head) {
				t.Fatal("the whole head trickled in before the deadline closed the socket")
			}
			_, _ = c.Write([]byte{head[i]})
		}
	}
}

// A socket whose deadline passed while it waited for a worker is closed
// without work: no upgrade, counted as a handshake timeout.
func TestHandshakeExpiredInTheQueueIsClosed(t *testing.T) {
	s, _ := realServerWith(t, hsApp, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client := dialSlow(t, ln.Addr().String(), "")
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}

	s.handshakes.Add(1) // as admit does
	h := s.handshakePool.Get().(*handshake)
	h.nc, h.counted, h.pooled = server, true, true
	h.deadline = time.Now().Add(-time.Millisecond)
	h.pending = append(h.pending[:0], "GET /app/hs-key?protocol=7 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"+
		"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"...)
	h.readErr = nil
	h.step()

	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(client); err != nil || len(b) > 0 {
		t.Fatalf("expired handshake answered %q (%v); want a plain close", b, err)
	}
	if n := limitHits(s, metrics.LimitHandshakeTimeout); n != 1 {
		t.Fatalf("handshake timeouts %v, want 1", n)
	}
	if n := counterValue(s.prom.Handshakes); n != 0 {
		t.Fatalf("%v upgrades, want none", n)
	}
	if n := s.handshakes.Load(); n != 0 {
		t.Fatalf("%d handshakes still counted", n)
	}
}

func TestHeadIn(t *testing.T) {
	s := &Server{opts: Options{MaxRequestHead: 4096, ProxyProtocol: true}}
	v2 := append([]byte{}, proxyV2Signature...)
	v2 = append(v2, 0x21, 0x11, 0, 12) // PROXY, TCP over IPv4, 12 bytes of addresses
	v2 = append(v2, make([]byte, 12)...)
	for _, tc := range []struct {
		name    string
		trusted bool
		b       string
		in      bool
	}{
		{"empty", false, "", false},
		{"request line", false, "GET /app/k HTTP/1.1\r\n", false},
		{"head", false, "GET /app/k HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"bare newlines", false, "GET /app/k HTTP/1.1\nHost: x\n\n", true},
		{"line too long", false, "GET /" + strings.Repeat("a", headBufferSize), true},
		{"head too large", false, "GET / HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 600), true},
		{"v1 partial", true, "PROXY TCP4 1.2.3.4", false},
		{"v1 then no head", true, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n", false},
		{"v1 then head", true, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n", true},
		{"v2 signature only", true, string(proxyV2Signature), false},
		{"v2 header only", true, string(v2), false},
		{"v2 then head", true, string(v2) + "GET / HTTP/1.1\r\n\r\n", true},
		{"untrusted v2 signature", false, string(proxyV2Signature), true},
	} {
		h := &handshake{srv: s, trusted: tc.trusted, pending: []byte(tc.b)}
		if got := h.headIn(); got != tc.in {
			t.Errorf("%s: headIn %v, want %v", tc.name, got, tc.in)
		}
	}
}
