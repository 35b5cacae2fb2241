// Package metrics defines Resound's Prometheus metrics. Each process
// builds its own registry (no global state), and the gateway and worker
// increment the collectors they are handed. The names are listed in
// deployments/README.md and used by the Grafana dashboard.
package metrics

import (
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
}

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
	}
	r.MustRegister(g.Connections, g.MessagesIn, g.MessagesOut, g.Deliveries, g.SlowConsumers, g.Duplicates, g.Errors, g.Handshakes, g.AcceptBackoff,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "resound_subscriptions", Help: "Channel subscriptions of local connections."}, subscriptions),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "resound_channels", Help: "Channels with local subscribers."}, channels),
	)
	return g
}

// Error counts an error code sent to a client of app.
func (g *Gateway) Error(code int, app string) {
	if g != nil {
		g.Errors.WithLabelValues(strconv.Itoa(code), app).Inc()
	}
}

// Worker holds a worker's metrics.
type Worker struct {
	Jobs       *prometheus.CounterVec // by result: ok, rejected, failed
	JobLatency prometheus.Histogram   // from JetStream storing the job to its deliveries being published
	Deliveries prometheus.Counter
}

// NewWorker registers a worker's metrics. lag is read when scraped: the
// jobs waiting in the consumer.
func NewWorker(r *Registry, lag func() float64) *Worker {
	w := &Worker{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_jobs_total", Help: "Jobs handled, by result."}, []string{"result"}),
		JobLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "resound_job_latency_seconds",
			Help:    "Time from the job being stored in JetStream to its deliveries being published.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		Deliveries: prometheus.NewCounter(prometheus.CounterOpts{Name: "resound_worker_deliveries_total", Help: "Delivery messages published (one per event and channel)."}),
	}
	r.MustRegister(w.Jobs, w.JobLatency, w.Deliveries,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "resound_queue_lag", Help: "Jobs waiting in the worker consumer."}, lag))
	return w
}
