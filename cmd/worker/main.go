// Command worker runs Resound's workers in their own process: they consume
// broadcast jobs from NATS JetStream, encode each channel's frame once and
// route it to the gateways with subscribers. Scale them independently of
// the gateways; all of them need the same NATS_URL and apps.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/logging"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/ops"
	"github.com/resoundhq/resound/internal/streams"
	"github.com/resoundhq/resound/internal/version"
	"github.com/resoundhq/resound/internal/webhook"
	"github.com/resoundhq/resound/internal/worker"
)

func main() {
	for _, a := range os.Args[1:] {
		switch a {
		case "-h", "-help", "--help", "help":
			fmt.Fprintln(os.Stdout, "Usage: worker\n\nResound worker: consumes broadcast jobs from NATS JetStream and routes them to the gateways.\nNATS_URL is required. It reads the same apps as the gateways.\n\nSettings (environment variables):")
			_ = config.Usage(os.Stdout)
			return
		case "-version", "--version", "version":
			fmt.Fprintln(os.Stdout, version.String("worker"))
			return
		default:
			fmt.Fprintf(os.Stderr, "worker: unknown argument %q (settings come from the environment; see --help)\n", a)
			os.Exit(2)
		}
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	if cfg.NATSURL == "" {
		fmt.Fprintln(os.Stderr, "worker: NATS_URL is required (the all-in-one gateway runs workers itself)")
		os.Exit(2)
	}
	if cfg.Apps.Len() == 0 {
		fmt.Fprintln(os.Stderr, "worker: no app configured: set REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET, or RESOUND_APPS_FILE")
		os.Exit(2)
	}
	log := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat).With().Str("component", "worker").Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	nc, err := nats.Connect(cfg.NATSURL, nats.Name("resound-worker"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true),
		// Nothing buffered while down: see worker.Options.Conn.
		nats.ReconnectBufSize(-1))
	if err != nil {
		log.Error().Err(err).Msg("connecting to NATS")
		os.Exit(1)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error().Err(err).Msg("JetStream")
		os.Exit(1)
	}
	// The job stream, the buckets, the partitions' consumers and the
	// history; a NATS cluster started with us may not serve JetStream
	// yet: wait for it, saying why.
	objects, err := streams.Ensure(ctx, log, js, &cfg.Settings, true)
	if err != nil {
		log.Error().Err(err).Msg("JetStream set-up")
		os.Exit(1)
	}
	stores := objects.Stores
	reg := metrics.NewRegistry()
	var pool *worker.Pool
	var hooks *webhook.Sender
	wm := metrics.NewWorker(reg, func() float64 { return float64(pool.Stats().Pending.Load()) })
	pool = worker.New(worker.Options{
		Conn: nc, JetStream: js, Limits: cfg.Limits(), Workers: cfg.Workers, Log: log, Cache: stores.Cache, Metrics: wm,
		Stores: stores, Partitions: cfg.Partitions, MaxAttempts: cfg.JobMaxAttempts,
		// The webhook lanes are shared out with the partitions.
		OnLive:   func(live map[string]bool) { hooks.Assign(live) },
		Apps:     func(id string) bool { _, ok := cfg.Apps.ByID(id); return ok },
		Recovers: cfg.Recovers,
		EnsureHistory: func(ctx context.Context) error {
			_, err := history.Ensure(ctx, js, streams.History(&cfg.Settings))
			return err
		},
	})
	// The worker's operations endpoints, on RESOUND_METRICS_PORT: /metrics,
	// and /up (503 while it drains or NATS is away) and /livez. No
	// profiler: RESOUND_PPROF is the gateway's.
	var draining atomic.Bool
	mux := ops.NewMux(ops.Options{Metrics: reg.Handler(), Health: ops.Health{
		Ready:    func() bool { return !draining.Load() && nc.IsConnected() },
		NotReady: "UNAVAILABLE",
	}})
	msrv := &http.Server{Addr: net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.MetricsPort)), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if cfg.MetricsPort != 0 {
		go func() {
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error().Err(err).Msg("metrics server")
			}
		}()
		defer msrv.Close()
	}
	go func() { <-ctx.Done(); draining.Store(true) }()
	// The dashboard's side in this process: the debug console (the
	// webhook sender's entries) and the answer to its stats requests.
	appIDs := make([]string, 0, cfg.Apps.Len())
	for _, app := range cfg.Apps.All() {
		appIDs = append(appIDs, app.ID)
	}
	processID := nuid.Next()
	cons := console.New(console.Options{Conn: nc, Process: processID, Apps: appIDs, Rate: cfg.ConsoleRate, Registry: reg,
		Log: log.With().Str("component", "console").Logger()})
	hooks = webhook.NewSender(webhook.SenderOptions{
		JetStream: js, Conn: nc, Apps: cfg.Apps, ID: pool.ID(), Lanes: cfg.Partitions, Timing: webhook.TimingOf(&cfg.Settings),
		Log: log.With().Str("component", "webhooks").Logger(), Registerer: reg, Observe: cons.Record,
	})
	go func() {
		err := cons.Run(ctx, console.StatsSource{Kind: console.KindWorker, Process: processID, Stats: console.WorkerStats(appIDs, hooks.AppStats)})
		if err != nil {
			log.Error().Err(err).Msg("debug console")
		}
	}()
	log.Info().Int("workers", cfg.Workers).Str("nats", cfg.NATSURL).Int("metrics_port", cfg.MetricsPort).Msg("worker started")
	// The sender stops with the pool, on the same signal, and hands its
	// lanes back as the pool does its partitions.
	hooksDone := make(chan error, 1)
	go func() {
		err := hooks.Run(ctx)
		if err != nil {
			log.Error().Err(err).Msg("webhook sender stopped: this worker sends no webhooks")
		}
		hooksDone <- err
	}()
	if err := pool.Run(ctx); err != nil {
		log.Error().Err(err).Msg("worker stopped")
		os.Exit(1)
	}
	if err := <-hooksDone; err != nil {
		os.Exit(1)
	}
	log.Info().Msg("worker stopped")
}
