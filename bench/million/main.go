//go:build linux

// Command million runs a million WebSocket sockets on this one machine:
// one nats-server, W workers, G gateway processes and the load
// generators it takes, every socket subscribed, through these phases:
//
//  1. connect: every load generator opens its sockets, each subscribing to
//     its small channel (ChannelSize subscribers; every PresenceEvery-th
//     one a presence channel, joined with a signed auth as a user of its
//     own) and to the one channel everybody is on. Sampled every second:
//     the connect rate over time.
//
//  2. hold: nothing is sent for -hold (pings only: every socket silent
//     for -ping-interval is pinged). At its end: memory per socket of the gateways,
//     the load generators, nats-server and the kernel; CPU over the hold.
//
//  3. steady: the fan-out on the small channels starts (-fanout-rate
//     events/s over all of them, each delivered to its ten subscribers and
//     counted exactly) and runs through every later phase.
//
//  4. broadcast: -broadcasts events to the channel everybody is on, one
//     after the other, each once the last was delivered to every socket:
//     each must reach every socket exactly once; the time to its last
//     delivery, and deliveries per second.
//
//  5. drain: a tenth of the gateways get SIGTERM; their clients reconnect
//     to the others (spread over all of them); then one more broadcast,
//     which every socket, moved or not, must get.
//
//  6. stop: the fan-out stops, every event is accounted for (nothing
//     missing, nothing twice, among the clients that stayed and those that
//     moved alike), the load generators report, everything is stopped.
//
//     go tool task bench:million                     # 60 × 16,700 = 1,002,000 sockets
//     go run ./bench/million -gateways 3 -per-gateway 5000 -hold 70s
//
// Everything it starts is in a process group of its own and is killed
// with it: on the end of the run, on an error, on Ctrl-C (which stops the
// run in order), and by the kernel if the run itself is killed. It reads
// the kernel settings the run depends on, reports them, and raises those a
// run of this size needs (the descriptors of both ends of every
// connection, TCP buffer memory for a broadcast) only if they are short
// and it may, restoring them at the end.
//
// Results go to bench/results/million-<stamp>/: summary.json (the
// figures), samples.jsonl (every second), loadgen-*.json (each load
// generator's summary) and loadgen.json (merged), report.md, the plots,
// and every process's log. With -docs NAME (the default for runs of
// 900,000 sockets or more: "million") the summary and the plots also go
// to docs/scaling/NAME.json and docs/img/NAME-*.svg.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the run's knobs; each flag defaults to a MILLION_*
// environment variable, so that `go tool task bench:million` takes them
// too.
type options struct {
	gateways, perGateway, workers    int
	perLoadgen, sourcesPer, inflight int
	channelSize, presenceEvery       int
	broadcasts                       int
	connectRate, fanoutRate          float64
	drainFraction                    float64
	hold, steady, drainWindow        time.Duration
	pingInterval                     time.Duration
	connectTimeout, phaseTimeout     time.Duration
	countConnections                 bool
	sysctl                           string
	results, docs                    string
	keep                             bool
	natsProfile                      int
	gomaxprocs                       int
}

func env(name string) string { return strings.TrimSpace(os.Getenv("MILLION_" + name)) }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(env(name)); err == nil {
		return v
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(env(name), 64); err == nil {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(env(name)); err == nil {
		return v
	}
	return def
}

func envString(name, def string) string {
	if v := env(name); v != "" {
		return v
	}
	return def
}

func envBool(name string, def bool) bool {
	switch strings.ToLower(env(name)) {
	case "1", "true", "yes":
		return true
	case "0", "false", "no":
		return false
	}
	return def
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("million", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.gateways, "gateways", envInt("GATEWAYS", 60), "gateway processes (env MILLION_GATEWAYS)")
	fs.IntVar(&o.perGateway, "per-gateway", envInt("PER_GATEWAY", 16_700), "sockets per gateway before the drain (env MILLION_PER_GATEWAY); after it the others hold everyone, under 19,500 each")
	fs.IntVar(&o.workers, "workers", envInt("WORKERS", 2), "worker processes (env MILLION_WORKERS)")
	fs.IntVar(&o.perLoadgen, "per-loadgen", envInt("PER_LOADGEN", 18_000), "sockets per load generator at most (env MILLION_PER_LOADGEN)")
	fs.IntVar(&o.sourcesPer, "sources-per-loadgen", envInt("SOURCES_PER_LOADGEN", 4), "loopback source addresses of each load generator (env MILLION_SOURCES_PER_LOADGEN)")
	fs.IntVar(&o.inflight, "inflight", envInt("INFLIGHT", 1000), "handshakes in flight over all load generators (env MILLION_INFLIGHT)")
	fs.Float64Var(&o.connectRate, "connect-rate", envFloat("CONNECT_RATE", 0), "sockets opened per second over all load generators at most; 0: as fast as -inflight lets them (env MILLION_CONNECT_RATE)")
	fs.IntVar(&o.channelSize, "channel-size", envInt("CHANNEL_SIZE", 10), "subscribers of each small channel (env MILLION_CHANNEL_SIZE)")
	fs.IntVar(&o.presenceEvery, "presence-every", envInt("PRESENCE_EVERY", 20), "every n-th small channel is a presence channel; 0: none (env MILLION_PRESENCE_EVERY)")
	fs.Float64Var(&o.fanoutRate, "fanout-rate", envFloat("FANOUT_RATE", 200), "events per second over all small channels, from the steady phase to the end (env MILLION_FANOUT_RATE)")
	fs.IntVar(&o.broadcasts, "broadcasts", envInt("BROADCASTS", 5), "events to everybody before the drain (one more follows it; at most 63) (env MILLION_BROADCASTS)")
	fs.DurationVar(&o.hold, "hold", envDuration("HOLD", 2*time.Minute), "idle hold once all are connected (env MILLION_HOLD)")
	fs.DurationVar(&o.steady, "steady", envDuration("STEADY", 30*time.Second), "fan-out alone before the broadcasts (env MILLION_STEADY)")
	fs.Float64Var(&o.drainFraction, "drain-fraction", envFloat("DRAIN_FRACTION", 0.1), "share of the gateways drained (env MILLION_DRAIN_FRACTION)")
	// 300 s, not Reverb's 60: measured here, one ping and its pong cost
	// about 110 µs of CPU over both ends (gateway, load generator,
	// kernel), so a million sockets pinged every 60 s take 90% of this
	// machine's two cores. The first full run with 60 s slowed its
	// connects to 250/s by 780,000 sockets and could not finish; a
	// deployment that size has the cores for it.
	fs.DurationVar(&o.pingInterval, "ping-interval", envDuration("PING_INTERVAL", 300*time.Second), "the gateways' RESOUND_PING_INTERVAL: how long a socket is silent before the server pings it (env MILLION_PING_INTERVAL; Reverb's default is 60 s, which at a million sockets takes 90% of this machine's CPU)")
	fs.DurationVar(&o.drainWindow, "drain-window", envDuration("DRAIN_WINDOW", 10*time.Second), "the gateways' RESOUND_DRAIN_WINDOW (env MILLION_DRAIN_WINDOW)")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", envDuration("CONNECT_TIMEOUT", 30*time.Minute), "how long the connect phase may take (env MILLION_CONNECT_TIMEOUT)")
	fs.DurationVar(&o.phaseTimeout, "phase-timeout", envDuration("PHASE_TIMEOUT", 5*time.Minute), "how long one broadcast, or the drain, may take (env MILLION_PHASE_TIMEOUT)")
	fs.BoolVar(&o.countConnections, "count-connections", envBool("COUNT_CONNECTIONS", true), "give the app a max_connections (twice the sockets), so that every connect is counted in the cluster-wide counter (env MILLION_COUNT_CONNECTIONS)")
	fs.StringVar(&o.sysctl, "sysctl", envString("SYSCTL", "auto"), "auto: raise the kernel settings the run needs if they are short and writable (restored after); off: only read them (env MILLION_SYSCTL)")
	fs.StringVar(&o.results, "results", envString("RESULTS", "bench/results"), "directory that gets million-<stamp>/ (env MILLION_RESULTS)")
	fs.StringVar(&o.docs, "docs", env("DOCS"), "also write docs/scaling/NAME.json and docs/img/NAME-*.svg; default \"million\" for 900,000 sockets or more, none below; \"-\" for none (env MILLION_DOCS)")
	fs.IntVar(&o.gomaxprocs, "gomaxprocs", envInt("GOMAXPROCS", 1), "GOMAXPROCS of each gateway and load generator; 0: Go's default, one per core (env MILLION_GOMAXPROCS). About 120 such processes share the machine's 2 cores: with two Ps each, ~300 threads were runnable at once (load average 270-290), and a NATS round trip took seconds in the run queue")
	fs.IntVar(&o.natsProfile, "nats-profile", envInt("NATS_PROFILE", 0), "serve nats-server's pprof on this port of 127.0.0.1, to profile it during the run; 0: not served (env MILLION_NATS_PROFILE)")
	fs.BoolVar(&o.keep, "keep", envBool("KEEP", false), "keep the temporary directory: binaries, NATS store (env MILLION_KEEP)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.broadcasts < 1 || o.broadcasts >= 64:
		return o, errors.New("-broadcasts: 1 to 63 (the load generators count 64 events on the all channel)")
	case o.hold < 0 || o.steady < 0 || o.fanoutRate < 0 || o.connectRate < 0 || o.drainFraction < 0 || o.drainFraction >= 1:
		return o, errors.New("-hold, -steady, -fanout-rate, -connect-rate cannot be negative, and -drain-fraction is under 1")
	case o.sysctl != "auto" && o.sysctl != "off":
		return o, errors.New("-sysctl: auto or off")
	}
	if o.docs == "" && o.gateways*o.perGateway >= 900_000 {
		o.docs = "million"
	}
	if o.docs == "-" {
		o.docs = ""
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "million:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := newRun(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "million:", err)
		if r != nil {
			r.teardown()
		}
		return 2
	}
	res, err := r.run(ctx)
	r.teardown()
	if res != nil {
		if werr := r.write(res); werr != nil {
			fmt.Fprintln(stderr, "million: writing the results:", werr)
		}
		fmt.Fprint(stdout, res.markdown())
	}
	if err != nil {
		fmt.Fprintln(stderr, "million:", err)
		return 1
	}
	if len(res.Problems) > 0 {
		return 1
	}
	return 0
}
