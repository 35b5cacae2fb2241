package metrics

import "github.com/prometheus/client_golang/prometheus"

// Results of a debug-console entry: the label values of
// resound_console_entries_total.
const (
	// ConsoleSent: published for the dashboards watching the app.
	ConsoleSent = "sent"
	// ConsoleOverRate: left out, past RESOUND_CONSOLE_RATE for its app
	// (the next entry sent says how many).
	ConsoleOverRate = "over_rate"
	// ConsoleQueueFull: left out, the publishing queue was full.
	ConsoleQueueFull = "queue_full"
	// ConsoleFailed: the publish itself failed (NATS closed).
	ConsoleFailed = "failed"
)

// NewConsole registers resound_console_entries_total, the debug-console
// entries a process made while a dashboard watched, by result. Every
// process has one console, so one registration per registry.
func NewConsole(r *Registry) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_console_entries_total",
		Help: "Debug-console entries made while a dashboard watched their app, by result: sent, over_rate (past RESOUND_CONSOLE_RATE), queue_full, failed."},
		[]string{"result"})
	for _, res := range []string{ConsoleSent, ConsoleOverRate, ConsoleQueueFull, ConsoleFailed} {
		v.WithLabelValues(res)
	}
	r.MustRegister(v)
	return v
}
