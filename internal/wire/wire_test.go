package wire

import "testing"

// The subjects are a wire format other programs use (docs/jobs.md) and
// gateways and workers of different builds share: they never change by
// accident.
func TestSubjects(t *testing.T) {
	for got, want := range map[string]string{
		JobsPrefix:       "resound.jobs.",
		DeadLetterPrefix: "resound.dead.",
		DeliverPrefix:    "resound.deliver.",
		DeliverBarrier:   "resound.deliver._barrier",
		Terminate:        "resound.ctl.terminate",
		UserStatePrefix:  "resound.ctl.user.",
		Query:            "resound.ctl.query",
		Ready:            "resound.ctl.ready",
		HooksPrefix:      "resound.hooks.",
		ConsolePrefix:    "resound.console.",
		ConsoleWatch:     "resound.ctl.console.watch",
		Stats:            "resound.ctl.stats",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}
