package worker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

// A job set aside after its attempts leaves no job published before it
// waiting for its ack: the shard confirms those as soon as it is idle,
// as it does after a job that went through. Here the job before the
// poison one went out while the poison one was already queued (so the
// shard was not idle, and did not confirm it then); handle returned
// from the set-aside without confirming, and the first job stayed
// unacked until JetStream delivered it again, after its ack wait.
func TestJobBeforeADeadLetteredOneIsAckedWithoutRedelivery(t *testing.T) {
	ns := natstest.Server(t, false)
	js, err := jetstream.New(natstest.Conn(t, ns, "producer"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := history.Ensure(ctx, js, history.Options{MaxAge: time.Hour, MaxBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	const app = "app"
	wc := natstest.Conn(t, ns, "worker")
	wjs, err := jetstream.New(wc)
	if err != nil {
		t.Fatal(err)
	}
	var pool *Pool
	entered := make(chan struct{})
	var once sync.Once
	good, poison := route.Subject(app, "good"), route.Subject(app, "poison")
	pool = New(Options{Conn: wc, JetStream: wjs, Apps: func(id string) bool { return id == app }, Limits: protocol.DefaultLimits,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), Workers: 1, MaxAttempts: 2,
		RetryBackoff: 5 * time.Millisecond, RetryBackoffMax: 20 * time.Millisecond,
		Recovers: func(string) bool { return true },
		Record: func(subject string, _ []byte) error {
			switch subject {
			case good:
				// The first time, until the poison job is queued behind:
				// the shard is not idle once this one is published.
				once.Do(func() {
					close(entered)
					for len(pool.shards[0].in) == 0 {
						time.Sleep(time.Millisecond)
					}
				})
			case poison:
				return errors.New("injected failure")
			}
			return nil
		}})
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })

	pub := queue.NewPublisher(js)
	for _, ch := range []string{"good", "poison"} {
		if _, err := pub.Publish(ctx, &queue.Job{AppID: app, Events: []protocol.Trigger{{Name: "e", Data: "{}", Channels: []string{ch}}}}); err != nil {
			t.Fatal(err)
		}
		if ch == "good" {
			<-entered // the jobs are on different partitions: in order
		}
	}
	// Both settled: one acked, one set aside.
	delivered := 0
	for {
		if ctx.Err() != nil {
			t.Fatal("the jobs were not settled")
		}
		pending, n, ok := 0, 0, true
		for k := 0; k < queue.DefaultPartitions && ok; k++ {
			c, err := js.Consumer(ctx, queue.StreamName, queue.ConsumerName(k))
			if err != nil {
				ok = false // not made yet
				break
			}
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pending += info.NumAckPending
			n += int(info.Delivered.Consumer)
		}
		if ok && pending == 0 && n >= 2 && pool.stats.DeadLettered.Load() == 1 {
			delivered = n
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if delivered != 2 {
		t.Fatalf("JetStream made %d deliveries of the 2 jobs: the first was acked only once delivered again", delivered)
	}
	if n := pool.stats.Jobs.Load(); n != 1 {
		t.Fatalf("%d jobs acked, want 1", n)
	}
}
