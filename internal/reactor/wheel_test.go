package reactor

import (
	"slices"
	"testing"
)

// Each connection is handed back at the tick it asked for, or at the
// horizon if that is further; none is handed back twice in a tick, and
// the wheel holds each once.
func TestWheelHandsEachBackWhenDue(t *testing.T) {
	var w timerWheel
	const start = 100
	w.due(start, nil) // starts the count
	a, b, c := &Conn{fd: 1}, &Conn{fd: 2}, &Conn{fd: 3}
	w.schedule(a, start+3, start)
	w.schedule(b, start+50, start) // beyond the horizon
	w.schedule(c, start, start)    // now: the next tick
	seen := map[uint32][]int32{}
	for now := uint32(start + 1); now <= start+20; now++ {
		w.due(now, func(x *Conn) {
			seen[now] = append(seen[now], x.fd)
			if x == b {
				w.schedule(x, start+50, now) // still far: back at the horizon
			}
		})
		if n := w.size(); n != 1 && now >= start+3 {
			t.Fatalf("tick %d: %d on the wheel, want b alone", now, n)
		}
	}
	want := map[uint32][]int32{start + 1: {3}, start + 3: {1}, start + scanHorizon: {2}, start + 2*scanHorizon: {2}}
	if len(seen) != len(want) {
		t.Fatalf("handed back %v, want %v", seen, want)
	}
	for tick, fds := range want {
		if !slices.Equal(seen[tick], fds) {
			t.Fatalf("handed back %v, want %v", seen, want)
		}
	}
}

// After a pause longer than the wheel (a stopped process), every slot is
// run once, and everything on it is handed back once.
func TestWheelCatchesUpOnceAfterAPause(t *testing.T) {
	var w timerWheel
	w.due(10, nil)
	conns := make([]*Conn, 40)
	for i := range conns {
		conns[i] = &Conn{fd: int32(i)}
		w.schedule(conns[i], 10+uint32(1+i%scanHorizon), 10)
	}
	got := map[int32]int{}
	w.due(10+1000, func(c *Conn) { got[c.fd]++ })
	if len(got) != len(conns) {
		t.Fatalf("%d of %d handed back", len(got), len(conns))
	}
	for fd, n := range got {
		if n != 1 {
			t.Fatalf("connection %d handed back %d times", fd, n)
		}
	}
	if w.size() != 0 {
		t.Fatalf("%d left on the wheel", w.size())
	}
}

// A connection dropped when its slot comes (destroyed meanwhile) is off
// the wheel within the horizon.
func TestWheelForgetsWhatIsNotScheduledAgain(t *testing.T) {
	var w timerWheel
	w.due(1, nil)
	for i := range 5000 {
		w.schedule(&Conn{fd: int32(i)}, 1+scanHorizon, 1)
	}
	for now := uint32(2); now <= 1+scanHorizon; now++ {
		w.due(now, func(*Conn) {})
	}
	if w.size() != 0 {
		t.Fatalf("%d left on the wheel", w.size())
	}
	for i, s := range w.slots {
		if cap(s) > keepSlotCap {
			t.Fatalf("slot %d keeps an array of %d", i, cap(s))
		}
	}
}
