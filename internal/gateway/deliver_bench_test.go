//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package gateway

import (
	"os"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

// benchServer is just enough of a gateway to run the fan-out path: one
// channel whose subscribers write to /dev/null, so the benchmark measures
// the dispatcher and the write system call, not a network.
func benchServer(b *testing.B, subscribers int) (*Server, *dispatcher, []*nats.Msg, []int) {
	b.Helper()
	app := &config.App{ID: "1", Key: "k", Secret: "s", MaxMessageSize: 10000}
	s := &Server{log: zerolog.Nop(), stats: map[string]*appStat{}}
	s.prom = metrics.NewGateway(metrics.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 })
	s.hub = newHub(nil, nil, 0)
	rx, err := reactor.New(reactor.Config{Kind: reactor.Native(), Pollers: 1, MaxOutbound: 1 << 20, MaxOutboundTotal: 1 << 30,
		Handler: &sessions{s: s}, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	s.rx = rx
	p := rx.Next()
	var fds []int
	subject := route.Subject(app.ID, "bench")
	ch := &channel{app: app, name: "bench", subject: subject, shard: s.hub.shardFor(subject), refs: subscribers, index: map[*conn]int{}}
	ch.shard.channels[subject] = ch
	for i := 0; i < subscribers; i++ {
		fd, err := unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = unix.Close(fd) })
		c := &conn{app: app, sidA: uint64(i + 1), sidB: 1}
		if err := p.Adopt(&c.Conn, fd); err != nil {
			b.Fatal(err)
		}
		fds = append(fds, fd)
		ch.join(c, nil, nil, 0)
	}
	frame := protocol.AppendTextFrame(nil, protocol.AppendChannelEvent(nil, "App\\Events\\OrderShipped", "bench", `{"order_id":42,"status":"shipped"}`, ""))
	var msgs []*nats.Msg
	for i := 0; i < 4; i++ {
		env := route.AppendDelivery(nil, route.Delivery{Seq: uint64(i + 1), Frame: frame})
		msgs = append(msgs, &nats.Msg{Subject: subject, Data: env})
	}
	return s, &dispatcher{scratch: writeScratch{iovecs: make([]reactor.Iovec, 0, maxBatch)}}, msgs, fds
}

// BenchmarkFanout writes one event to 1,000 subscribers per iteration:
// the allocations reported are per event, so 0 means none per delivery.
func BenchmarkFanout(b *testing.B) {
	s, d, msgs, _ := benchServer(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d.msgs = append(d.msgs[:0], msgs[0])
		resetDedup(s) // let the same sequence through again
		s.dispatchBatch(d)
	}
	b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkFanoutCoalesced writes four queued events to 1,000 subscribers
// per iteration, one writev per subscriber.
func BenchmarkFanoutCoalesced(b *testing.B) {
	s, d, msgs, _ := benchServer(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d.msgs = append(d.msgs[:0], msgs...)
		resetDedup(s)
		s.dispatchBatch(d)
	}
	b.ReportMetric(float64(b.N)*4000/b.Elapsed().Seconds(), "deliveries/s")
}

func resetDedup(s *Server) {
	for i := range s.hub.shards {
		for _, ch := range s.hub.shards[i].channels {
			ch.recent = [dedupWindow]uint64{}
		}
	}
}

// BenchmarkRawWriteCeiling is the baseline for BenchmarkFanout: the same
// frame written to the same 1,000 descriptors by a bare loop of write(2),
// with none of the gateway's work. The ratio of the two is the share of
// the raw-syscall ceiling the fan-out path reaches at one frame per write.
func BenchmarkRawWriteCeiling(b *testing.B) {
	_, _, msgs, fds := benchServer(b, 1000)
	env, err := route.ParseDelivery(msgs[0].Data)
	if err != nil {
		b.Fatal(err)
	}
	frame := env.Frame
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, fd := range fds {
			if _, err := unix.Write(fd, frame); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)*float64(len(fds))/b.Elapsed().Seconds(), "deliveries/s")
}
