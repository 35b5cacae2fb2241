package worker_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/worker"
)

// A worker dies holding several unacked jobs of one channel; another,
// already pulling the partition, takes it over once JetStream's pin
// lapses. The dead worker's jobs must come out of it in stream order, and
// before the jobs queued after them.
//
// They do not come back from JetStream in that order: once they are due
// again, each time something wakes the consumer while the pin still names
// the dead worker (their own expiry, a job published, a pull request),
// nats-server takes the first of its redelivery queue, finds no pull
// request it may serve, and appends it back at the end (nats-server
// consumer.go, loopAndGatherMsgs after nextWaiting returns nil). So the
// new owner receives them rotated, [4 5 … 8 1 2 3], then the later jobs;
// the pool puts them back in order (internal/ordered).
//
// The pin must also outlast the dead worker's jobs' ack wait however long
// the worker had been idle: JetStream's pin lapses PinnedTTL after the
// pinned worker's last pull request, not after its last job, and a pull
// request for many jobs lasts until it expires (30 s by default). The
// worker had the pin for a while, received its jobs on an old pull
// request, and died: the pin lapsed before the jobs were due again, the
// next owner was given the later jobs first, [9 10 11 1 2 … 8].
//
// Each case takes about queue.PinnedTTL, the idle one 7 s more.
func TestDeadWorkersJobsAreRedeliveredInOrder(t *testing.T) {
	for _, tc := range []takeOver{
		{name: "with later jobs", later: 3, laterAt: queue.AckWait + time.Second},
		{name: "alone"},
		{name: "after an idle spell", idle: 7 * time.Second, later: 3, laterAt: queue.AckWait - time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t)
		})
	}
}

type takeOver struct {
	name string
	// idle, if set, is how long the first worker holds its pin, idle,
	// before it takes the jobs it dies with.
	idle time.Duration
	// later is how many jobs are published on the channel laterAt after
	// the first worker's death: after the ack wait, they come while its
	// jobs are due again and the pin not yet lapsed, each waking the
	// consumer, and the first of them also tells the new owner that the
	// redeliveries are over. With none, only the redeliveries' own
	// expiry wakes it, and nothing comes after them.
	later   int
	laterAt time.Duration
}

func (tc takeOver) run(t *testing.T) {
	const held = 8
	ns, _, js, ctx := startStream(t, "producer")
	pub := queue.NewPublisher(js)

	// The worker that dies takes the jobs and delivers none.
	stuck := make(chan struct{})
	var blocking atomic.Bool
	blocking.Store(tc.idle == 0)
	deadOpts := poolOptions(t, ns, "worker-dead", func(o *worker.Options) {
		publish := o.Conn.Publish
		o.Deliver = func(subject string, envelope []byte) error {
			if !blocking.Load() {
				return publish(subject, envelope)
			}
			<-stuck
			return errInjected
		}
	})
	runPool(t, worker.New(deadOpts))
	t.Cleanup(func() { close(stuck) }) // before the pool is stopped
	if tc.idle > 0 {
		// A first job gives it the pin; then it idles.
		if _, err := pub.Publish(ctx, oneEvent("c", "0")); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the first job acked", func() bool { return ackPending(ctx, js) == 0 && streamEmpty(ctx, js) })
		time.Sleep(tc.idle)
		blocking.Store(true)
	}
	for i := 1; i <= held; i++ {
		if _, err := pub.Publish(ctx, oneEvent("c", strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the jobs held by the first worker", func() bool { return ackPending(ctx, js) == held })

	// The next owner pulls the partition beside it, as it does once the
	// registry says the first is gone: it gets nothing while the pin
	// names the first.
	var mu sync.Mutex
	var got [][]byte
	next := worker.New(poolOptions(t, ns, "worker-next", func(o *worker.Options) {
		o.Deliver = func(_ string, envelope []byte) error {
			mu.Lock()
			got = append(got, slices.Clone(envelope))
			mu.Unlock()
			return nil
		}
	}))
	runPool(t, next)
	eventually(t, "the next owner pulling", func() bool {
		for k := 0; k < queue.DefaultPartitions; k++ {
			c, err := js.Consumer(ctx, queue.StreamName, queue.ConsumerName(k))
			if err != nil {
				return false
			}
			if info, err := c.Info(ctx); err != nil || info.NumWaiting < 1 {
				return false
			}
		}
		return true
	})

	// The first worker dies: its connection goes, nothing is acked.
	deadOpts.Conn.Close()
	died := time.Now()
	if tc.later > 0 {
		// This wait proves nothing; no assertion depends on its length.
		time.Sleep(time.Until(died.Add(tc.laterAt)))
		for i := held + 1; i <= held+tc.later; i++ {
			if _, err := pub.Publish(ctx, oneEvent("c", strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}

	var order []string
	var seqs []uint64
	for deadline := time.Now().Add(queue.PinnedTTL + 3*wait); ; {
		mu.Lock()
		for _, env := range got[len(order):] {
			d := decode(t, &nats.Msg{Data: env})
			order = append(order, d.event["data"].(string))
			seqs = append(seqs, d.seq)
		}
		mu.Unlock()
		if len(order) >= held+tc.later {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, the next owner delivered %v of %d jobs", time.Since(died), order, held+tc.later)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := make([]string, held+tc.later)
	for i := range want {
		want[i] = strconv.Itoa(i + 1)
	}
	t.Logf("delivered %v, %v after the first worker died", order, time.Since(died).Round(10*time.Millisecond))
	if !slices.Equal(order, want) {
		t.Fatalf("the next owner delivered %v (stream sequences %v), want %v", order, seqs, want)
	}
	eventually(t, "every job acked", func() bool { return ackPending(ctx, js) == 0 })
}

// streamEmpty reports that the job stream holds no job.
func streamEmpty(ctx context.Context, js jetstream.JetStream) bool {
	s, err := js.Stream(ctx, queue.StreamName)
	if err != nil {
		return false
	}
	n, err := queue.Jobs(ctx, s)
	return err == nil && n == 0
}
