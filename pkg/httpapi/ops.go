package httpapi

import (
	"net/http"
	"strings"
)

// OpsOptions configure the operations handler, which a gateway serves on
// RESOUND_OPS_ADDR and never on its public port.
type OpsOptions struct {
	// Metrics is served at /metrics; nil answers 404.
	Metrics http.Handler
	// Debug serves /debug/pprof/ and below; nil (RESOUND_PPROF off)
	// answers 404.
	Debug http.Handler
	// Ready reports whether the gateway accepts connections (GET /up);
	// nil means always.
	Ready func() bool
}

// NewOps returns the handler of the operations address: /metrics,
// /debug/pprof/, /up and /livez.
//
// Its routes take no REVERB_SERVER_PATH prefix. The prefix exists so that a
// proxy can share one public host between Resound and other services;
// nothing public reaches this address, and Prometheus, the profiler and
// the probes find the usual paths there.
func NewOps(opts OpsOptions) http.Handler {
	if opts.Ready == nil {
		opts.Ready = func() bool { return true }
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		switch {
		case serveHealth(w, r, path, opts.Ready):
		case path == "/metrics" && opts.Metrics != nil:
			opts.Metrics.ServeHTTP(w, r)
		case (path == "/debug/pprof" || strings.HasPrefix(path, "/debug/pprof/")) && opts.Debug != nil:
			opts.Debug.ServeHTTP(w, r)
		default:
			writeError(w, http.StatusNotFound, "Not found.")
		}
	})
}
