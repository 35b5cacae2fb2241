package cluster_test

import (
	"context"
	"errors"
	"maps"
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
	var flakyLive []map[string]bool
	d := cluster.NewSweeper(cluster.SweeperOptions{
		Steps: []cluster.SweepStep{
			{Name: "ok", Sweep: func(context.Context, map[string]bool) error { okRuns++; return nil }},
			{Name: "flaky", Sweep: func(_ context.Context, live map[string]bool) error {
				flakyRuns++
				flakyLive = append(flakyLive, maps.Clone(live))
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
	if len(flakyLive[0]) != 1 || !flakyLive[2]["new"] {
		t.Errorf("live sets %v: the first is the caller's, retries list afresh", flakyLive)
	}
}

// A sweep that cannot succeed stops when its budget is spent, or when its
// context ends, and reports it.
func TestSweeperGivesUp(t *testing.T) {
	failing := []cluster.SweepStep{{Name: "down", Sweep: func(context.Context, map[string]bool) error { return errors.New("down") }}}
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
