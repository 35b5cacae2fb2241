package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// A delivery published again long after it first went out (its job's ack
// was lost with a NATS node, and JetStream delivered the job to a worker
// again) is dropped by the gateway however many deliveries came between:
// the worker marks it as a repeat. Without the mark, only the last
// dedupWindow positions of a channel are recognised.
func TestRepeatedDeliveryIsDroppedPastTheWindow(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	srv := natstest.Server(t, true)
	s := baseSettings(t)
	s.NATSURL = srv.ClientURL()
	cfg, err := (&config.Config{Settings: s}).WithApp(app1)
	if err != nil {
		t.Fatal(err)
	}
	n := startOn(t, cfg, log)
	c := pushertest.Connect(t, n.Addr().String(), app1.Key)
	c.Subscribe("c")

	nc := natstest.Conn(t, srv, "test-worker")
	subject := route.Subject(app1.ID, "c")
	deliver := func(seq uint64, repeat bool) {
		frame := protocol.AppendTextFrame(nil, protocol.AppendChannelEvent(nil, "e", "c", fmt.Sprint(seq), ""))
		if err := nc.Publish(subject, route.AppendDelivery(nil, route.Delivery{Seq: seq, Repeat: repeat, Frame: frame})); err != nil {
			t.Fatal(err)
		}
	}
	for seq := uint64(1); seq <= 200; seq++ {
		deliver(seq, false)
	}
	deliver(5, true)   // far behind the window: dropped
	deliver(201, true) // a repeat of nothing the channel had: written
	deliver(202, false)
	for want := 1; want <= 202; want++ {
		m := c.Expect("e")
		if m.DataString() != fmt.Sprint(want) {
			t.Fatalf("got event %s, want %d", m.DataString(), want)
		}
	}
	if m, err := c.Read(200 * time.Millisecond); err == nil {
		t.Fatalf("got %s after the last event", m.Raw)
	}
}
