package metrics_test

import (
	"testing"

	"github.com/resoundhq/resound/internal/metrics"
)

// series returns the values of name's series in r, by their label values.
func series(t *testing.T, r *metrics.Registry, name string) map[string]float64 {
	t.Helper()
	families, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue()
			}
			out[key] = m.GetCounter().GetValue()
		}
	}
	return out
}

// An all-in-one process registers the gateway's metrics and then the
// worker's on one registry: resound_panics_total is registered once and
// shared, not refused as a duplicate.
func TestWorkerSharesPanicsWithGateway(t *testing.T) {
	r := metrics.NewRegistry()
	g := metrics.NewGateway(r, func() float64 { return 0 }, func() float64 { return 0 })
	w := metrics.NewWorker(r, func() float64 { return 0 })
	if g.Panics != w.Panics {
		t.Fatal("the worker registered a resound_panics_total of its own")
	}
	w.Panics.WithLabelValues(metrics.PanicWorker).Inc()
	g.Panics.WithLabelValues(metrics.PanicPoller).Inc()
	got := series(t, r, "resound_panics_total")
	if got["where=worker"] != 1 || got["where=poller"] != 1 {
		t.Fatalf("resound_panics_total = %v", got)
	}
}

// A worker on its own registry has every result series from the start, at
// zero, and its panic series.
func TestWorkerSeriesExistFromTheStart(t *testing.T) {
	r := metrics.NewRegistry()
	metrics.NewWorker(r, func() float64 { return 0 })
	jobs := series(t, r, "resound_jobs_total")
	for _, res := range []string{"ok", "rejected", "failed", "retried", "dead_lettered"} {
		if v, ok := jobs["result="+res]; !ok || v != 0 {
			t.Errorf("resound_jobs_total{result=%q}: %v, %v; want a series at 0", res, v, ok)
		}
	}
	if len(jobs) != 5 {
		t.Errorf("resound_jobs_total = %v, want five results", jobs)
	}
	if p := series(t, r, "resound_panics_total"); len(p) != 1 || p["where=worker"] != 0 {
		t.Fatalf("resound_panics_total = %v, want where=worker at 0", p)
	}
}
