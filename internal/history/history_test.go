package history_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/route"
)

func setup(t *testing.T, opts history.Options) (*nats.Conn, jetstream.JetStream, *history.History, context.Context) {
	t.Helper()
	nc, js := natstest.JetStream(t, "history")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	h, err := history.Ensure(ctx, js, opts)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, h, ctx
}

// deliver publishes a delivery the way a worker does: core NATS, on the
// channel's subject.
func deliver(t *testing.T, nc *nats.Conn, channel string, seq uint64, event uint8) {
	t.Helper()
	env := route.AppendDelivery(nil, route.Delivery{Seq: seq, Event: event, Frame: []byte(fmt.Sprintf("%s/%d/%d", channel, seq, event))})
	if err := nc.Publish(route.Subject("1", channel), env); err != nil {
		t.Fatal(err)
	}
}

// stored waits until the stream holds n messages in all: a core publish
// reaches the stream a moment after the server takes it.
func stored(t *testing.T, h *history.History, n uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		last, err := h.Mark(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if last >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func frames(t *testing.T) (*[]string, func(string, []byte, uint64) error) {
	var got []string
	return &got, func(_ string, data []byte, _ uint64) error {
		env, err := route.ParseDelivery(data)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(env.Frame))
		return nil
	}
}

func TestSinceReplaysWhatFollowsAMark(t *testing.T) {
	nc, _, h, ctx := setup(t, history.Options{MaxAge: time.Minute, MaxBytes: 1 << 20})
	deliver(t, nc, "a", 1, 0)
	stored(t, h, 1)
	mark, err := h.Mark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deliver(t, nc, "a", 2, 0)
	deliver(t, nc, "b", 3, 0)
	deliver(t, nc, "a", 3, 1)
	stored(t, h, 4)
	got, f := frames(t)
	if err := h.Since(ctx, mark, 0, nil, f); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(*got) != "[a/2/0 b/3/0 a/3/1]" {
		t.Fatalf("all subjects: %v", *got)
	}
	got, f = frames(t)
	if err := h.Since(ctx, mark, 0, []string{route.Subject("1", "a")}, f); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(*got) != "[a/2/0 a/3/1]" {
		t.Fatalf("one channel: %v", *got)
	}
	// Nothing after the last mark: nothing to replay, at once.
	last, _ := h.Mark(ctx)
	got, f = frames(t)
	if err := h.Since(ctx, last, 0, nil, f); err != nil || len(*got) != 0 {
		t.Fatalf("%v %v", *got, err)
	}
}

func TestSinceExpiredWhenTheWindowMovedPastTheMark(t *testing.T) {
	nc, _, h, ctx := setup(t, history.Options{MaxAge: time.Minute, MaxBytes: 1 << 20})
	for i := uint64(1); i <= 3; i++ {
		deliver(t, nc, "a", i, 0)
	}
	stored(t, h, 3)
	mark, _ := h.Mark(ctx)
	// A mark from before the stream started over (a NATS restart) is
	// past its end.
	if err := h.Since(ctx, mark+100, 0, nil, func(string, []byte, uint64) error { return nil }); !errors.Is(err, history.ErrExpired) {
		t.Fatalf("mark past the end: %v", err)
	}
}

func TestSinceExpiredWhenBytesPushedItOut(t *testing.T) {
	nc, _, h, ctx := setup(t, history.Options{MaxAge: time.Minute, MaxBytes: 4096})
	deliver(t, nc, "a", 1, 0)
	stored(t, h, 1)
	mark, _ := h.Mark(ctx)
	for i := uint64(2); i < 200; i++ {
		deliver(t, nc, "a", i, 0) // ~60 bytes each: the first go
	}
	stored(t, h, 199)
	if err := h.Since(ctx, mark, 0, nil, func(string, []byte, uint64) error { return nil }); !errors.Is(err, history.ErrExpired) {
		t.Fatalf("got %v, want ErrExpired", err)
	}
}

func TestAfterReplaysAChannelFromAPosition(t *testing.T) {
	nc, _, h, ctx := setup(t, history.Options{MaxAge: time.Minute, MaxBytes: 1 << 20})
	start := time.Now().Add(-time.Second)
	deliver(t, nc, "a", 5, 0)
	deliver(t, nc, "a", 5, 1)
	deliver(t, nc, "b", 6, 0)
	deliver(t, nc, "a", 7, 0)
	deliver(t, nc, "a", 7, 0) // a worker's repeat
	deliver(t, nc, "a", 9, 0)
	// A frame a gateway made (a client event): no position.
	if err := nc.Publish(route.Subject("1", "a"), route.AppendDelivery(nil, route.Delivery{Frame: []byte("client")})); err != nil {
		t.Fatal(err)
	}
	stored(t, h, 7)
	pos := uint64(5<<4 | 1)
	var got []string
	n, err := h.After(ctx, route.Subject("1", "a"), pos, start, func(data []byte) error {
		env, _ := route.ParseDelivery(data)
		got = append(got, string(env.Frame))
		return nil
	})
	if err != nil || n != 2 || fmt.Sprint(got) != "[a/7/0 a/9/0]" {
		t.Fatalf("replayed %d %v, %v", n, got, err)
	}
	// The last position: nothing to replay.
	if n, err := h.After(ctx, route.Subject("1", "a"), 9<<4, start, func([]byte) error { return nil }); err != nil || n != 0 {
		t.Fatalf("from the last: %d %v", n, err)
	}
	// A position the window does not hold.
	if _, err := h.After(ctx, route.Subject("1", "a"), 4<<4, start, func([]byte) error { return nil }); !errors.Is(err, history.ErrExpired) {
		t.Fatalf("a position before the window: %v", err)
	}
	if _, err := h.After(ctx, route.Subject("1", "a"), 6<<4, start, func([]byte) error { return nil }); !errors.Is(err, history.ErrExpired) {
		t.Fatalf("a position never delivered on the channel: %v", err)
	}
	if _, err := h.After(ctx, route.Subject("1", "none"), 5<<4, start, func([]byte) error { return nil }); !errors.Is(err, history.ErrExpired) {
		t.Fatalf("a channel with nothing kept: %v", err)
	}
}

// A barrier is stored after what the server took before it: reading
// through it sees all of that.
func TestBarrier(t *testing.T) {
	nc, _, h, ctx := setup(t, history.Options{MaxAge: time.Minute, MaxBytes: 1 << 20})
	for i := uint64(1); i <= 50; i++ {
		deliver(t, nc, "a", i, 0)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	through, err := h.Barrier(ctx)
	if err != nil || through != 51 {
		t.Fatalf("barrier %d %v", through, err)
	}
	got, f := frames(t)
	if err := h.Since(ctx, 0, through, []string{route.Subject("1", "a")}, f); err != nil || len(*got) != 50 {
		t.Fatalf("%d replayed, %v", len(*got), err)
	}
}
