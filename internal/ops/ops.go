// Package ops serves the operational endpoints of a Resound process: /up
// and /livez for probes, /metrics for Prometheus and /debug/pprof/ for
// Go's profiler.
//
// The process that owns them mounts them, not the HTTP API: the gateway on
// RESOUND_OPS_ADDR and, for the probes alone, on its public port under
// REVERB_SERVER_PATH (as Reverb serves /up); the worker on
// RESOUND_METRICS_PORT. The package imports nothing of Resound, so the
// worker links it without the gateway or the API.
package ops

import (
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
)

// Health answers the probes.
type Health struct {
	// Ready reports whether the process does its work (GET /up); nil
	// means always.
	Ready func() bool
	// NotReady is the word /up answers with 503 ({"health":"..."});
	// empty means STARTING.
	NotReady string
}

func (h Health) ready() bool { return h.Ready == nil || h.Ready() }

// Up answers /up: 200 {"health":"OK"} while ready, 503 otherwise, and 405
// for a method other than GET or HEAD.
func (h Health) Up(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, `{"error":"Method not allowed."}`)
	case !h.ready():
		word := h.NotReady
		if word == "" {
			word = "STARTING"
		}
		writeJSON(w, http.StatusServiceUnavailable, `{"health":"`+word+`"}`)
	default:
		writeJSON(w, http.StatusOK, `{"health":"OK"}`)
	}
}

// Livez answers /livez: the process answers. Unlike /up it stays 200 while
// NATS is away, so that an orchestrator does not restart a gateway (and
// drop its sockets) for an outage elsewhere.
func Livez(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, `{"health":"OK"}`)
}

// WithProbes answers prefix+"/up" and prefix+"/livez" and hands every
// other request to next. The gateway's public port uses it: load
// balancers probe the port they balance, and Reverb serves /up there too.
// The paths are compared exactly, before any routing, so that next (the
// API) needs to know nothing of them.
func WithProbes(prefix string, h Health, next http.Handler) http.Handler {
	up, livez := prefix+"/up", prefix+"/livez"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case up:
			h.Up(w, r)
		case livez:
			Livez(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// Options configure the handler of an operations address.
type Options struct {
	Health Health
	// Metrics is served at /metrics; nil answers 404.
	Metrics http.Handler
	// Pprof serves Go's profiler at /debug/pprof/ (RESOUND_PPROF); off,
	// those paths answer 404.
	Pprof bool
}

// NewMux returns the handler of an operations address: /up, /livez,
// /metrics and, with Pprof, /debug/pprof/.
//
// Its routes take no REVERB_SERVER_PATH prefix. The prefix exists so that a
// proxy can share one public host between Resound and other services;
// nothing public reaches this address, and Prometheus, the profiler and
// the probes find the usual paths there.
func NewMux(opts Options) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/up", opts.Health.Up)
	mux.HandleFunc("/livez", Livez)
	if opts.Metrics != nil {
		mux.Handle("/metrics", opts.Metrics)
	}
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	// Unknown paths answer in JSON like the rest of Resound, not the
	// mux's text/plain.
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, `{"error":"Not found."}`)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	// Reverb sends the length; so do we, for probes that read it.
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}
