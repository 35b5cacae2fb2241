package cluster_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
)

// A step that fails is retried, with the live set listed afresh, until it
// succeeds; the steps that succeeded are not run again; every retry is
// counted.
func TestSweeperRetriesFailedSteps(t *testing.T) {
	var okRuns, flakyRuns, retried int
	var flakyLive []cluster.Liveness
	d := cluster.NewSweeper(cluster.SweeperOptions{
		Steps: []cluster.SweepStep{
			{Name: "ok", Sweep: func(context.Context, cluster.Liveness) error { okRuns++; return nil }},
			{Name: "flaky", Sweep: func(_ context.Context, live cluster.Liveness) error {
				flakyRuns++
				flakyLive = append(flakyLive, live)
				if flakyRuns < 3 {
					return errors.New("nats away")
				}
				return nil
			}},
		},
		Live:    func(context.Context) (map[string]bool, error) { return map[string]bool{"a": true, "new": true}, nil },
		Retried: func() { retried++ },
		Log:     zerolog.Nop(),
	})
	if !d.Sweep(context.Background(), map[string]bool{"a": true}) {
		t.Fatal("sweep reported a failure")
	}
	if okRuns != 1 || flakyRuns != 3 || retried != 2 {
		t.Errorf("ok ran %d, flaky %d, retries counted %d; want 1, 3, 2", okRuns, flakyRuns, retried)
	}
	if !flakyLive[0].Live("a") || flakyLive[0].Live("new") || !flakyLive[2].Live("new") {
		t.Errorf("live sets %v: the first is the caller's, retries list afresh", flakyLive)
	}
}

// A sweep that cannot succeed stops when its budget is spent, or when its
// context ends, and reports it.
func TestSweeperGivesUp(t *testing.T) {
	failing := []cluster.SweepStep{{Name: "down", Sweep: func(context.Context, cluster.Liveness) error { return errors.New("down") }}}
	d := cluster.NewSweeper(cluster.SweeperOptions{Steps: failing, Budget: 300 * time.Millisecond, Log: zerolog.Nop()})
	if d.Sweep(context.Background(), nil) {
		t.Error("budget: reported success")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d = cluster.NewSweeper(cluster.SweeperOptions{Steps: failing, Log: zerolog.Nop()})
	if d.Sweep(ctx, nil) {
		t.Error("ended context: reported success")
	}
}

// A gateway the sweep began without is asked about again while the sweep
// goes on: once it is back (a lapse healed), the keys the sweep reaches
// after that keep what it holds. Asked at most once a second.
func TestSweepAsksAgainAboutAGoneGateway(t *testing.T) {
	back := false
	asks := 0
	var seen []bool
	clock := time.Unix(1000, 0)
	d := cluster.NewSweeper(cluster.SweeperOptions{
		Steps: []cluster.SweepStep{{Name: "keys", Sweep: func(_ context.Context, live cluster.Liveness) error {
			for key := 0; key < 4; key++ {
				if key == 2 {
					back = true // its heartbeat is written again mid-sweep
					clock = clock.Add(time.Second)
				}
				seen = append(seen, live.Live("lapsed"), live.Live("gone"))
			}
			return nil
		}}},
		Recheck: func(_ context.Context, gw string) (bool, error) {
			asks++
			return gw == "lapsed" && back, nil
		},
		Log: zerolog.Nop(),
	})
	d.SetClock(func() time.Time { return clock })
	if !d.Sweep(context.Background(), map[string]bool{"self": true}) {
		t.Fatal("sweep reported a failure")
	}
	want := []bool{false, false, false, false, true, false, true, false}
	if !slices.Equal(seen, want) {
		t.Fatalf("lapsed, gone per key: %v, want %v", seen, want)
	}
	// Once each at the start and once each a second later: not per key.
	if asks != 4 {
		t.Fatalf("asked %d times, want 4", asks)
	}
}
