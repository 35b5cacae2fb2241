package loadgen

import (
	"slices"
	"testing"
	"time"
)

// Lanes of one rate interleave: together they send evenly, not in bursts
// of one event per lane.
func TestLanesSpreadOverThePeriod(t *testing.T) {
	const nl, rate = 4, 1000.0 // 250 events/s a lane
	var at []time.Duration
	for i := range nl {
		l := &lane{rate: rate / nl, phase: float64(i) / nl}
		for k := range int64(3) {
			at = append(at, l.dueAt(k))
		}
	}
	slices.Sort(at)
	for i, d := range at {
		if want := time.Duration(i) * time.Millisecond; d != want {
			t.Fatalf("event %d of all lanes due at %v, want %v (every 1 ms): %v", i, d, want, at)
		}
	}
}

func TestLaneDueBy(t *testing.T) {
	l := &lane{rate: 10, phase: 0.5} // events at 50, 150, 250 ms
	for _, c := range []struct {
		elapsed time.Duration
		want    int64
	}{{0, 0}, {49 * time.Millisecond, 0}, {50 * time.Millisecond, 1}, {149 * time.Millisecond, 1}, {150 * time.Millisecond, 2}, {260 * time.Millisecond, 3}} {
		if got := l.dueBy(c.elapsed); got != c.want {
			t.Errorf("dueBy(%v) = %d, want %d", c.elapsed, got, c.want)
		}
	}
}
