// Command gateway runs a Resound gateway: the WebSocket server that Pusher
// clients (pusher-js, laravel-echo, the mobile SDKs) connect to, and the
// Pusher HTTP API on the same port.
//
// Without NATS_URL it is all of Resound in one process: it embeds a NATS
// JetStream server and runs the workers too.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/logging"
	"github.com/resoundhq/resound/internal/node"
	"github.com/resoundhq/resound/internal/version"
)

func main() {
	for _, a := range os.Args[1:] {
		switch a {
		case "-h", "-help", "--help", "help":
			fmt.Fprintln(os.Stdout, "Usage: gateway\n\nResound gateway: Pusher-protocol WebSockets and the Pusher HTTP API on one port.\nWithout NATS_URL it embeds NATS JetStream and runs the workers: all of Resound in one process.\n\nSettings (environment variables):")
			_ = config.Usage(os.Stdout)
			return
		case "-version", "--version", "version":
			fmt.Fprintln(os.Stdout, version.String("gateway"))
			return
		default:
			fmt.Fprintf(os.Stderr, "gateway: unknown argument %q (settings come from the environment; see --help)\n", a)
			os.Exit(2)
		}
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
	log := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	n, err := node.Start(ctx, node.Options{Config: cfg, Log: log})
	if err != nil {
		log.Error().Err(err).Msg("start-up failed")
		os.Exit(1)
	}
	port := strconv.Itoa(n.Addr().(*net.TCPAddr).Port)
	host := cfg.Host
	if host == "0.0.0.0" || host == "" || host == "::" {
		host = "localhost"
	}
	mode := "all-in-one (embedded NATS JetStream and workers)"
	if cfg.NATSURL != "" {
		mode = "gateway (NATS at " + cfg.NATSURL + ")"
	}
	log.Info().Str("addr", n.Addr().String()).Str("mode", mode).Str("reactor", n.Gateway().Reactor()).Bool("tls", cfg.TLS()).Msg("Resound is ready")
	scheme, ws := "http", "ws"
	if cfg.TLS() {
		scheme, ws = "https", "wss"
	}
	if app := n.DevApp; app != nil {
		fmt.Fprintf(os.Stderr, `
  No app was configured, so Resound made a development app:

    REVERB_APP_ID=%s
    REVERB_APP_KEY=%s
    REVERB_APP_SECRET=%s
    REVERB_HOST=%s
    REVERB_PORT=%s
    REVERB_SCHEME=%s

  Clients connect to %s://%s:%s/app/%s
  Put these in your Laravel .env (or set them here) to keep them fixed.

`, app.ID, app.Key, app.Secret, host, port, scheme, ws, host, port, app.Key)
	} else {
		for _, app := range n.Config().Apps.All() {
			log.Info().Str("app_id", app.ID).Str("url", ws+"://"+host+":"+port+cfg.Path+"/app/"+app.Key).Msg("app")
		}
	}
	<-ctx.Done()
	log.Info().Msg("shutting down")
	if err := n.Close(); err != nil {
		log.Error().Err(err).Msg("shutdown")
		os.Exit(1)
	}
}
