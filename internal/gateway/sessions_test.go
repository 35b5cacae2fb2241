package gateway

import (
	"net"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/protocol"
)

// testConnServer is just enough of a gateway for a connection's write
// side: limits, metrics, and a reactor of the given kind with one poller,
// running.
func testConnServer(t *testing.T, kind string, maxOutbound int, maxTotal int64) *Server {
	t.Helper()
	s := &Server{log: zerolog.Nop(), stats: map[string]*appStat{}, epoch: time.Now()}
	s.opts.MaxOutbound, s.opts.MaxOutboundTotal = maxOutbound, maxTotal
	s.prom = metrics.NewGateway(metrics.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 })
	s.stats["1"] = &appStat{conns: s.prom.Connections.WithLabelValues("1")}
	s.frames.ping = protocol.AppendTextFrame(nil, protocol.MessagePing)
	s.frames.pong = protocol.AppendTextFrame(nil, protocol.MessagePong)
	rx, err := reactor.New(reactor.Config{Kind: kind, Pollers: 1, MaxOutbound: maxOutbound, MaxOutboundTotal: maxTotal,
		Epoch: s.epoch, Handler: &sessions{s: s}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s.rx = rx
	rx.Start()
	t.Cleanup(rx.Stop) // registered first, so run last: after the sockets close
	return s
}

// testConn hands nc to s's reactor as a connection of app "1".
func testConn(t *testing.T, s *Server, nc net.Conn) *conn {
	t.Helper()
	c := &conn{app: &config.App{ID: "1", Key: "k", Secret: "s"}, sidA: 1, sidB: 2, lastSeen: s.ticks(time.Now())}
	p := s.rx.Next()
	if err := p.Open(&c.Conn, nc); err != nil {
		t.Fatal(err)
	}
	if err := p.Add(&c.Conn); err != nil {
		t.Fatal(err)
	}
	return c
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(time.Millisecond)
	}
}

// An idle connection costs its conn: keep it in the 160-byte size class
// on 64-bit platforms (reactor.Conn 56, the session's state 104).
func TestConnSize(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("64-bit platforms only")
	}
	if got := unsafe.Sizeof(conn{}); got > 160 {
		t.Fatalf("conn is %d bytes, past the 160-byte size class", got)
	}
}
