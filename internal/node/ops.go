package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/resoundhq/resound/internal/ops"
)

// opsServer serves RESOUND_OPS_ADDR: /metrics, /debug/pprof/ (with
// RESOUND_PPROF), /up and /livez (internal/ops's mux). It is a plain net/http server on a
// listener of its own, apart from the gateway's reactor: the few requests
// it gets (scrapes, probes, a profile now and then) need nothing faster,
// and keeping them off the public port means the world never sees the app
// ids in the metrics' labels or the process's profile. The dashboard's
// own listener (RESOUND_DASHBOARD_ADDR) is one too.
type opsServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// startOps binds RESOUND_OPS_ADDR and serves the operations endpoints there
// until closeOps. Empty, they are served nowhere. A bind failure fails the
// start-up, naming the setting, rather than leaving a node nobody can
// scrape.
func (n *Node) startOps(ready func() bool) error {
	cfg := n.cfg
	if cfg.OpsAddr == "" {
		if cfg.Pprof {
			n.log.Warn().Msg("RESOUND_PPROF is on but RESOUND_OPS_ADDR is empty: the profiler is served nowhere")
		}
		return nil
	}
	ln, err := net.Listen("tcp", cfg.OpsAddr)
	if err != nil {
		return fmt.Errorf("RESOUND_OPS_ADDR=%s: %w", cfg.OpsAddr, err)
	}
	srv := &opsServer{ln: ln, done: make(chan struct{}), srv: &http.Server{
		Handler: ops.NewMux(ops.Options{Metrics: n.Registry.Handler(), Pprof: cfg.Pprof, Health: ops.Health{Ready: ready}}),
		// No WriteTimeout: /debug/pprof/profile and /trace stream for as
		// many seconds as asked.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}}
	n.ops = srv
	n.serveAside(srv, "RESOUND_OPS_ADDR", "operations server")
	n.log.Info().Str("addr", ln.Addr().String()).Bool("pprof", cfg.Pprof).Msg("operations endpoints (/metrics, /up, /livez) served")
	return nil
}

// serveAside serves s until it is closed; a failure other than that is
// the node's error, naming the setting of its address. The dashboard's own
// listener (RESOUND_DASHBOARD_ADDR) is served so too.
func (n *Node) serveAside(s *opsServer, setting, what string) {
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error().Err(err).Str("addr", s.ln.Addr().String()).Msg(what + " stopped")
			n.errMu.Lock()
			if n.err == nil {
				n.err = fmt.Errorf("%s: %w", setting, err)
			}
			n.errMu.Unlock()
		}
	}()
}

// closeOps stops the operations server. Close calls it after the other
// components have stopped, so that a draining gateway can still be
// scraped and probed (/up answers 503) while its clients leave.
func (n *Node) closeOps() {
	if n.ops == nil {
		return
	}
	_ = n.ops.srv.Close()
	<-n.ops.done
	n.ops = nil
}

// OpsAddr is the address the operations endpoints are served on, or nil
// when RESOUND_OPS_ADDR is empty. With a port of 0 in the setting, this is
// the port the system chose.
func (n *Node) OpsAddr() net.Addr {
	if n.ops == nil {
		return nil
	}
	return n.ops.ln.Addr()
}
