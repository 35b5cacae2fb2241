// Command baseline is the goroutine-per-connection Pusher server that
// Resound's benchmarks compare against. It is the design most Go WebSocket
// servers use, after gorilla/websocket's chat example: per connection one
// goroutine reads and one writes from a buffered channel; a hub maps
// channels to connections under a lock; a connection whose channel is full
// is dropped. Nothing more: no coalescing of frames, no shared buffers, no
// epoll.
//
// It speaks enough of the Pusher protocol for the load generator and
// pusher-js on public channels: GET /app/{key} (connection_established,
// pusher:subscribe to public channels, pusher:unsubscribe,
// pusher:ping), and the signed HTTP API POST /apps/{id}/events and
// /batch_events. GET /up answers 200.
//
//	baseline -port 8080 -app-id 1 -key k -secret s
//
// Every flag defaults from the environment: BENCH_PORT (or
// REVERB_SERVER_PORT), REVERB_APP_ID, REVERB_APP_KEY, REVERB_APP_SECRET.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

type config struct {
	addr               string
	appID, key, secret string
	sendBuffer         int           // frames queued per connection before it is dropped
	pingInterval       time.Duration // WebSocket ping after this much silence from the client
	pongTimeout        time.Duration
	activityTimeout    int // seconds, sent in connection_established
	maxMessageSize     int64
	maxRequestSize     int64
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func envOr(def string, names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return def
}

func run(args []string) int {
	var cfg config
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	host := fs.String("host", "0.0.0.0", "address to bind")
	port := fs.String("port", envOr("8080", "BENCH_PORT", "REVERB_SERVER_PORT"), "port for WebSockets and the HTTP API ($BENCH_PORT)")
	fs.StringVar(&cfg.appID, "app-id", os.Getenv("REVERB_APP_ID"), "app id ($REVERB_APP_ID)")
	fs.StringVar(&cfg.key, "key", os.Getenv("REVERB_APP_KEY"), "app key ($REVERB_APP_KEY)")
	fs.StringVar(&cfg.secret, "secret", os.Getenv("REVERB_APP_SECRET"), "app secret ($REVERB_APP_SECRET)")
	fs.IntVar(&cfg.sendBuffer, "send-buffer", 256, "frames queued per connection; a connection with a full queue is dropped")
	fs.DurationVar(&cfg.pingInterval, "ping-interval", 60*time.Second, "WebSocket ping to a connection after this long")
	fs.DurationVar(&cfg.pongTimeout, "pong-timeout", 30*time.Second, "time a pinged connection has to answer")
	level := fs.String("log-level", "warn", "debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.sendBuffer < 1 {
		fmt.Fprintln(os.Stderr, "baseline: -send-buffer must be at least 1")
		return 2
	}
	if cfg.appID == "" || cfg.key == "" || cfg.secret == "" {
		fmt.Fprintln(os.Stderr, "baseline: -app-id, -key and -secret (or REVERB_APP_ID, REVERB_APP_KEY, REVERB_APP_SECRET) are required")
		return 2
	}
	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "baseline: -log-level:", err)
		return 2
	}
	cfg.addr = net.JoinHostPort(*host, *port)
	cfg.activityTimeout = 30
	cfg.maxMessageSize = 10000
	cfg.maxRequestSize = 256 << 10
	log := zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Str("service", "baseline").Logger()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error().Err(err).Msg("listen")
		return 1
	}
	srv := newServer(cfg, log)
	hs := &http.Server{Handler: srv.routes(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Warn().Str("addr", ln.Addr().String()).Str("app_id", cfg.appID).Msg("listening")
	select {
	case err := <-errc:
		log.Error().Err(err).Msg("serve")
		return 1
	case <-ctx.Done():
	}
	// Hijacked WebSockets are not the HTTP server's to close; the process
	// exit closes them.
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	return 0
}
