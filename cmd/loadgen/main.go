// Command loadgen load-tests a Pusher-protocol deployment (Resound, or
// Reverb, soketi, Pusher itself over plain ws://) with many cheap client
// connections: an epoll loop over raw non-blocking sockets, with no
// goroutine per connection, so the load generator is not the bottleneck.
//
// Every run is bounded in time and count. It logs progress to stderr and
// ends with exactly one line of JSON on stdout: the summary. Exit status
// is 0 when the run went through, 1 when it hit an error (the summary is
// still printed, with "errors"), 2 for bad flags.
//
// # Modes
//
//	loadgen idle   [flags]   hold connections open, answering pings
//	loadgen fanout [flags]   trigger events through the HTTP API and measure their delivery
//	loadgen churn  [flags]   connect, subscribe and disconnect at a rate
//	loadgen merge  FILE...   merge the summaries of several processes into one
//
// Credentials default to REVERB_APP_ID, REVERB_APP_KEY and
// REVERB_APP_SECRET, so with the gateway's environment loaded:
//
//	export REVERB_APP_ID=123456 REVERB_APP_KEY=lg-key REVERB_APP_SECRET=lg-secret
//
// idle: 10,000 connections over 100 channels (connection k subscribes to
// lg-<run>-<k mod 100>), opened at 2,000/s, held 60 s while answering
// pusher:ping and WebSocket pings, then closed. With -pid it samples the
// gateway's VmRSS before and after and reports KiB per connection:
//
//	loadgen idle -url http://127.0.0.1:8080 -conns 10000 -channels 100 -duration 60s -pid $(pgrep -n gateway)
//
// fanout: 1,000 subscribers on 1 channel; events as fast as 64 concurrent
// requests allow (-rate 0; a channel's events are always sent one request
// after another, so that order can be checked) for 10 s; then up to -drain
// for late deliveries. Each event's data is {"seq":N,"ts":unix-nanos}; the
// summary has deliveries/s, missing, duplicates, out-of-order, and trigger
// to receipt latency (p50, p90, p99, p99.9, max):
//
//	loadgen fanout -conns 1000 -channels 1 -rate 0 -duration 10s
//	loadgen fanout -conns 1000 -channels 1 -rate 20 -duration 10s
//	loadgen fanout -conns 5000 -channels 50 -rate 500 -batch 10 -duration 30s   # batch_events, 10 a request
//	loadgen fanout -conns 50 -channels 5 -rate 500 -events 200                  # exactly 200 events
//	loadgen fanout -conns 10 -channels 1 -rate 500 -batch 10 -payload 10000 -events 3000   # 10 KB events
//
// churn: 500 new connections a second for 30 s, each subscribing and then
// closing (use -hold 2s to keep each one for a while); reports
// handshakes/s, failures by kind and connect latency percentiles:
//
//	loadgen churn -rate 500 -duration 30s -channels 10
//
// # Centrifugo
//
// With -protocol centrifugo the same workloads run against Centrifugo
// (https://centrifugal.dev), which has a protocol of its own: connections
// use its JSON protocol at {prefix}/connection/websocket (connect, then
// subscribe to the same channel names, answering its pings), and events
// go through its server API, POST {prefix}/api/publish (or /api/batch
// with -batch) with -secret as the X-API-Key; -key and -app-id are not
// used. The published data is the object {"seq":N,"ts":unix-nanos}, so
// the summary counts and measures exactly as for Pusher:
//
//	loadgen fanout -protocol centrifugo -url http://127.0.0.1:8000 -secret API_KEY -conns 1000 -channels 1 -rate 20 -duration 10s
//
// # More connections than one process may hold
//
// The open-files hard limit here is 20,000, so one process refuses more
// than -max-conns-per-process (19,000) connections. Beyond ~60k
// connections to one server address the client's ephemeral ports run out
// too. So run several processes, each with its own loopback source
// addresses (-sources binds each connection to one of them before
// connecting; any 127.x.y.z works on Linux without configuration) and its
// own shard of the channels (-shard i/n: the process owns channels c with
// c mod n = i, holds the connections on them, and triggers only them, at
// its share of -rate and -events; give every process the same -run, -conns,
// -channels and -rate). Then merge the summaries, which adds the counts and
// merges the latency histograms, so percentiles are those of all
// deliveries:
//
//	RUN=$(date +%s)
//	for i in 0 1 2; do
//	  loadgen fanout -run $RUN -shard $i/3 -conns 45000 -channels 300 -rate 300 -duration 30s \
//	    -sources 127.0.$((i+1)).1-127.0.$((i+1)).20 > fanout-$i.json &
//	done; wait
//	loadgen merge fanout-0.json fanout-1.json fanout-2.json
//
//	for i in 0 1 2; do
//	  loadgen idle -run $RUN -shard $i/3 -conns 45000 -channels 300 -duration 60s \
//	    -sources 127.0.$((i+1)).1-127.0.$((i+1)).20 -pid $(pgrep -n gateway) > idle-$i.json &
//	done; wait
//	loadgen merge idle-*.json
//
// Processes without -shard (each with its own -run, the default being
// random) are independent tests against the same server; their summaries
// merge just as well. The server must allow that many open files too.
//
// One channel with more subscribers than a process holds (fan-out to
// all): -shard-by conns gives shard i the connections k with k mod n = i
// of every channel. Only shard 0 triggers: it first waits until the
// server (GET /channels?info=subscription_count, counted over the whole
// cluster) has every planned subscription, sends, then triggers "lg-end"
// with the count on each channel; the other shards take each channel's
// count from it. Give every shard the same -run, -conns, -channels, -rate,
// -duration and -drain:
//
//	for i in 0 1 2; do
//	  loadgen fanout -run $RUN -shard $i/3 -shard-by conns -conns 45000 -channels 1 -rate 10 -duration 10s \
//	    -url http://127.0.0.1:$((8081+i)) -sources 127.0.$((i+1)).1-127.0.$((i+1)).20 > all-$i.json &
//	done; wait
//	loadgen merge all-*.json
//
// # Several gateways, and faults
//
// -ws-urls spreads the WebSockets over several servers while API requests
// go to -url alone: the r-th subscriber of channel c connects to URL
// (c + r) mod n, so every channel with at least n subscribers has some on
// each. A gateway killed or drained among them then takes no request
// (and no acknowledgement) with it, and -url can be any healthy one.
// -reconnect makes a subscribed connection that the server closes (4200
// on a drain, a killed gateway, …) connect again to another URL (the
// k-th connection 1 + k mod (n-1) URLs further on, so that a dead
// server's clients spread evenly over the others; the next URL on each
// further attempt) and subscribe again, within 100 ms and then backing
// off to 2 s. Counting
// stays exact: events sent while a connection was away are its gap, not
// missing; everything sent after it subscribed again is expected (the
// exact rules are at conn in internal/loadgen/poller_linux.go). -progress 200ms
// makes the progress lines (events_sent, deliveries, reconnects,
// request_failures) frequent enough to act on mid-run:
//
//	loadgen fanout -url http://127.0.0.1:8081 -ws-urls http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083 \
//	  -conns 300 -channels 10 -rate 200 -duration 20s -reconnect -progress 200ms -json
//
// # Driven by a harness: two channels a connection, presence, phases
//
// bench/million drives many load generators through one long run. -all
// puts every connection on lg-<run>-all too, besides its own channel; the
// harness triggers that channel itself (loadgen.Broadcaster) and each
// process counts every event once per connection ("all" in the summary:
// deliveries per event and the time to its last one). -presence-every n
// makes every n-th channel of each shard a presence channel, joined with a
// signed channel auth. -control reads commands from stdin: the fan-out
// waits for "send", "phase NAME" labels the latencies that follow
// (phase_latency_ms), and "stop" (or the end of stdin) ends the sending,
// after which the run drains and ends as usual:
//
//	(echo send; sleep 60; echo phase busy; sleep 60; echo stop) | loadgen fanout -control -all -presence-every 20 \
//	  -conns 10000 -channels 1000 -rate 100 -duration 1h -json
//
// # Reading the summary
//
//   - conns: planned, attempted, established (got connection_established),
//     subscribed, failed (never subscribed), dropped (lost after
//     subscribing, before the end; with -reconnect each loss), reconnects
//     (subscribed again after a loss), failures by kind (refused,
//     no_local_port, timeout_<step>, handshake_status_<code>,
//     pusher_error_<code>, server_close_<code>, eof_<step>, ...).
//   - connect_ms: socket() to pusher:connection_established (TCP connect,
//     upgrade, first message); subscribe_ms: pusher:subscribe to
//     subscription_succeeded.
//   - fanout: events_sent (acknowledged by the API), expected (events sent
//     on a channel × its subscribers still open at the end), deliveries
//     (distinct), missing, duplicates, out_of_order, deliveries_per_s
//     (deliveries over first send to last receipt), request_failures;
//     latency_ms is trigger to receipt, trigger_ms the HTTP request time.
//     Latency starts when the request is built: with -rate above what the
//     server accepts, requests queue in the load generator and events_per_s
//     falls short of -rate. With -reconnect: gap (events sent on a
//     connection's channel while it was away: not expected) and
//     gap_received (of those, how many arrived anyway); subscribers counts
//     the connections subscribed at the end.
//   - idle: held_s, target RSS before and after, target_kib_per_conn.
//   - churn: handshakes_per_s (connections established / window),
//     completed_per_s (also subscribed and closed by us).
//   - all (-all): subscribed (connections on the all channel), deliveries
//     (each event counted once per connection), duplicates, out_of_order,
//     unexpected, and per event (events[n-1] is event n) its deliveries,
//     first and last receipt, and last_latency_ms (trigger to the last
//     delivery); all_latency_ms digests every delivery's latency.
//   - phase_latency_ms (-control): latency_ms by phase.
//   - hist: the histograms (nanoseconds, log-linear buckets, 128 per power
//     of two, so under 1% error) that `loadgen merge` combines.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/logging"
)

const usage = `Usage:
  loadgen idle   [flags]    N connections over C channels, held for -duration
  loadgen fanout [flags]    trigger events via the HTTP API, measure delivery
  loadgen churn  [flags]    connect, subscribe, disconnect at -rate per second
  loadgen merge  FILE...    merge summaries of several processes

Run "loadgen <mode> -h" for the flags. The summary is one JSON line on stdout.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// durationValue accepts a Go duration ("1m30s") or whole seconds ("90").
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		*v.d = time.Duration(n * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	mode := args[0]
	switch mode {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "merge":
		return merge(args[1:], stdout, stderr)
	case loadgen.ModeIdle, loadgen.ModeFanout, loadgen.ModeChurn:
	default:
		fmt.Fprintf(stderr, "loadgen: unknown mode %q\n\n%s", mode, usage)
		return 2
	}

	cfg := loadgen.Config{Mode: mode}
	fs := flag.NewFlagSet("loadgen "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "server base URL, http://host:port[/prefix] (https:// for TLS): the HTTP API, and the WebSockets ({prefix}/app/{key}) unless -ws-urls is set")
	fs.StringVar(&cfg.CAFile, "ca", "", "PEM file of CA certificates to trust for https:// URLs, besides the system's (e.g. a test CA from go run ./internal/tlscert/tlstest/gencert)")
	wsURLs := fs.String("ws-urls", "", "comma-separated base URLs of the servers the WebSockets go to, round-robin (e.g. several gateways); API requests still go to -url only")
	fs.BoolVar(&cfg.Reconnect, "reconnect", false, "idle, fanout: a subscribed connection the server closes or loses connects again, to the next -ws-urls URL, and subscribes again; reconnects and the events it was away for (gap) are counted apart")
	fs.StringVar(&cfg.AppID, "app-id", os.Getenv("REVERB_APP_ID"), "app id (default $REVERB_APP_ID)")
	fs.StringVar(&cfg.Key, "key", os.Getenv("REVERB_APP_KEY"), "app key (default $REVERB_APP_KEY)")
	fs.StringVar(&cfg.Secret, "secret", os.Getenv("REVERB_APP_SECRET"), "app secret (default $REVERB_APP_SECRET)")
	fs.StringVar(&cfg.Origin, "origin", "", "Origin header to send, if any")
	fs.StringVar(&cfg.Protocol, "protocol", loadgen.ProtocolPusher, "pusher, or centrifugo: its JSON protocol at {prefix}/connection/websocket, events via {prefix}/api/publish (/api/batch with -batch) with -secret as the API key")
	fs.IntVar(&cfg.Conns, "conns", 1000, "connections in all (of every shard); churn: cap on connections made (default rate × duration)")
	fs.IntVar(&cfg.Channels, "channels", 10, "channels; connection k subscribes to lg-<run>-<k mod channels>")
	cfg.Duration = 30 * time.Second
	fs.Var(durationValue{&cfg.Duration}, "duration", "idle: hold time; fanout: send time; churn: window (Go duration or seconds)")
	fs.Float64Var(&cfg.Ramp, "ramp", 2000, "connections opened per second while ramping up")
	fs.Float64Var(&cfg.Rate, "rate", 0, "fanout: events per second over all channels, round-robin (0 = unbounded); churn: connections per second")
	fs.IntVar(&cfg.Events, "events", 0, "fanout: stop after this many events (0 = only -duration)")
	fs.IntVar(&cfg.Batch, "batch", 1, "fanout: events per request; above 1 uses /batch_events (Pusher allows 10)")
	fs.IntVar(&cfg.Payload, "payload", 0, "fanout: bytes of padding added to each event's data (Pusher allows 10 KB of data)")
	fs.IntVar(&cfg.Inflight, "inflight", 64, "fanout: concurrent HTTP requests at most (one per channel at a time)")
	cfg.Drain = 5 * time.Second
	fs.Var(durationValue{&cfg.Drain}, "drain", "fanout: how long to wait after sending for the last deliveries")
	cfg.ConnectTimeout = 10 * time.Second
	fs.Var(durationValue{&cfg.ConnectTimeout}, "connect-timeout", "time from connect to subscribed before a connection counts as failed")
	fs.Var(durationValue{&cfg.ChurnHold}, "hold", "churn: how long each connection stays subscribed before closing")
	cfg.CloseGrace = 3 * time.Second
	fs.Var(durationValue{&cfg.CloseGrace}, "close-grace", "at the end, how long a connection waits for the server's answer to its close before it is let go (counted as close_timeout)")
	fs.IntVar(&cfg.MaxPending, "max-pending", 1000, "connections being set up at once, at most")
	fs.IntVar(&cfg.Pollers, "pollers", 2, "epoll loops (goroutines)")
	sources := fs.String("sources", "", "local source addresses: 127.0.0.2,127.0.0.3 or 127.0.0.2-127.0.0.40 (spread connections past the ephemeral-port limit)")
	fs.IntVar(&cfg.MaxConnsPerProcess, "max-conns-per-process", loadgen.DefaultMaxConnsPerProcess, "refuse to hold more connections than this in one process")
	fs.StringVar(&cfg.Run, "run", "", "run id, part of the channel names (default random; give shards the same)")
	shard := fs.String("shard", "", "i/n: this process's part of the work, as -shard-by says")
	fs.StringVar(&cfg.ShardBy, "shard-by", loadgen.ShardChannels, "channels: shard i/n owns channels c with c mod n = i, their connections and their events; "+
		"conns: shard i/n holds connections k with k mod n = i of every channel, and only shard 0 triggers (fanout to channels with more subscribers than one process holds)")
	fs.IntVar(&cfg.PID, "pid", 0, "idle: target process whose VmRSS to sample before and after")
	fs.BoolVar(&cfg.All, "all", false, "idle, fanout: every connection also subscribes to lg-<run>-all, which another process triggers (events numbered 1 to 64 in loadgen's format); each event is counted once per connection, with the time to its last delivery")
	fs.IntVar(&cfg.PresenceEvery, "presence-every", 0, "idle, fanout: every n-th channel of each shard is a presence channel (presence-lg-<run>-<c>), joined with an auth signed by -secret, each connection a user of its own")
	control := fs.Bool("control", false, "idle, fanout: read commands from stdin, one a line: send (start sending; until then the fan-out waits), phase NAME (latencies from now on are also reported under NAME), stop (end the hold or the sending; so does the end of stdin)")
	fs.Var(durationValue{&cfg.ProgressInterval}, "progress", "interval of the progress lines on stderr (default 2s)")
	jsonLogs := fs.Bool("json", false, "log to stderr as JSON lines (the summary on stdout is JSON either way)")
	level := fs.String("log-level", "info", "stderr log level: debug, info, warn, error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: loadgen %s [flags]\n\n", mode)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loadgen: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *control {
		cfg.Control = os.Stdin
	}
	if mode == loadgen.ModeChurn {
		set := false
		fs.Visit(func(f *flag.Flag) { set = set || f.Name == "conns" })
		if !set {
			cfg.Conns = 0
		}
	}
	for _, u := range strings.Split(*wsURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.WSURLs = append(cfg.WSURLs, u)
		}
	}
	var err error
	if cfg.Sources, err = loadgen.ParseSources(*sources); err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 2
	}
	if cfg.Shard, cfg.Shards, err = loadgen.ParseShard(*shard); err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 2
	}
	if cfg.Run == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Run = hex.EncodeToString(b[:])
	}
	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen: -log-level:", err)
		return 2
	}
	var log zerolog.Logger
	if *jsonLogs {
		log = zerolog.New(stderr)
	} else {
		log = zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05.000", NoColor: !logging.IsTerminal(stderr)})
	}
	log = log.Level(lvl).With().Timestamp().Str("mode", mode).Logger()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info().Str("url", cfg.URL).Str("run", cfg.Run).Str("shard", fmt.Sprintf("%d/%d", cfg.Shard, cfg.Shards)).
		Int("conns", cfg.Conns).Int("channels", cfg.Channels).Str("duration", cfg.Duration.String()).Float64("rate", cfg.Rate).Msg("starting")
	s, err := loadgen.Run(ctx, cfg, log)
	if s == nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	if !*jsonLogs {
		report(stderr, s)
	}
	if werr := writeSummary(stdout, s); werr != nil {
		fmt.Fprintln(stderr, "loadgen:", werr)
		return 1
	}
	if err != nil {
		log.Error().Err(err).Msg("run failed")
		return 1
	}
	return 0
}

func writeSummary(w io.Writer, s *loadgen.Summary) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func merge(files []string, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprintln(stderr, "Usage: loadgen merge FILE...  (each holding a summary line)")
		return 2
	}
	var all []*loadgen.Summary
	for _, f := range files {
		s, err := loadgen.ReadSummaryFile(f)
		if err != nil {
			fmt.Fprintln(stderr, "loadgen merge:", err)
			return 1
		}
		all = append(all, s)
	}
	s, err := loadgen.Merge(all)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen merge:", err)
		return 1
	}
	report(stderr, s)
	if err := writeSummary(stdout, s); err != nil {
		fmt.Fprintln(stderr, "loadgen merge:", err)
		return 1
	}
	return 0
}

// report writes a few readable lines to stderr.
func report(w io.Writer, s *loadgen.Summary) {
	var b strings.Builder
	c := s.Conns
	fmt.Fprintf(&b, "%s run %s, %d process(es), %.1f s\n", s.Mode, s.Run, s.Processes, s.ElapsedSec)
	fmt.Fprintf(&b, "  conns: %d planned, %d established, %d subscribed, %d failed, %d dropped, %d reconnects %v\n",
		c.Planned, c.Established, c.Subscribed, c.Failed, c.Dropped, c.Reconnects, c.Failures)
	p := s.ConnectMs
	fmt.Fprintf(&b, "  connect ms: p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f\n", p.P50, p.P90, p.P99, p.P999, p.Max)
	if i := s.Idle; i != nil {
		fmt.Fprintf(&b, "  idle: held %.1f s, pings answered %d", i.HeldSec, c.PingsAnswered)
		if i.TargetPID != 0 {
			fmt.Fprintf(&b, ", target RSS %d -> %d KiB (%.2f KiB/conn)", i.TargetRSSBeforeKiB, i.TargetRSSAfterKiB, i.KiBPerConn)
		}
		b.WriteString("\n")
	}
	if f := s.Fanout; f != nil {
		fmt.Fprintf(&b, "  fanout: %d events in %.1f s (%.0f/s), %d subscribers, %d/%d delivered (%.0f/s), missing %d, dup %d, out-of-order %d, request failures %v\n",
			f.EventsSent, f.SendSec, f.EventsPerSec, f.Subscribers, f.Deliveries, f.Expected, f.DeliveriesPerSec, f.Missing, f.Duplicates, f.OutOfOrder, f.RequestFailures)
		if f.Gap > 0 || f.GapReceived > 0 {
			fmt.Fprintf(&b, "  reconnect gap: %d events sent while connections were away, %d of them arrived anyway\n", f.Gap, f.GapReceived)
		}
		if l := s.LatencyMs; l != nil {
			fmt.Fprintf(&b, "  latency ms: p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f\n", l.P50, l.P90, l.P99, l.P999, l.Max)
		}
	}
	if a := s.All; a != nil {
		fmt.Fprintf(&b, "  all channel %s: %d subscribed, %d events, %d deliveries, dup %d, out-of-order %d, unexpected %d\n",
			a.Channel, a.Subscribed, len(a.Events), a.Deliveries, a.Duplicates, a.OutOfOrder, a.Unexpected)
		for _, e := range a.Events {
			fmt.Fprintf(&b, "    event %d: %d deliveries, last after %.1f ms\n", e.Seq, e.Deliveries, e.LastLatencyMs)
		}
	}
	for name, l := range s.PhaseLatencyMs {
		fmt.Fprintf(&b, "  latency ms in phase %s: p50 %.2f p99 %.2f max %.2f (%d)\n", name, l.P50, l.P99, l.Max, l.Count)
	}
	if ch := s.Churn; ch != nil {
		fmt.Fprintf(&b, "  churn: %.0f handshakes/s, %.0f completed/s over %.0f s\n", ch.HandshakesPerSec, ch.CompletedPerSec, ch.WindowSec)
	}
	for _, e := range s.Errors {
		fmt.Fprintf(&b, "  error: %s\n", e)
	}
	_, _ = io.WriteString(w, b.String())
}
