package worker_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/tcpproxy"
	"github.com/resoundhq/resound/internal/worker"
	"github.com/resoundhq/resound/protocol"
)

// A worker's deliveries written to a connection whose server then loses
// them (bytes in flight when a NATS node dies) are published again after
// the reconnect, before anything later on their channel, and the job is
// acked only then. Here a proxy swallows what the worker sends, then the
// link is cut: without the confirmation, the job's ack would be lost with
// it, the next job would go first, and JetStream would deliver the lost
// one again only after the ack wait: out of order.
func TestDeliveriesLostWithTheConnectionArePublishedAgainInOrder(t *testing.T) {
	ns := natstest.Server(t, true)
	nc := connect(t, ns, "producer")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Deliveries are confirmed by the history stream.
	if _, err := history.Ensure(ctx, js, history.Options{MaxAge: time.Hour, MaxBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	e := &env{ns: ns, js: js, pub: queue.NewPublisher(js), sub: connect(t, ns, "subscriber")}

	proxy, err := tcpproxy.Start("127.0.0.1:0", strings.TrimPrefix(ns.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	wc, err := nats.Connect("nats://"+proxy.Addr(), nats.Name("worker"), nats.ReconnectBufSize(-1),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wc.Close)
	wjs, err := jetstream.New(wc)
	if err != nil {
		t.Fatal(err)
	}
	pool := worker.New(worker.Options{Conn: wc, JetStream: wjs, Apps: func(id string) bool { return id == appID },
		Limits: protocol.DefaultLimits, ReconnectHold: 50 * time.Millisecond})
	runPool(t, pool)
	ch := e.subscribe(t, route.Subject(appID, "c"))

	e.publish(t, oneEvent("c", "1"))
	if d := decode(t, receive(t, ch)); d.event["data"] != "1" {
		t.Fatalf("got %v", d.event)
	}
	eventually(t, "job 1 acked", func() bool { return pool.Stats().Jobs.Load() == 1 })

	proxy.Swallow(true)
	e.publish(t, oneEvent("c", "2"))
	eventually(t, "job 2 published into the void", func() bool { return pool.Stats().Deliveries.Load() == 2 })
	proxy.Cut()
	proxy.Swallow(false)
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	e.publish(t, oneEvent("c", "3"))

	for _, want := range []string{"2", "3"} {
		if d := decode(t, receive(t, ch)); d.event["data"] != want {
			t.Fatalf("got %v, want data %s", d.event, want)
		}
	}
	nothingMore(t, ch)
	eventually(t, "jobs 2 and 3 acked", func() bool { return pool.Stats().Jobs.Load() == 3 })
}

// A history stream deleted by hand holds the jobs back only until the
// worker has made it again: deliveries it does not acknowledge are
// published again, and their jobs acked once it stores them.
func TestHistoryDeletedIsMadeAgain(t *testing.T) {
	ns, _, js, ctx := startStream(t, "producer")
	if err := js.DeleteStream(ctx, history.StreamName); err != nil {
		t.Fatal(err)
	}
	opts := history.Options{MaxAge: time.Hour, MaxBytes: 64 << 20}
	pool := worker.New(poolOptions(t, ns, "worker", func(o *worker.Options) {
		o.RetryBackoff = 10 * time.Millisecond
		o.EnsureHistory = func(ctx context.Context) error {
			_, err := history.Ensure(ctx, js, opts)
			return err
		}
	}))
	runPool(t, pool)
	e := &env{ns: ns, js: js, pub: queue.NewPublisher(js)}
	e.publish(t, oneEvent("c", "1"))
	eventually(t, "job acked", func() bool { return pool.Stats().Jobs.Load() == 1 })
	s, err := js.Stream(ctx, history.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n < 1 {
		t.Fatalf("the history holds %d deliveries", n)
	}
}

// A worker that stops cleanly unpins the partitions it drained, so that
// the next owner starts at once instead of waiting out queue.PinnedTTL.
func TestCleanStopUnpinsPartitions(t *testing.T) {
	ns, _, js, ctx := startStream(t, "producer")
	pool := worker.New(poolOptions(t, ns, "worker"))
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(runCtx) }()
	e := &env{ns: ns, js: js, pub: queue.NewPublisher(js)}
	e.publish(t, oneEvent("c", "1"))
	eventually(t, "job acked", func() bool { return pool.Stats().Jobs.Load() == 1 })
	pinned := func() []int {
		var parts []int
		for part := 0; part < queue.DefaultPartitions; part++ {
			c, err := js.Consumer(ctx, queue.StreamName, queue.ConsumerName(part))
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range info.PriorityGroups {
				if g.PinnedClientID != "" {
					parts = append(parts, part)
				}
			}
		}
		return parts
	}
	eventually(t, "partitions pinned while running", func() bool { return len(pinned()) > 0 })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if parts := pinned(); len(parts) > 0 {
		t.Fatalf("partitions %v still pinned after a clean stop", parts)
	}
}

// The history made again also when the deliveries it does not
// acknowledge fail the job's attempt itself rather than the shard's
// confirmation: here the job's second event is on the channel of its
// first, so its delivery waits for the first's acknowledgement (one in
// flight per channel), which never comes. Ensured only from confirmAll,
// the shard retried the job forever.
func TestHistoryDeletedIsMadeAgainForASecondEventOnTheChannel(t *testing.T) {
	ns, _, js, ctx := startStream(t, "producer")
	if err := js.DeleteStream(ctx, history.StreamName); err != nil {
		t.Fatal(err)
	}
	opts := history.Options{MaxAge: time.Hour, MaxBytes: 64 << 20}
	var ensured atomic.Int32
	pool := worker.New(poolOptions(t, ns, "worker", func(o *worker.Options) {
		o.RetryBackoff = 10 * time.Millisecond
		o.EnsureHistory = func(ctx context.Context) error {
			ensured.Add(1)
			_, err := history.Ensure(ctx, js, opts)
			return err
		}
	}))
	runPool(t, pool)
	e := &env{ns: ns, js: js, pub: queue.NewPublisher(js)}
	e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{
		{Name: "e", Data: "1", Channels: []string{"c"}},
		{Name: "e", Data: "2", Channels: []string{"c"}},
	}})
	eventually(t, "job acked", func() bool { return pool.Stats().Jobs.Load() == 1 })
	if ensured.Load() == 0 {
		t.Fatal("the history was never ensured")
	}
}
