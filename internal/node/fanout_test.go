package node

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/resoundhq/resound/pkg/pushertest"
)

// TestLargeChannelFanOutKeepsOrderAndExclusion covers the gateway's parallel
// write path: a channel with at least 256 local subscribers (parallelMin in
// internal/gateway/deliver.go) whose batch holds a single delivery is cut into
// chunks, one written by the dispatcher and the others by the fan-out
// writers (one per core beyond the first). The benchmarks reach that path;
// only this checks what it writes, over real connections: every subscriber
// gets every event in order, and the connection a trigger's socket_id names
// (in the first, a middle and the last chunk) gets none of that event.
func TestLargeChannelFanOutKeepsOrderAndExclusion(t *testing.T) {
	// The writers are made at start-up, one per GOMAXPROCS beyond the first:
	// with one core there would be no parallel path to test.
	if runtime.GOMAXPROCS(0) < 2 {
		prev := runtime.GOMAXPROCS(2)
		t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
	n, api := startNode(t, nil)
	// 400 subscribers: at least two chunks, three with two writers or more.
	const subscribers = 400
	clients := make([]*pushertest.Client, subscribers)
	for i := range clients {
		clients[i] = pushertest.Connect(t, n.Addr().String(), appKey)
		clients[i].Subscribe("crowd")
	}
	// Members are written in the order they joined: these sit in the first,
	// a middle and the last chunk whatever the number of chunks.
	excluded := []int{0, subscribers/2 + 1, subscribers - 1}

	// expect[i] lists the events client i must read, in order.
	expect := make([][]string, subscribers)
	sent := 0
	trigger := func(exclude int) {
		data := fmt.Sprint(sent)
		socketID := ""
		if exclude >= 0 {
			socketID = clients[exclude].SocketID
		}
		mustOK(t, api.Trigger([]string{"crowd"}, "tick", data, socketID))
		for i := range clients {
			if i != exclude {
				expect[i] = append(expect[i], data)
			}
		}
		sent++
	}
	// read has every client read what it must have been sent so far, and
	// fails on anything else in its place (an excluded event would be).
	read := func() {
		for i, c := range clients {
			for _, want := range expect[i] {
				if m := c.Expect("tick"); m.DataString() != want {
					t.Fatalf("subscriber %d (%s) got tick %s, want %s", i, c.SocketID, m.DataString(), want)
				}
			}
			expect[i] = expect[i][:0]
		}
	}

	// One event at a time: each batch holds a single delivery, which is
	// what takes the parallel path.
	for round := 0; round < 2; round++ {
		for _, ex := range append([]int{-1}, excluded...) {
			trigger(ex)
			read()
		}
	}
	// A burst: batches of one and of several deliveries (written by one
	// goroutine) follow each other; order must hold across both.
	for i := 0; i < 60; i++ {
		trigger(excluded[i%len(excluded)])
	}
	// A last event for all proves nothing else was queued for anyone.
	trigger(-1)
	read()
}
