package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
)

// hubWithNATS is a hub on a real NATS server, with one dispatcher queue
// nobody reads (the test publishes nothing).
func hubWithNATS(t *testing.T) (*hub, *nats.Conn) {
	t.Helper()
	nc := natstest.Conn(t, natstest.Server(t, false), "hub")
	return newHub(nc, []chan *nats.Msg{make(chan *nats.Msg, 1)}, 5*time.Second), nc
}

// sumShards adds up f over the hub's shards, each locked.
func (h *hub) sumShards(f func(sh *hubShard) int) int {
	n := 0
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		n += f(sh)
		sh.mu.Unlock()
	}
	return n
}

func (h *hub) listedIdle() int { return h.sumShards(func(sh *hubShard) int { return len(sh.idle) }) }
func (h *hub) channelsHeld() int {
	return h.sumShards(func(sh *hubShard) int { return len(sh.channels) })
}

// A channel left by its last subscriber keeps its NATS subscription while
// it lingers, and loses it to the sweep after; one joined again meanwhile
// stays. The sweep looks only at the channels that fell idle: a gateway's
// busy channels cost it nothing each second.
func TestSweepRemovesOnlyChannelsIdleForTheLinger(t *testing.T) {
	h, nc := hubWithNATS(t)
	app := &config.App{ID: "1", Key: "k", Secret: "s"}
	ctx := context.Background()
	const n = 300
	chans := make([]*channel, n)
	for i := range chans {
		ch, err := h.acquire(ctx, app, fmt.Sprintf("c%d", i))
		if err != nil {
			t.Fatal(err)
		}
		chans[i] = ch
	}
	if subs := nc.NumSubscriptions(); subs != n {
		t.Fatalf("%d NATS subscriptions for %d channels", subs, n)
	}
	// Nothing idle: a sweep has nothing to walk.
	h.sweepIdle(0)
	if got := h.channelsHeld(); got != n {
		t.Fatalf("a sweep with nothing idle left %d of %d channels", got, n)
	}
	// The first 100 fall idle; 50 of them are joined again.
	for _, ch := range chans[:100] {
		h.release(ch)
	}
	if got := h.listedIdle(); got != 100 {
		t.Fatalf("%d channels listed idle, want 100", got)
	}
	for i := range 50 {
		if ch := h.acquireReady(app, fmt.Sprintf("c%d", i)); ch != chans[i] {
			t.Fatalf("channel c%d was not there to join again", i)
		}
	}
	h.sweepIdle(time.Hour) // none has lingered an hour
	if got := h.channelsHeld(); got != n {
		t.Fatalf("a sweep before the linger left %d of %d channels", got, n)
	}
	if got := h.listedIdle(); got != 50 {
		t.Fatalf("after the sweep %d channels listed idle, want the 50 still idle", got)
	}
	h.sweepIdle(0)
	if got, want := h.channelsHeld(), n-50; got != want {
		t.Fatalf("%d channels after the linger, want %d", got, want)
	}
	if got := h.listedIdle(); got != 0 {
		t.Fatalf("%d channels still listed idle", got)
	}
	if h.idle.Load() != 0 {
		t.Fatalf("idle count %d, want 0", h.idle.Load())
	}
	if subs := nc.NumSubscriptions(); subs != n-50 {
		t.Fatalf("%d NATS subscriptions, want %d", subs, n-50)
	}
	// Idle, joined, idle again: listed once, swept once.
	h.release(chans[0])
	h.acquireReady(app, "c0")
	h.release(chans[0])
	if got := h.listedIdle(); got != 1 {
		t.Fatalf("a channel idle twice is listed %d times", got)
	}
	h.sweepIdle(0)
	if got, want := h.channelsHeld(), n-51; got != want {
		t.Fatalf("%d channels, want %d", got, want)
	}
	// A channel made again under a swept one's name is a new channel.
	ch, err := h.acquire(ctx, app, "c60")
	if err != nil {
		t.Fatal(err)
	}
	if ch == chans[60] {
		t.Fatal("the swept channel came back")
	}
}
