package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/dashboard"
	"github.com/resoundhq/resound/internal/wire"
)

// newDashboard builds the dashboard (RESOUND_DASHBOARD) and, with
// RESOUND_DASHBOARD_ADDR, serves it on its own listener. It returns the
// handler of the gateway's port: api, with the dashboard in front of it
// when it is served there. ctx is the dashboard's life: its streams end
// with it.
func (n *Node) newDashboard(ctx context.Context, nc *nats.Conn, cons *console.Console, querier *cluster.Querier, api http.Handler) (http.Handler, error) {
	cfg := n.cfg
	if !cfg.Dashboard {
		return api, nil
	}
	own := cfg.DashboardAddr != ""
	path := strings.TrimRight(cfg.DashboardPath, "/")
	if !own {
		// On the gateway's port the dashboard sits beside the API and the
		// probes, under REVERB_SERVER_PATH: it must not hide them.
		switch {
		case path == "":
			return nil, fmt.Errorf("RESOUND_DASHBOARD_PATH=%q: on the gateway's port the dashboard needs a path of its own (or RESOUND_DASHBOARD_ADDR)", cfg.DashboardPath)
		case path == "/app" || path == "/apps" || strings.HasPrefix(path, "/app/") || strings.HasPrefix(path, "/apps/") ||
			path == "/up" || path == "/livez":
			return nil, fmt.Errorf("RESOUND_DASHBOARD_PATH=%q would hide the WebSocket, API or probe paths", cfg.DashboardPath)
		}
		path = cfg.Path + path
	}
	if cfg.DashboardToken == "" {
		n.log.Info().Msg("dashboard: RESOUND_DASHBOARD_TOKEN is empty, so only an app's key and secret open it (that app alone)")
	}
	dash, err := dashboard.New(dashboard.Options{
		Context: ctx, Apps: cfg.Apps, Conn: nc, Path: path, Token: cfg.DashboardToken,
		Secure: cfg.TLS() && !own, TrustedProxies: cfg.TrustedProxies,
		Channels: func(ctx context.Context, app string) (int, error) {
			res, err := querier.Query(ctx, wire.QueryRequest{App: app})
			return len(res.Channels), err
		},
		Recent: cons.Recent,
		Log:    n.log.With().Str("component", "dashboard").Logger(),
	})
	if err != nil {
		return nil, err
	}
	if !own {
		n.log.Info().Str("path", dash.Path()+"/").Msg("dashboard served on the gateway's port")
		return dash.Mount(api), nil
	}
	ln, err := net.Listen("tcp", cfg.DashboardAddr)
	if err != nil {
		return nil, fmt.Errorf("RESOUND_DASHBOARD_ADDR=%s: %w", cfg.DashboardAddr, err)
	}
	// A plain net/http server on a listener of its own, as the operations
	// endpoints are on RESOUND_OPS_ADDR.
	srv := &opsServer{ln: ln, done: make(chan struct{}), srv: &http.Server{
		Handler: dash,
		// The streams move their own deadlines (internal/dashboard's
		// stream.go); these bound everything else.
		ReadHeaderTimeout: cfg.HandshakeTimeout.Duration(),
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    cfg.MaxRequestHead,
	}}
	n.dash = srv
	n.serveAside(srv, "RESOUND_DASHBOARD_ADDR", "dashboard server")
	n.log.Info().Str("addr", ln.Addr().String()).Str("path", dash.Path()+"/").Msg("dashboard served")
	return api, nil
}

// closeDashboard stops the dashboard's own server, if it has one.
func (n *Node) closeDashboard() {
	if n.dash == nil {
		return
	}
	_ = n.dash.srv.Close()
	<-n.dash.done
	n.dash = nil
}

// DashboardAddr is the address of the dashboard's own listener, or nil
// when it has none (RESOUND_DASHBOARD_ADDR empty, or the dashboard off).
func (n *Node) DashboardAddr() net.Addr {
	if n.dash == nil {
		return nil
	}
	return n.dash.ln.Addr()
}

// Console is the node's debug console.
func (n *Node) Console() *console.Console { return n.console }
