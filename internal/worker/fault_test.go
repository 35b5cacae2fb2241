//go:build faultinject

package worker_test

import (
	"strings"
	"testing"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

// A job that panics the shard (the fault-injection event, in a build with
// -tags faultinject) does not take the worker down: each panic is
// recovered and counts as a failed attempt, and after the last the job is
// set aside; the next job on its channel goes out.
//
//	go test -tags faultinject -run Panic ./internal/worker/
func TestPanicIsRecoveredAndJobDeadLettered(t *testing.T) {
	const attempts = 3
	e := start(t, 4, retrying(attempts, nil))
	ch := e.subscribe(t, route.Subject(appID, "boom"))
	e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{
		{Name: "resound-fault-panic-worker", Data: "x", Channels: []string{"boom"}},
	}})
	next := e.publish(t, oneEvent("boom", "after"))
	if d := decode(t, receive(t, ch)); d.seq != next || d.event["data"] != "after" {
		t.Fatalf("got seq %d data %v, want the next job, seq %d", d.seq, d.event["data"], next)
	}
	dls := deadLetters(t, e.js)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	if r := dls[0].Header.Get(queue.HeaderReason); !strings.Contains(r, "panic") {
		t.Errorf("%s = %q, want the panic", queue.HeaderReason, r)
	}
	if got := counter(t, e.reg, "resound_panics_total", metrics.PanicWorker); got != attempts {
		t.Errorf("resound_panics_total{where=worker} = %v, want %d", got, attempts)
	}
	if got := counter(t, e.reg, "resound_jobs_total", metrics.JobFailed); got != attempts {
		t.Errorf("resound_jobs_total{result=failed} = %v, want %d", got, attempts)
	}
	eventually(t, "the job stream empty", func() bool { return e.streamJobs(t) == 0 })
	nothingMore(t, ch)
}
