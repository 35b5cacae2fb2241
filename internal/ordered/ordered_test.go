package ordered_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/ordered"
)

// rig is a real JetStream stream and a consumer on it, and a lane that
// records what it dispatches (and acks it).
type rig struct {
	t    *testing.T
	js   jetstream.JetStream
	cons jetstream.Consumer
	lane *ordered.Lane

	mu   sync.Mutex
	got  []string // the messages' data, in dispatch order
	gaps []uint64
}

func newRig(t *testing.T, ackWait time.Duration) *rig {
	t.Helper()
	_, js := natstest.JetStream(t, "ordered-test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, js: js, cons: cons}
	r.lane = ordered.New(ordered.Options{
		AckWait: ackWait, MaxAckPending: 1000,
		Dispatch: func(msg jetstream.Msg, _ *jetstream.MsgMetadata) {
			r.mu.Lock()
			r.got = append(r.got, string(msg.Data()))
			r.mu.Unlock()
			_ = msg.Ack()
		},
		Gap: func(lost uint64) {
			r.mu.Lock()
			r.gaps = append(r.gaps, lost)
			r.mu.Unlock()
		},
	})
	return r
}

func (r *rig) publish(from, to int) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := from; i <= to; i++ {
		if _, err := r.js.Publish(ctx, "t.x", []byte(strconv.Itoa(i))); err != nil {
			r.t.Fatal(err)
		}
	}
}

// fetch takes n deliveries from the consumer, unacked.
func (r *rig) fetch(n int) []jetstream.Msg {
	r.t.Helper()
	var out []jetstream.Msg
	for deadline := time.Now().Add(10 * time.Second); len(out) < n; {
		if time.Now().After(deadline) {
			r.t.Fatalf("fetched %d of %d", len(out), n)
		}
		b, err := r.cons.Fetch(n-len(out), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			r.t.Fatal(err)
		}
		for m := range b.Messages() {
			out = append(out, m)
		}
	}
	return out
}

func (r *rig) dispatched() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *rig) await(n int) []string {
	r.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if got := r.dispatched(); len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("dispatched %v, want %d", r.dispatched(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func numbered(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

// redelivered takes messages 1..n delivered a second time: delivered once
// and left unacked for the ack wait, as a consumer that died leaves them.
func (r *rig) redelivered(n int, ackWait time.Duration) map[string]jetstream.Msg {
	r.t.Helper()
	r.publish(1, n)
	r.fetch(n)
	time.Sleep(ackWait) // for them to be due again; nothing asserts on it
	out := map[string]jetstream.Msg{}
	for _, m := range r.fetch(n) {
		meta, err := m.Metadata()
		if err != nil || meta.NumDelivered != 2 {
			r.t.Fatalf("delivery %s: %+v %v, want a second delivery", m.Data(), meta, err)
		}
		out[string(m.Data())] = m
	}
	return out
}

// A dead consumer's messages come back rotated (nats-server re-appends
// the head of its redelivery queue each time it finds no one to send it
// to): the lane dispatches them in stream order, all before the first
// message delivered for the first time, which it dispatches at once.
func TestRotatedRedeliveriesAreDispatchedInStreamOrder(t *testing.T) {
	const ackWait = 500 * time.Millisecond
	r := newRig(t, ackWait)
	again := r.redelivered(5, ackWait)
	for _, k := range []string{"4", "5", "1", "2", "3"} {
		if err := r.lane.Receive(again[k]); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.dispatched(); len(got) != 0 {
		t.Fatalf("dispatched %v before the redeliveries were over", got)
	}
	r.publish(6, 6)
	first := r.fetch(1)[0]
	if err := r.lane.Receive(first); err != nil {
		t.Fatal(err)
	}
	// Dispatch is synchronous: the first delivery pushed everything out.
	if got := r.dispatched(); !slices.Equal(got, numbered(1, 6)) {
		t.Fatalf("dispatched %v, want %v", got, numbered(1, 6))
	}
}

// With nothing after them, the redeliveries go out in stream order once
// no more has come for RedeliveryQuiet; a delivery of one again while
// held replaces it (dispatched once).
func TestRedeliveriesAloneGoOutAfterTheQuiet(t *testing.T) {
	const ackWait = 500 * time.Millisecond
	r := newRig(t, ackWait)
	again := r.redelivered(4, ackWait)
	for _, k := range []string{"3", "4", "1", "3", "2"} {
		if err := r.lane.Receive(again[k]); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.await(4); !slices.Equal(got, numbered(1, 4)) {
		t.Fatalf("dispatched %v, want %v", got, numbered(1, 4))
	}
	if n := r.lane.Held(); n != 0 {
		t.Fatalf("%d still held", n)
	}
}

// A delivery lost on the way (with a NATS node or link) leaves a gap in
// the consumer's delivery sequence; the lost message comes back an ack
// wait later. The lane holds what follows the gap until then (telling
// JetStream it is in progress, so that it is not delivered again), and
// dispatches it all in stream order, the lost one in its place.
func TestGapHoldsTheLaneUntilTheLostDeliveryComesBack(t *testing.T) {
	// Progress goes every ackWait/4; under a loaded test run a timer can
	// be late by a second, and held messages reported late are delivered
	// again (CI saw [1 2 3 4 5 6 4 5 6 7] with 2 s and 1 s reports).
	const ackWait = 3 * time.Second
	r := newRig(t, ackWait)
	r.publish(1, 6)
	var lost sync.Once
	cc, err := r.cons.Consume(func(msg jetstream.Msg) {
		if string(msg.Data()) == "3" {
			dropped := false
			lost.Do(func() { dropped = true })
			if dropped {
				return // lost on the way: JetStream counts it delivered
			}
		}
		if err := r.lane.Receive(msg); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	if got := r.await(6); !slices.Equal(got, numbered(1, 6)) {
		t.Fatalf("dispatched %v, want %v", got, numbered(1, 6))
	}
	// Later messages go straight on again.
	r.publish(7, 8)
	if got := r.await(8); !slices.Equal(got, numbered(1, 8)) {
		t.Fatalf("dispatched %v, want %v", got, numbered(1, 8))
	}
	r.mu.Lock()
	gaps := fmt.Sprint(r.gaps)
	r.mu.Unlock()
	if gaps != "[1]" {
		t.Errorf("gaps %s, want one of one delivery", gaps)
	}
}

// A lane whose consumer stopped dispatches what it holds on Flush, at
// once.
func TestFlushDispatchesWhatIsHeld(t *testing.T) {
	const ackWait = 500 * time.Millisecond
	r := newRig(t, ackWait)
	again := r.redelivered(3, ackWait)
	for _, k := range []string{"2", "3", "1"} {
		if err := r.lane.Receive(again[k]); err != nil {
			t.Fatal(err)
		}
	}
	r.lane.Flush()
	if got := r.dispatched(); !slices.Equal(got, numbered(1, 3)) {
		t.Fatalf("dispatched %v, want %v", got, numbered(1, 3))
	}
}

// SettledOnServer: false while a message is delivered and unacked, true
// once it is acked.
func TestSettledOnServer(t *testing.T) {
	r := newRig(t, 30*time.Second)
	r.publish(1, 1)
	m := r.fetch(1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ordered.SettledOnServer(ctx, r.cons, time.Now(), 0, 0) {
		t.Fatal("settled with a message unacked")
	}
	if err := m.Ack(); err != nil {
		t.Fatal(err)
	}
	if !ordered.SettledOnServer(ctx, r.cons, time.Now(), 0, 5*time.Second) {
		t.Fatal("not settled once acked")
	}
}
