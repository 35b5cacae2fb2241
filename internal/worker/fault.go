//go:build faultinject

package worker

// faultPanicEvent is the event name that makes a worker built with
// -tags faultinject panic while delivering the job (docs/security.md).
const faultPanicEvent = "resound-fault-panic-worker"

// faultPanic panics on the fault-injection event name: the test of the
// worker's recovery.
func faultPanic(event string) {
	if event == faultPanicEvent {
		panic("fault injection: " + faultPanicEvent)
	}
}
