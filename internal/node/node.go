// Package node assembles one gateway process: the NATS connection (or an
// embedded NATS server), the job stream, the HTTP API, the gateway, and, in
// all-in-one mode, the worker pool. cmd/gateway runs it; the integration
// tests start it in-process exactly as the binary does.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cache"
	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/gateway"
	"github.com/resoundhq/resound/internal/httpapi"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/ops"
	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/streams"
	"github.com/resoundhq/resound/internal/tlscert"
	"github.com/resoundhq/resound/internal/webhook"
	"github.com/resoundhq/resound/internal/worker"
)

// Node is a running gateway process.
type Node struct {
	cfg      *config.Config
	log      zerolog.Logger
	ln       net.Listener
	embedded *natsembed.Server
	conns    []*nats.Conn
	gw       *gateway.Server
	ops      *opsServer
	dash     *opsServer // the dashboard's own listener, if any
	console  *console.Console
	pool     *worker.Pool
	recorder *webhook.Recorder
	hooks    *webhook.Sender
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	errMu    sync.Mutex
	err      error
	// DevApp is set when the node made a development app.
	DevApp *config.App
	// Registry holds the node's metrics, served at /metrics on
	// RESOUND_OPS_ADDR.
	Registry *metrics.Registry
}

// Options start a node.
type Options struct {
	Config *config.Config
	// Listener, when set, is used instead of binding Host:Port.
	Listener net.Listener
	// Gateway, when set, adjusts the gateway's options before it is built
	// (tests use it for sizes no setting exposes).
	Gateway func(*gateway.Options)
	Log     zerolog.Logger
}

// Start brings a node up and returns once it accepts connections.
func Start(ctx context.Context, opts Options) (_ *Node, err error) {
	cfg := opts.Config
	n := &Node{cfg: cfg, log: opts.Log}
	// Every failure below returns nil, so close what was started through n
	// itself, not through the result.
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	allInOne := cfg.NATSURL == ""
	if allInOne {
		dir, err := cfg.ResolvedDataDir()
		if err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		if cfg.Apps.Len() == 0 {
			app, _, err := config.DevApp(dir)
			if err != nil {
				return nil, fmt.Errorf("development app: %w", err)
			}
			if cfg, err = cfg.WithApp(app); err != nil {
				return nil, err
			}
			n.cfg = cfg
			n.DevApp = cfg.Apps.All()[0]
		}
		n.embedded, err = natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "jetstream"), Log: opts.Log})
		if err != nil {
			return nil, err
		}
		n.log.Info().Str("store", filepath.Join(dir, "jetstream")).Msg("embedded NATS JetStream started")
	}
	// The certificate first: a bad pair stops start-up before anything
	// else is started.
	var tlsConfig *tls.Config
	if cfg.TLS() {
		certs, err := tlscert.New(cfg.TLSCert, cfg.TLSKey, tlscert.Options{Log: n.log.With().Str("component", "tls").Logger()})
		if err != nil {
			return nil, fmt.Errorf("RESOUND_TLS_CERT, RESOUND_TLS_KEY: %w", err)
		}
		tlsConfig = certs.Config()
	}
	if cfg.Apps.Len() == 0 {
		return nil, errors.New("no app configured: set REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET, or RESOUND_APPS_FILE")
	}

	gwConn, err := n.connect("resound-gateway")
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(gwConn)
	if err != nil {
		return nil, err
	}
	// A NATS cluster started with us may not serve JetStream yet: wait
	// for it, saying why, rather than give up (see ensure.Setup).
	objects, err := streams.Ensure(ctx, n.log, js, &cfg.Settings, false)
	if err != nil {
		return nil, err
	}
	stores, hist := objects.Stores, objects.History
	setupCtx, cancelSetup := context.WithTimeout(ctx, ensure.RoundTimeout)
	defer cancelSetup()
	gatewayID := cluster.NewGatewayID()

	runCtx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.Registry = metrics.NewRegistry()

	// The API publishes on a connection of its own, so that its acks never
	// queue behind the gateway's inbound deliveries. It buffers nothing
	// while disconnected: a job the API answered 503 for must not be
	// stored later behind its back, or the producer's retry would deliver
	// it twice.
	apiConn, err := n.connect("resound-api", nats.ReconnectBufSize(-1))
	if err != nil {
		return nil, err
	}
	// Acks the API stopped waiting for (a 503 already went out) are
	// forgotten after a while rather than kept forever.
	apiJS, err := jetstream.New(apiConn, jetstream.WithPublishAsyncTimeout(time.Minute))
	if err != nil {
		return nil, err
	}
	// The webhook records of the transitions this gateway makes go to the
	// webhook stream through a queue that never makes the gateway wait
	// (webhook.Recorder), on the gateway's connection: all-in-one, that is
	// the embedded JetStream, as for any other stream.
	recorder, err := webhook.NewRecorder(webhook.RecorderOptions{
		Conn: gwConn, Lanes: cfg.Partitions, Source: gatewayID, Registry: n.Registry,
		Log: n.log.With().Str("gateway", gatewayID).Logger(),
	})
	if err != nil {
		return nil, err
	}
	n.recorder = recorder
	// Start-up in three steps, each using only what the ones before it
	// built: construct the debug console, then the gateway, which records
	// into it; build what depends on the gateway (the registry's sweeps,
	// the API with its readiness, the dashboard); then run.
	appIDs := make([]string, 0, cfg.Apps.Len())
	for _, app := range cfg.Apps.All() {
		appIDs = append(appIDs, app.ID)
	}
	n.console = console.New(console.Options{
		Conn: gwConn, Process: gatewayID, Apps: appIDs, Rate: cfg.ConsoleRate, Registry: n.Registry,
		Log: n.log.With().Str("component", "console").Logger(),
	})
	gwOpts := gateway.Options{
		Apps: cfg.Apps, Conn: gwConn, PathPrefix: cfg.Path, Stores: stores, GatewayID: gatewayID, Registry: n.Registry,
		PongTimeout: cfg.PongTimeout.Duration(), DrainWindow: cfg.DrainWindow.Duration(), Log: n.log,
		MaxOutbound: cfg.MaxOutbound, MaxOutboundTotal: cfg.MaxOutboundTotal, MaxChannels: cfg.MaxChannelsPerConnection,
		HandshakeTimeout: cfg.HandshakeTimeout.Duration(), MaxRequestHead: cfg.MaxRequestHead, MaxHandshakes: cfg.MaxHandshakes,
		HandshakeWorkers:   cfg.HandshakeWorkers,
		MaxHTTPConnections: cfg.MaxHTTPConnections, MaxConnectionsPerIP: cfg.MaxConnectionsPerIP,
		TrustedProxies: cfg.TrustedProxies, ProxyProtocol: cfg.ProxyProtocol,
		History: hist, HistoryTTL: cfg.HistoryTTL.Duration(), Local: allInOne, GatewayTTL: cfg.GatewayTTL.Duration(),
		Reactor: cfg.Reactor, TLS: tlsConfig, Webhooks: recorder, Console: n.console,
	}
	if opts.Gateway != nil {
		opts.Gateway(&gwOpts)
	}
	gw, err := gateway.New(gwOpts)
	if err != nil {
		return nil, err
	}
	n.gw = gw

	registry := cluster.NewRegistry(stores, gatewayID, n.log.With().Str("component", "registry").Logger(), gw.Sweep)
	registry.OnLapse(gw.Reassert)
	if err := ensure.Do(setupCtx, registry.Register); err != nil {
		return nil, fmt.Errorf("registering the gateway: %w", err)
	}
	ready := func() bool { return gw.Ready() && gwConn.IsConnected() && apiConn.IsConnected() }
	querier := cluster.NewQuerier(gwConn, registry.Live, 2*time.Second)
	api := httpapi.New(httpapi.Options{
		Apps: cfg.Apps, Publisher: queue.NewPublisher(apiJS), Limits: cfg.Limits(),
		// The cluster's answers, each from the type that owns it.
		Channels: querier,
		Presence: presence.New(stores.Presence),
		Cache:    cache.New(stores.Cache, stores.CacheTTL()),
		Terminator: httpapi.TerminatorFunc(func(_ context.Context, appID, userID string) error {
			return gateway.Terminate(gwConn, appID, userID)
		}),
		Triggered:    gw.Metrics().MessagesIn.WithLabelValues("api"),
		Accepted:     gw.APITriggered,
		MaxBodyBytes: int64(cfg.MaxRequestSize), PathPrefix: cfg.Path,
		Log: n.log.With().Str("component", "httpapi").Logger(),
	})
	// The dashboard (RESOUND_DASHBOARD): in front of the API on the
	// public port, or on its own listener.
	withDash, err := n.newDashboard(runCtx, gwConn, n.console, querier, api)
	if err != nil {
		return nil, err
	}
	// The public port: the API, and the probes in front of it, as Reverb
	// serves /up (load balancers probe the port they balance). /metrics
	// and the profiler are not there: see startOps.
	public := ops.WithProbes(cfg.Path, ops.Health{Ready: ready}, withDash)
	if err := n.startOps(ready); err != nil {
		return nil, err
	}
	n.ln = opts.Listener
	if n.ln == nil {
		addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
		if n.ln, err = listenPublic(addr); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
	}
	// The recorder outlives the gateway's Serve: the channels its closing
	// connections vacate, and the members they take away, are recorded
	// while it drains, and stored before the node closes its connections.
	recorderCtx, stopRecorder := context.WithCancel(context.Background())
	n.goRun(func() error { defer stopRecorder(); return gw.Serve(runCtx, n.ln, public) })
	n.goRun(func() error { return recorder.Run(recorderCtx) })
	if allInOne {
		wConn, err := n.connect("resound-worker")
		if err != nil {
			return nil, err
		}
		wjs, err := jetstream.New(wConn)
		if err != nil {
			return nil, err
		}
		n.pool = worker.New(worker.Options{
			Conn: wConn, JetStream: wjs, Limits: cfg.Limits(), Workers: cfg.Workers, MaxAttempts: cfg.JobMaxAttempts, Log: n.log.With().Str("component", "worker").Logger(),
			Cache: stores.Cache, Stores: stores, Partitions: cfg.Partitions, Metrics: metrics.NewWorker(n.Registry, func() float64 { return float64(n.pool.Stats().Pending.Load()) }),
			Apps:     func(id string) bool { _, ok := cfg.Apps.ByID(id); return ok },
			Recovers: cfg.Recovers,
			// The gateway in this process is the only one the embedded
			// server serves: hand it the deliveries without the NATS hop.
			// Those of apps with recovery are also published, only for the
			// history to keep (nothing else subscribes to them): there is
			// no other gateway to catch up, but clients resume.
			Deliver: gw.DeliverLocal,
			// No other worker shares the embedded server: a stop hands
			// nothing over.
			Alone:  true,
			Record: wConn.Publish,
			// The webhook lanes are shared out with the partitions.
			OnLive: func(live map[string]bool) { n.hooks.Assign(live) },
		})
		n.hooks = webhook.NewSender(webhook.SenderOptions{
			JetStream: wjs, Conn: wConn, Apps: cfg.Apps, ID: n.pool.ID(), Lanes: cfg.Partitions, Timing: webhook.TimingOf(&cfg.Settings),
			Log: n.log.With().Str("component", "webhooks").Logger(), Registerer: n.Registry, Observe: n.console.Record,
			Alone: true, // as the pool
		})
		n.goRun(func() error { return n.pool.Run(runCtx) })
		n.goRun(func() error { return n.hooks.Run(runCtx) })
	}
	// The console answers the dashboards' stats requests for the gateway
	// and, all-in-one, for its workers.
	stats := []console.StatsSource{{Kind: console.KindGateway, Process: gatewayID, Stats: gw.Stats}}
	if allInOne {
		stats = append(stats, console.StatsSource{Kind: console.KindWorker, Process: gatewayID + "-workers",
			Stats: console.WorkerStats(appIDs, n.hooks.AppStats)})
	}
	n.goRun(func() error { return n.console.Run(runCtx, stats...) })

	n.goRun(func() error { registry.Run(runCtx); return nil })
	for !gw.Ready() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return n, nil
}

func (n *Node) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				n.log.Warn().Err(err).Str("conn", name).Msg("NATS disconnected")
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { n.log.Info().Str("conn", name).Msg("NATS reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			n.log.Warn().Err(err).Str("conn", name).Msg("NATS error")
		}),
	}
	opts = append(opts, extra...)
	var nc *nats.Conn
	var err error
	if n.embedded != nil {
		nc, err = n.embedded.Connect(name, opts...)
	} else {
		nc, err = nats.Connect(n.cfg.NATSURL, append(opts, nats.Name(name))...)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	n.conns = append(n.conns, nc)
	return nc, nil
}

func (n *Node) goRun(f func() error) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := f(); err != nil && !errors.Is(err, context.Canceled) {
			n.errMu.Lock()
			if n.err == nil {
				n.err = err
			}
			n.errMu.Unlock()
			n.log.Error().Err(err).Msg("component stopped")
		}
	}()
}

// Addr is the address the gateway listens on.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

// Config is the configuration in force, with the development app if one
// was made.
func (n *Node) Config() *config.Config { return n.cfg }

// Gateway is the node's gateway.
func (n *Node) Gateway() *gateway.Server { return n.gw }

// WebhookRecorder is the recorder of the gateway's webhook records.
func (n *Node) WebhookRecorder() *webhook.Recorder { return n.recorder }

// Workers is the in-process worker pool, or nil when workers run apart.
func (n *Node) Workers() *worker.Pool { return n.pool }

// WebhookSender is the in-process workers' webhook sender, or nil when
// workers run apart.
func (n *Node) WebhookSender() *webhook.Sender { return n.hooks }

// Close stops everything: the gateway closes its clients with 4200, the
// workers stop fetching, and the embedded server shuts down last.
func (n *Node) Close() error {
	if n.cancel != nil {
		n.cancel()
	}
	n.wg.Wait()
	n.closeDashboard()
	n.closeOps()
	for _, nc := range n.conns {
		nc.Close()
	}
	if n.embedded != nil {
		n.embedded.Shutdown()
	}
	n.errMu.Lock()
	defer n.errMu.Unlock()
	return n.err
}

// listenPublic binds the public port with no TCP keep-alive on the sockets
// it accepts (Go's listener turns it on, a probe every 15 s). The Pusher
// protocol's own ping finds dead peers (the activity timeout), and a probe
// and its answer for every idle socket every 15 s is kernel work that
// grows with the sockets held: about 67,000 packets a second each way at
// a million.
func listenPublic(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}
