//go:build linux

package main

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Kind says how a workload's summaries are read and shown.
type Kind string

// Workload kinds. Fanout and latency both run `loadgen fanout`; fanout is
// unbounded (throughput), latency paced (trigger-to-receipt times).
const (
	KindIdle    Kind = "idle"
	KindFanout  Kind = "fanout"
	KindLatency Kind = "latency"
	KindChurn   Kind = "churn"
	// KindStorm is idle memory by connect pattern: the same connections
	// opened at a steady pace or all at once (a connect storm, as a
	// drained or restarted gateway's clients make). It runs `loadgen idle`
	// and has a section of its own, apart from the idle sweep over sizes.
	KindStorm Kind = "storm"
)

// Workload is one loadgen invocation. Durations are kept as the strings
// given to loadgen, so the command shown is the command run.
type Workload struct {
	ID       string  `json:"id"`
	Kind     Kind    `json:"kind"`
	Conns    int     `json:"conns"`
	Channels int     `json:"channels"`
	Rate     float64 `json:"rate"`
	Duration string  `json:"duration"`
	Drain    string  `json:"drain,omitempty"`
	Sources  string  `json:"sources,omitempty"`
	// MaxPending and Ramp are loadgen's -max-pending (handshakes in
	// flight) and -ramp (connections opened per second); 0 leaves
	// loadgen's default (1,000 and 2,000/s) and the flag out.
	MaxPending int     `json:"max_pending,omitempty"`
	Ramp       float64 `json:"ramp,omitempty"`
}

// loadgen's defaults for -max-pending and -ramp, to describe a workload
// that leaves them out.
const (
	loadgenMaxPending = 1000
	loadgenRamp       = 2000
)

// idle reports whether the workload runs `loadgen idle`.
func (w Workload) idle() bool { return w.Kind == KindIdle || w.Kind == KindStorm }

// stormRamp is the -ramp from which connections are opened as fast as
// the handshakes in flight allow: a storm, not a pace.
const stormRamp = 100000

// Pattern describes how the connections are opened, in words.
func (w Workload) Pattern() string {
	pending, ramp := cmp.Or(w.MaxPending, loadgenMaxPending), cmp.Or(w.Ramp, loadgenRamp)
	if ramp >= stormRamp {
		return fmt.Sprintf("storm: unpaced, %s handshakes in flight", thousands(float64(pending)))
	}
	return fmt.Sprintf("steady: %s/s, at most %s in flight", thousands(ramp), thousands(float64(pending)))
}

// Mode is the loadgen mode the workload runs.
func (w Workload) Mode() string {
	switch {
	case w.idle():
		return "idle"
	case w.Kind == KindChurn:
		return "churn"
	default:
		return "fanout"
	}
}

// Args are loadgen's arguments. protocol is left out when it is pusher,
// loadgen's default, so a loadgen without the flag still runs pusher
// targets.
func (w Workload) Args(url string, pid int, protocol string) []string {
	a := []string{w.Mode()}
	if protocol != "" && protocol != "pusher" {
		a = append(a, "-protocol", protocol)
	}
	a = append(a, "-url", url)
	if w.Kind != KindChurn {
		a = append(a, "-conns", strconv.Itoa(w.Conns))
	}
	a = append(a, "-channels", strconv.Itoa(w.Channels))
	if !w.idle() {
		a = append(a, "-rate", strconv.FormatFloat(w.Rate, 'f', -1, 64))
	}
	a = append(a, "-duration", w.Duration)
	if w.Drain != "" {
		a = append(a, "-drain", w.Drain)
	}
	if w.MaxPending > 0 {
		a = append(a, "-max-pending", strconv.Itoa(w.MaxPending))
	}
	if w.Ramp > 0 {
		a = append(a, "-ramp", strconv.FormatFloat(w.Ramp, 'f', -1, 64))
	}
	if w.idle() {
		a = append(a, "-pid", strconv.Itoa(pid))
	}
	if w.Sources != "" {
		a = append(a, "-sources", w.Sources)
	}
	return a
}

// Command is the loadgen command line as the report shows it: the URL and
// the server's pid change from run to run, so they stay variables.
func (w Workload) Command() string {
	a := w.Args("$URL", 0, "")
	for i := range a {
		if a[i] == "-pid" {
			a[i+1] = "$SERVER_PID"
		}
	}
	return "loadgen " + strings.Join(a, " ")
}

// Title describes the workload in words.
func (w Workload) Title() string {
	switch w.Kind {
	case KindIdle:
		return fmt.Sprintf("Idle: %s subscribed connections over %d channels", thousands(float64(w.Conns)), w.Channels)
	case KindStorm:
		return fmt.Sprintf("Idle: %s subscribed connections over %d channels, opened %s", thousands(float64(w.Conns)), w.Channels, w.Pattern())
	case KindFanout:
		return fmt.Sprintf("Unbounded fan-out: %s channel × %s subscribers", thousands(float64(w.Channels)), thousands(float64(w.Conns/w.Channels)))
	case KindLatency:
		return fmt.Sprintf("Latency at %s events/s over %s × %s subscribers", thousands(w.Rate), plural(w.Channels, "channel"), thousands(float64(w.Conns/w.Channels)))
	case KindChurn:
		return fmt.Sprintf("Handshakes at %s/s offered (connect, subscribe, close)", thousands(w.Rate))
	}
	return w.ID
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return thousands(float64(n)) + " " + word + "s"
}

// Workloads returns issue 4's workloads and issue 13's connect storm, or
// smaller ones that run in about a minute for a smoke test.
//
// The storm pair holds the same connections after two connect patterns:
// steady (loadgen's default pace, 64 handshakes in flight) and a storm (no
// pace, 1,000 in flight, as a drained or restarted gateway's clients come
// back). Issue 13 asks for at most 1 KiB of RSS per idle socket after
// either, read at the end of the hold with no collection forced from
// outside.
func Workloads(quick bool) []Workload {
	if quick {
		return []Workload{
			{ID: "idle-1k", Kind: KindIdle, Conns: 1000, Channels: 100, Duration: "3s", Sources: "127.0.0.2-127.0.0.9"},
			{ID: "idle-2k", Kind: KindIdle, Conns: 2000, Channels: 100, Duration: "3s", Sources: "127.0.0.2-127.0.0.9"},
			{ID: "idle-4k", Kind: KindIdle, Conns: 4000, Channels: 100, Duration: "3s", Sources: "127.0.0.2-127.0.0.9"},
			{ID: "fanout", Kind: KindFanout, Conns: 200, Channels: 1, Rate: 0, Duration: "3s", Drain: "10s"},
			{ID: "latency-1ch", Kind: KindLatency, Conns: 200, Channels: 1, Rate: 20, Duration: "3s"},
			{ID: "latency-many", Kind: KindLatency, Conns: 1000, Channels: 100, Rate: 200, Duration: "3s", Sources: "127.0.0.2-127.0.0.9"},
			{ID: "churn", Kind: KindChurn, Channels: 10, Rate: 1000, Duration: "3s", Sources: "127.0.0.2-127.0.0.9"},
			{ID: "steady-2k", Kind: KindStorm, Conns: 2000, Channels: 100, Duration: "3s", Sources: "127.0.0.2-127.0.0.9", MaxPending: 64},
			{ID: "storm-2k", Kind: KindStorm, Conns: 2000, Channels: 100, Duration: "3s", Sources: "127.0.0.2-127.0.0.9", MaxPending: 1000, Ramp: 1000000},
		}
	}
	return []Workload{
		{ID: "idle-5k", Kind: KindIdle, Conns: 5000, Channels: 100, Duration: "15s", Sources: "127.0.0.2-127.0.0.9"},
		{ID: "idle-10k", Kind: KindIdle, Conns: 10000, Channels: 100, Duration: "15s", Sources: "127.0.0.2-127.0.0.9"},
		{ID: "idle-19k", Kind: KindIdle, Conns: 19000, Channels: 100, Duration: "15s", Sources: "127.0.0.2-127.0.0.9"},
		{ID: "fanout", Kind: KindFanout, Conns: 1000, Channels: 1, Rate: 0, Duration: "10s", Drain: "60s"},
		{ID: "latency-1ch", Kind: KindLatency, Conns: 1000, Channels: 1, Rate: 20, Duration: "10s"},
		{ID: "latency-many", Kind: KindLatency, Conns: 10000, Channels: 1000, Rate: 1000, Duration: "10s", Sources: "127.0.0.2-127.0.0.9"},
		{ID: "churn", Kind: KindChurn, Channels: 100, Rate: 8000, Duration: "10s", Sources: "127.0.0.2-127.0.0.20"},
		{ID: "steady-15k", Kind: KindStorm, Conns: 15000, Channels: 100, Duration: "15s", Sources: "127.0.0.2-127.0.0.9", MaxPending: 64},
		{ID: "storm-15k", Kind: KindStorm, Conns: 15000, Channels: 100, Duration: "15s", Sources: "127.0.0.2-127.0.0.9", MaxPending: 1000, Ramp: 1000000},
	}
}

// Target is a server under test, started by bench/targets/<Name>.sh.
type Target struct {
	Name     string `json:"name"`
	Title    string `json:"title"`
	About    string `json:"about"`
	Protocol string `json:"protocol"` // loadgen -protocol
	// ReadyPath, when set, must answer 200 before the server counts as
	// ready; otherwise an accepted TCP connection is enough.
	ReadyPath string `json:"ready_path,omitempty"`
	Color     string `json:"color"`
}

// Targets are the servers compared, Resound first: ratios are against it.
func Targets() []Target {
	return []Target{
		{Name: "resound", Title: "Resound", About: "this repository, all-in-one (embedded NATS JetStream, in-process workers)", Protocol: "pusher", ReadyPath: "/up", Color: "#1f77b4"},
		{Name: "baseline", Title: "Baseline", About: "goroutine-per-connection Pusher server, the design Resound's gateway avoids", Protocol: "pusher", Color: "#ff7f0e"},
		{Name: "soketi", Title: "soketi 1.6.1", About: "Node.js and uWebSockets.js, Pusher protocol", Protocol: "pusher", Color: "#2ca02c"},
		{Name: "centrifugo", Title: "Centrifugo 6.9.1", About: "Go, its own protocol (loadgen -protocol centrifugo)", Protocol: "centrifugo", Color: "#9467bd"},
	}
}
