// Package metrics defines Resound's Prometheus metrics. Each process
// builds its own registry (no global state), and the gateway and worker
// increment the collectors they are handed. The names are listed in
// deployments/README.md and used by the Grafana dashboard.
package metrics

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry is a process's metrics registry, with the Go runtime and
// process collectors already in it.
type Registry struct {
	*prometheus.Registry
}

// NewRegistry returns a registry with the standard collectors.
func NewRegistry() *Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Registry{r}
}

// Handler serves the registry in the Prometheus text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.Registry, promhttp.HandlerOpts{Registry: r.Registry})
}

// Gateway holds a gateway's metrics.
type Gateway struct {
	Connections   *prometheus.GaugeVec   // by app
	MessagesIn    *prometheus.CounterVec // by kind: client (frames from clients), api (HTTP triggers)
	MessagesOut   prometheus.Counter     // frames written that the gateway made for one connection
	Deliveries    prometheus.Counter     // event frames written to subscribers
	SlowConsumers prometheus.Counter
	Duplicates    prometheus.Counter     // redelivered jobs dropped
	Errors        *prometheus.CounterVec // by Pusher or close code, and app
	Handshakes    prometheus.Counter
	AcceptBackoff prometheus.Counter
	MemoryTrims   prometheus.Counter
	// LimitHits counts each time a bound on what clients can make the
	// gateway hold refused or cut something off, by Limit.
	LimitHits *prometheus.CounterVec
	// Panics counts panics recovered at the edges that handle client
	// input, by where they happened.
	Panics *prometheus.CounterVec
	// StateRetries counts shared-state clean-ups (presence leaves,
	// sign-outs, connection-slot releases, the stores' sweeps after
	// gateways that are gone) that failed and were retried.
	StateRetries prometheus.Counter
	// CountWrites counts the compare-and-sets of the connection-slot
	// leases (apps with max_connections), by result: stored, unchanged
	// (the entry was already right), conflict (lost to another gateway's
	// write, tried again), failed.
	CountWrites *prometheus.CounterVec
	// Catchups counts catch-ups from the history, by result: ok,
	// expired (past the window: subscribers reconnect), overflow (too
	// much held meanwhile), failed.
	Catchups *prometheus.CounterVec
	// CatchupReplayed counts deliveries the catch-ups read back.
	CatchupReplayed prometheus.Counter
	// Resumes counts clients resuming a channel, by result: ok, expired.
	Resumes *prometheus.CounterVec
}

// Limit names a bound: the label of resound_limit_hits_total. The set is
// fixed, so the series are too.
type Limit string

// The bounds docs/security.md lists.
const (
	LimitRequestHead      Limit = "request_head"
	LimitHandshakeTimeout Limit = "handshake_timeout"
	LimitHandshakes       Limit = "handshakes"
	LimitHTTPConnections  Limit = "http_connections"
	LimitConnectionsPerIP Limit = "connections_per_ip"
	LimitChannels         Limit = "channels_per_connection"
	LimitMessageSize      Limit = "message_size"
	LimitOutbound         Limit = "outbound"
	LimitOutboundTotal    Limit = "outbound_total"
	LimitInvalidUTF8      Limit = "invalid_utf8"
	LimitProtocolError    Limit = "protocol_error"
	LimitClientEventRate  Limit = "client_event_rate"
	LimitUserConnections  Limit = "user_connections"
	LimitPendingOps       Limit = "pending_ops"
)

// Limits lists every Limit, so that their series exist from the start.
var Limits = []Limit{LimitRequestHead, LimitHandshakeTimeout, LimitHandshakes, LimitHTTPConnections,
	LimitConnectionsPerIP, LimitChannels, LimitMessageSize, LimitOutbound, LimitOutboundTotal,
	LimitInvalidUTF8, LimitProtocolError, LimitClientEventRate, LimitUserConnections, LimitPendingOps}

// Where a panic was recovered: the label of resound_panics_total.
const (
	PanicHandshake  = "handshake"
	PanicPoller     = "poller"
	PanicDispatcher = "dispatcher"
	PanicAsync      = "async"
	PanicNATS       = "nats"
	PanicHTTP       = "http"
	PanicWorker     = "worker"
)

// NewGateway registers a gateway's metrics. subscriptions and channels are
// read when scraped.
func NewGateway(r *Registry, subscriptions, channels func() float64) *Gateway {
	g := &Gateway{
		Connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "resound_connections", Help: "Open client connections."}, []string{"app"}),
		MessagesIn:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_messages_in_total", Help: "Messages received: from clients (kind=client) or through the HTTP API (kind=api)."}, []string{"kind"}),
		MessagesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_messages_out_total", Help: "Protocol messages written to single connections (replies, errors, pings)."}),
		Deliveries:  prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_deliveries_total", Help: "Channel event frames written to subscribers."}),
		SlowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_slow_consumers_total",
			Help: "Connections cut off because their pending output passed the limit."}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_duplicates_dropped_total",
			Help: "Deliveries of a job already delivered on the channel (a worker died before acking it), dropped."}),
		Errors:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_errors_total", Help: "Errors sent to clients, by Pusher error or close code."}, []string{"code", "app"}),
		Handshakes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_handshakes_total", Help: "WebSocket handshakes completed."}),
		AcceptBackoff: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_accept_backoff_total", Help: "Times accept failed (e.g. out of file descriptors) and backed off."}),
		MemoryTrims:   prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_memory_trims_total", Help: "Times a gateway returned its free memory to the kernel after a connect storm."}),
		LimitHits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_limit_hits_total",
			Help: "Times a bound on what clients can make the gateway hold refused or cut something off, by limit."}, []string{"limit"}),
		Panics: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_panics_total", Help: panicsHelp}, []string{"where"}),
		StateRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_state_retries_total",
			Help: "Shared-state clean-ups (presence leaves, sign-outs, connection-slot releases, sweeps after gone gateways) that failed and were retried."}),
		CountWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_count_writes_total",
			Help: "Compare-and-sets of the connection-slot leases of apps with max_connections, by result: stored, unchanged, conflict (lost to another gateway's write), failed."}, []string{"result"}),
		Catchups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_catchups_total",
			Help: "Catch-ups with deliveries missed (link down, stalled, dropped as a slow consumer), read back from the history, by result."}, []string{"result"}),
		CatchupReplayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_catchup_replayed_total",
			Help: "Deliveries read back from the history by catch-ups."}),
		Resumes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_resumes_total",
			Help: "Clients resuming a channel from a position, by result: ok, or expired (told to refetch)."}, []string{"result"}),
	}
	for _, r := range []string{"ok", "expired", "overflow", "failed"} {
		g.Catchups.WithLabelValues(r)
	}
	for _, r := range []string{"stored", "unchanged", "conflict", "failed"} {
		g.CountWrites.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "expired"} {
		g.Resumes.WithLabelValues(r)
	}
	for _, l := range Limits {
		g.LimitHits.WithLabelValues(string(l))
	}
	r.MustRegister(g.Connections, g.MessagesIn, g.MessagesOut, g.Deliveries, g.SlowConsumers, g.Duplicates, g.Errors, g.Handshakes, g.AcceptBackoff, g.MemoryTrims,
		g.LimitHits, g.Panics, g.StateRetries, g.CountWrites, g.Catchups, g.CatchupReplayed, g.Resumes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "resound_subscriptions", Help: "Channel subscriptions of local connections."}, subscriptions),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "resound_channels", Help: "Channels with local subscribers."}, channels),
	)
	return g
}

// Error counts an error code sent to a client of app. The code label is
// bucketed: a client can close with any of thousands of codes, and each
// distinct label value would be a series kept forever.
func (g *Gateway) Error(code int, app string) {
	if g != nil {
		g.Errors.WithLabelValues(CodeLabel(code), app).Inc()
	}
}

// CodeLabel is the label of an error or close code: the code itself when
// it is one Resound sends, "other" for the rest.
func CodeLabel(code int) string {
	switch code {
	case 1000, 1001, 1002, 1007, 1008, 1009, 1011,
		4001, 4004, 4009, 4100, 4200, 4201, 4202, 4301, 4302:
		return strconv.Itoa(code)
	}
	return "other"
}

// LimitHit counts one bite of a bound.
func (g *Gateway) LimitHit(l Limit) {
	if g != nil {
		g.LimitHits.WithLabelValues(string(l)).Inc()
	}
}

// Worker holds a worker's metrics.
type Worker struct {
	// Jobs counts jobs by result: ok (delivered and acked), rejected
	// (invalid, set aside untried), failed (an attempt failed), retried (a
	// failed attempt tried again), dead_lettered (stored in the
	// dead-letter stream).
	Jobs       *prometheus.CounterVec
	JobLatency prometheus.Histogram // from JetStream storing the job to its deliveries being published
	Deliveries prometheus.Counter
	// Panics is resound_panics_total; the worker bumps where="worker".
	Panics *prometheus.CounterVec
}

// Results of a job: the label values of resound_jobs_total.
const (
	JobOK           = "ok"
	JobRejected     = "rejected"
	JobFailed       = "failed"
	JobRetried      = "retried"
	JobDeadLettered = "dead_lettered"
)

// panicsHelp is resound_panics_total's help. It must stay equal to the one
// NewGateway registers: in an all-in-one process the gateway and the
// worker share a registry, and so one collector, which the registry only
// hands back when name, labels and help all match.
const panicsHelp = "Panics recovered while handling client input, by where; the connection concerned is closed with 1011."

// NewWorker registers a worker's metrics. lag is read when scraped: the
// jobs waiting in the consumer. In a process that also runs a gateway,
// call it after NewGateway: resound_panics_total is then shared.
func NewWorker(r *Registry, lag func() float64) *Worker {
	w := &Worker{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_jobs_total",
			Help: "Jobs by result: ok (delivered), rejected (invalid, dead-lettered untried), failed (an attempt failed), retried, dead_lettered."}, []string{"result"}),
		JobLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "resound_job_latency_seconds",
			Help:    "Time from the job being stored in JetStream to its deliveries being published.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		Deliveries: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_worker_deliveries_total", Help: "Delivery messages published (one per event and channel)."}),
	}
	for _, res := range []string{JobOK, JobRejected, JobFailed, JobRetried, JobDeadLettered} {
		w.Jobs.WithLabelValues(res)
	}
	r.MustRegister(w.Jobs, w.JobLatency, w.Deliveries,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "resound_queue_lag", Help: "Jobs waiting in the worker consumer."}, lag))
	w.Panics = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_panics_total", Help: panicsHelp}, []string{"where"})
	if err := r.Register(w.Panics); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			panic(err)
		}
		w.Panics = are.ExistingCollector.(*prometheus.CounterVec)
	}
	w.Panics.WithLabelValues(PanicWorker)
	return w
}
