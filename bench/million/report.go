//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/machine"
	"github.com/resoundhq/resound/internal/plot"
)

// Result is the run's summary: summary.json, and docs/scaling/NAME.json.
type Result struct {
	Command  string       `json:"command"`
	Started  string       `json:"started"`
	Machine  machine.Info `json:"machine"`
	Layout   layout       `json:"layout"`
	Settings Settings     `json:"settings"`
	Sysctls  []Sysctl     `json:"sysctls"`
	Phases   []PhaseStats `json:"phases"`

	Connect   *ConnectResult   `json:"connect,omitempty"`
	Memory    *MemoryResult    `json:"memory,omitempty"`
	Fanout    *FanoutResult    `json:"fanout,omitempty"`
	Broadcast *BroadcastResult `json:"broadcast,omitempty"`
	Drain     *DrainResult     `json:"drain,omitempty"`
	// KV is the shared-state buckets' compare-and-set traffic by phase,
	// and JSAPI the JetStream API requests (key reads among them).
	KV    map[string]map[string]KVPhase `json:"kv,omitempty"`
	JSAPI map[string]JSAPICount         `json:"js_api,omitempty"`
	// ConnectSeries is the sockets subscribed, every second of the
	// connect phase: [seconds, sockets].
	ConnectSeries [][2]float64 `json:"connect_series"`
	// Failures are the load generators' connection failures over the
	// whole run, by kind: a drained gateway's clients are told 4200
	// (pusher_error_4200, server_close_4200) and reconnect.
	Failures map[string]int64 `json:"failures,omitempty"`
	// Presence is the shared state's presence members against the
	// connections, at the end of the hold and at the end of the run.
	Presence []PresenceCheck `json:"presence_checks,omitempty"`
	Problems []string        `json:"problems,omitempty"`

	samples []Sample
}

// Settings are the run's knobs besides the layout.
type Settings struct {
	FanoutRate       float64 `json:"fanout_rate"`
	Broadcasts       int     `json:"broadcasts"`
	HoldS            float64 `json:"hold_s"`
	SteadyS          float64 `json:"steady_s"`
	DrainWindowS     float64 `json:"drain_window_s"`
	PingIntervalS    float64 `json:"ping_interval_s"`
	Inflight         int     `json:"inflight"`
	ConnectRate      float64 `json:"connect_rate,omitempty"`
	CountConnections bool    `json:"count_connections"`
	// GoMaxProcs is each gateway's and load generator's GOMAXPROCS; 0:
	// Go's default.
	GoMaxProcs int `json:"gomaxprocs"`
}

// PhaseStats is a phase's time and CPU, and what limited it.
type PhaseStats struct {
	PhaseSpan
	Seconds float64 `json:"seconds"`
	// CPU is the CPU seconds each kind of process used in the phase.
	CPU map[string]float64 `json:"cpu_s"`
	// BusyPct is how busy the machine's cores were, all processes (the
	// other engineers' too) together: 100 is every core all the time.
	BusyPct float64 `json:"machine_busy_pct"`
	Limit   string  `json:"limit"`
}

// ConnectResult is the connect phase.
type ConnectResult struct {
	Seconds     float64              `json:"seconds"`
	Subscribed  int64                `json:"subscribed"`
	Failed      int64                `json:"failed"`
	MeanRate    float64              `json:"mean_per_s"`
	PeakRate    float64              `json:"peak_per_s"`
	ConnectMs   *loadgen.Percentiles `json:"connect_ms,omitempty"`
	SubscribeMs *loadgen.Percentiles `json:"subscribe_ms,omitempty"`
}

// MemoryResult is memory at the end of the hold, every socket connected
// and idle, against the baseline before the first connect. Bytes per
// socket are per connection: the kernel's figure holds both of its ends.
type MemoryResult struct {
	Sockets    int64             `json:"sockets"`
	Components []MemoryComponent `json:"components"`
	PerSocket  float64           `json:"total_per_socket_bytes"`
	Pings      int64             `json:"pusher_pings_answered"`
	TCPMemPeak int64             `json:"tcp_mem_peak_pages"`
	Note       string            `json:"note"`
	// GatewaysAfterConnect is the gateways' RSS per socket (above the
	// baseline) at the start of the hold, just after the last connect:
	// against the figure at its end, how much the idle sockets grew.
	GatewaysAfterConnect float64 `json:"gateways_per_socket_after_connect_bytes"`
	// Gateways is what the gateways' Go runtimes say of their memory at
	// the same moment, summed, and their RSS one by one.
	Gateways *GatewayMemory `json:"gateways,omitempty"`
}

// GatewayMemory is the gateways' Go memory, summed over them (bytes), at
// the end of the hold.
type GatewayMemory struct {
	HeapInuse    float64 `json:"heap_inuse"`
	HeapIdle     float64 `json:"heap_idle"`
	HeapReleased float64 `json:"heap_released"`
	StackInuse   float64 `json:"stack_inuse"`
	Sys          float64 `json:"sys"`
	Goroutines   float64 `json:"goroutines"`
	Connections  float64 `json:"connections"`
	// RSSMin and RSSMax are of one gateway, over the gateways.
	RSSMin int64 `json:"rss_min"`
	RSSMax int64 `json:"rss_max"`
}

// MemoryComponent is one part of the memory the sockets cost.
type MemoryComponent struct {
	Name      string  `json:"name"`
	Baseline  int64   `json:"baseline_bytes"`
	Held      int64   `json:"held_bytes"`
	PerSocket float64 `json:"per_socket_bytes"`
}

// FanoutResult is the steady fan-out on the small channels, from the
// steady phase to the end.
type FanoutResult struct {
	EventsSent int64 `json:"events_sent"`
	Expected   int64 `json:"expected"`
	Deliveries int64 `json:"deliveries"`
	Missing    int64 `json:"missing"`
	Duplicates int64 `json:"duplicates"`
	// DuplicatesAcrossReconnect: see loadgen.FanoutStats; allowed.
	DuplicatesAcrossReconnect int64                          `json:"duplicates_across_reconnect"`
	OutOfOrder                int64                          `json:"out_of_order"`
	Gap                       int64                          `json:"gap"`
	GapReceived               int64                          `json:"gap_received"`
	Failures                  map[string]int64               `json:"request_failures,omitempty"`
	LatencyMs                 *loadgen.Percentiles           `json:"latency_ms,omitempty"`
	ByPhase                   map[string]loadgen.Percentiles `json:"latency_ms_by_phase,omitempty"`
}

// BroadcastResult is the events to everybody.
type BroadcastResult struct {
	Subscribers int64                `json:"subscribers"`
	Events      []BroadcastEvent     `json:"events"`
	Duplicates  int64                `json:"duplicates"`
	OutOfOrder  int64                `json:"out_of_order"`
	Missing     int64                `json:"missing"`
	LatencyMs   *loadgen.Percentiles `json:"latency_ms,omitempty"`
}

// BroadcastEvent is one event to everybody.
type BroadcastEvent struct {
	Seq        int64   `json:"seq"`
	AfterDrain bool    `json:"after_drain,omitempty"`
	Deliveries int64   `json:"deliveries"`
	Missing    int64   `json:"missing"`
	LastMs     float64 `json:"last_delivery_ms"`
	PerSec     float64 `json:"deliveries_per_s"`
	Error      string  `json:"error,omitempty"`
}

// DrainResult is the drain of a tenth of the gateways.
type DrainResult struct {
	drainRecord
	Reconnects        int64            `json:"reconnects"`
	ReconnectFailures map[string]int64 `json:"reconnect_failures,omitempty"`
}

// KVPhase is a bucket's writes in one phase.
type KVPhase struct {
	Attempts  uint64 `json:"attempts"`
	Stored    uint64 `json:"stored"`
	Conflicts int64  `json:"conflicts"`
}

func (r *millionRun) result(ob *observed) *Result {
	r.mu.Lock()
	samples := append([]Sample(nil), r.samples...)
	spans := append([]PhaseSpan(nil), r.phases...)
	problems := append([]string(nil), r.problems...)
	r.mu.Unlock()
	// A periodic sample may be recorded just after a phase's boundary
	// sample, though taken before it.
	sort.SliceStable(samples, func(i, j int) bool { return samples[i].T < samples[j].T })
	res := &Result{
		Command: "go run ./bench/million " + strings.Join(os.Args[1:], " "),
		Started: r.start.UTC().Format(time.RFC3339), Machine: r.machine, Layout: r.l, Sysctls: r.sysctls,
		Settings: Settings{FanoutRate: r.o.fanoutRate, Broadcasts: r.o.broadcasts, HoldS: r.o.hold.Seconds(), SteadyS: r.o.steady.Seconds(),
			DrainWindowS: r.o.drainWindow.Seconds(), PingIntervalS: r.o.pingInterval.Seconds(), Inflight: r.o.inflight, ConnectRate: r.o.connectRate, CountConnections: r.o.countConnections,
			GoMaxProcs: r.o.gomaxprocs},
		samples: samples,
	}
	res.Machine.LoadEnd = machine.LoadAvg()
	for _, sp := range spans {
		res.Phases = append(res.Phases, phaseStats(sp, samples, r.machine.CPUs, r.l))
	}
	res.KV, res.JSAPI = kvByPhase(spans, samples)
	lg := ob.loadgen

	// Connect.
	if !ob.connectEnd.IsZero() {
		c := &ConnectResult{Seconds: round1(ob.connectEnd.Sub(r.start).Seconds()), Subscribed: ob.connected}
		conn := inSpan(samples, spans, phaseConnect)
		for _, s := range conn {
			res.ConnectSeries = append(res.ConnectSeries, [2]float64{round1(s.T), float64(s.Subscribed)})
		}
		c.PeakRate = peakRate(conn)
		if c.Seconds > 0 {
			c.MeanRate = round1(float64(c.Subscribed) / c.Seconds)
		}
		if lg != nil {
			c.Failed = lg.Conns.Failed
			res.Failures = lg.Conns.Failures
			c.ConnectMs, c.SubscribeMs = &lg.ConnectMs, &lg.SubscribeMs
		}
		res.Connect = c
	}

	// Memory at the end of the hold.
	if hold := inPhase(samples, phaseHold); len(hold) > 0 {
		res.Memory = memory(ob.baseline, hold[len(hold)-1], samples)
		if first := hold[0]; first.Subscribed > 0 {
			res.Memory.GatewaysAfterConnect = round1(float64(first.Procs[kindGateway].RSS-ob.baseline.Procs[kindGateway].RSS) / float64(first.Subscribed))
		}
		res.Memory.Gateways = ob.gatewayMem
		if lg != nil {
			res.Memory.Pings = lg.Conns.PingsAnswered
		}
	}

	if lg != nil && lg.Fanout != nil {
		f := lg.Fanout
		res.Fanout = &FanoutResult{EventsSent: f.EventsSent, Expected: f.Expected, Deliveries: f.Deliveries, Missing: f.Missing,
			Duplicates: f.Duplicates, DuplicatesAcrossReconnect: f.DuplicatesAcrossReconnect, OutOfOrder: f.OutOfOrder, Gap: f.Gap, GapReceived: f.GapReceived, Failures: f.RequestFailures,
			LatencyMs: lg.LatencyMs, ByPhase: lg.PhaseLatencyMs}
		if f.Missing > 0 || f.Duplicates > 0 {
			problems = append(problems, fmt.Sprintf("fan-out: %d missing, %d duplicates", f.Missing, f.Duplicates))
		}
	}
	if len(ob.broadcasts) > 0 {
		res.Broadcast = broadcastResult(ob.broadcasts, lg, len(r.l.Drained) > 0)
		b := res.Broadcast
		if b.Missing > 0 || b.Duplicates > 0 {
			problems = append(problems, fmt.Sprintf("broadcasts: %d missing, %d duplicates", b.Missing, b.Duplicates))
		}
	}
	if len(ob.drain.Gateways) > 0 {
		d := &DrainResult{drainRecord: ob.drain}
		d.BackS, d.ExitS = round1(d.BackS), round1(d.ExitS)
		if lg != nil {
			d.Reconnects = lg.Conns.Reconnects
			for k, v := range lg.Conns.Failures {
				if strings.HasPrefix(k, "reconnect_") {
					if d.ReconnectFailures == nil {
						d.ReconnectFailures = map[string]int64{}
					}
					d.ReconnectFailures[k] = v
				}
			}
		}
		res.Drain = d
	}
	res.Presence = ob.presence
	res.Problems = problems
	return res
}

// inSpan are the samples from the start of a phase to its end, both
// boundaries included.
func inSpan(samples []Sample, spans []PhaseSpan, phase string) []Sample {
	var out []Sample
	for _, sp := range spans {
		if sp.Name != phase {
			continue
		}
		for _, s := range samples {
			if s.T >= sp.Start && s.T <= sp.End {
				out = append(out, s)
			}
		}
	}
	return out
}

// inPhase are the samples of one phase.
func inPhase(samples []Sample, phase string) []Sample {
	var out []Sample
	for _, s := range samples {
		if s.Phase == phase {
			out = append(out, s)
		}
	}
	return out
}

// around returns the first and the last sample of a span: those taken
// at its boundaries (setPhase), or the nearest.
func around(sp PhaseSpan, samples []Sample) (from, to Sample, ok bool) {
	var a, b *Sample
	for i := range samples {
		s := &samples[i]
		if s.T <= sp.Start {
			a = s
		}
		if s.T <= sp.End {
			b = s
		}
	}
	if a == nil || b == nil || b.T <= a.T {
		return Sample{}, Sample{}, false
	}
	return *a, *b, true
}

func phaseStats(sp PhaseSpan, samples []Sample, cpus int, l layout) PhaseStats {
	ps := PhaseStats{PhaseSpan: sp, Seconds: round1(sp.End - sp.Start), CPU: map[string]float64{}}
	from, to, ok := around(sp, samples)
	if !ok {
		ps.Limit = "too short to sample"
		return ps
	}
	dt := to.T - from.T
	var own float64
	for _, k := range kinds {
		v := to.Procs[k].CPU - from.Procs[k].CPU
		ps.CPU[k] = round1(v)
		own += v
	}
	busy := to.MachineBusy - from.MachineBusy
	ps.BusyPct = round1(100 * busy / (dt * float64(max(1, cpus))))
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", kindWords[k], 100*ps.CPU[k]/dt))
	}
	parts = append(parts, fmt.Sprintf("other processes %.0f%%", 100*max(0, busy-own)/dt))
	detail := strings.Join(parts, ", ") + " of one core"
	if ps.BusyPct >= 90 {
		ps.Limit = fmt.Sprintf("CPU: the %d cores were %.0f%% busy (%s)", cpus, ps.BusyPct, detail)
	} else {
		ps.Limit = fmt.Sprintf("not CPU: the %d cores were %.0f%% busy (%s)", cpus, ps.BusyPct, detail)
		if sp.Name == phaseConnect {
			ps.Limit += fmt.Sprintf("; handshakes in flight were bounded at %d per load generator", l.InflightPer)
		}
	}
	return ps
}

var kindWords = map[string]string{kindGateway: "gateways", kindLoadgen: "load generators", kindNATS: "nats-server", kindWorker: "workers", kindHarness: "this harness"}

// rates are the sockets subscribed per second, each over a second or
// more: the load generators report once a second, so a shorter window
// would catch two reports in one.
func rates(samples []Sample) []plot.Point {
	var out []plot.Point
	j := 0
	for i := 1; i < len(samples); i++ {
		for j+1 < i && samples[i].T-samples[j+1].T >= 0.95 {
			j++
		}
		if dt := samples[i].T - samples[j].T; dt >= 0.95 {
			out = append(out, plot.Point{X: samples[i].T, Y: float64(samples[i].Subscribed-samples[j].Subscribed) / dt})
		}
	}
	return out
}

// peakRate is the most sockets subscribed per second.
func peakRate(samples []Sample) float64 {
	var peak float64
	for _, p := range rates(samples) {
		peak = max(peak, p.Y)
	}
	return round1(peak)
}

func memory(base, held Sample, samples []Sample) *MemoryResult {
	m := &MemoryResult{Sockets: held.Subscribed,
		Note: "at the end of the hold, against the baseline before the first connect; the kernel's figures are machine-wide (other processes' too) and hold both ends of each connection"}
	if m.Sockets <= 0 {
		return m
	}
	n := float64(m.Sockets)
	add := func(name string, b, h int64) {
		c := MemoryComponent{Name: name, Baseline: b, Held: h, PerSocket: round1(float64(h-b) / n)}
		m.Components = append(m.Components, c)
	}
	add("gateways (RSS)", base.Procs[kindGateway].RSS, held.Procs[kindGateway].RSS)
	add("load generators (RSS)", 0, held.Procs[kindLoadgen].RSS)
	add("nats-server (RSS)", base.Procs[kindNATS].RSS, held.Procs[kindNATS].RSS)
	add("workers (RSS)", base.Procs[kindWorker].RSS, held.Procs[kindWorker].RSS)
	add("kernel slab", base.Kernel.Slab, held.Kernel.Slab)
	add("kernel slab, unreclaimable", base.Kernel.SUnreclaim, held.Kernel.SUnreclaim)
	add("kernel TCP buffers (sockstat mem)", base.Kernel.TCPMemPage*int64(os.Getpagesize()), held.Kernel.TCPMemPage*int64(os.Getpagesize()))
	for _, c := range m.Components {
		// The unreclaimable slab is part of the slab.
		if c.Name != "kernel slab, unreclaimable" {
			m.PerSocket += c.PerSocket
		}
	}
	m.PerSocket = round1(m.PerSocket)
	for _, s := range samples {
		m.TCPMemPeak = max(m.TCPMemPeak, s.Kernel.TCPMemPage)
	}
	return m
}

func broadcastResult(sends []sent, lg *loadgen.Summary, drained bool) *BroadcastResult {
	b := &BroadcastResult{}
	var events []loadgen.AllEvent
	if lg != nil && lg.All != nil {
		a := lg.All
		b.Subscribers, b.Duplicates, b.OutOfOrder, b.LatencyMs = a.Subscribed, a.Duplicates, a.OutOfOrder, lg.AllLatencyMs
		events = a.Events
	}
	for i, s := range sends {
		e := BroadcastEvent{Seq: s.seq, AfterDrain: drained && i == len(sends)-1}
		if s.err != nil {
			e.Error = s.err.Error()
		}
		if int(s.seq) <= len(events) {
			ev := events[s.seq-1]
			e.Deliveries, e.LastMs = ev.Deliveries, ev.LastLatencyMs
			if d := float64(ev.LastRecvMs - s.at.UnixMilli()); d > 0 {
				e.PerSec = round1(float64(ev.Deliveries) / d * 1000)
			}
		}
		e.Missing = max(0, b.Subscribers-e.Deliveries)
		b.Missing += e.Missing
		b.Events = append(b.Events, e)
	}
	return b
}

// kvByPhase is each bucket's writes, and the JetStream API requests, in
// each phase.
func kvByPhase(spans []PhaseSpan, samples []Sample) (map[string]map[string]KVPhase, map[string]JSAPICount) {
	out, api := map[string]map[string]KVPhase{}, map[string]JSAPICount{}
	for _, sp := range spans {
		from, to, ok := around(sp, samples)
		if !ok || from.KV == nil || to.KV == nil {
			continue
		}
		api[sp.Name] = JSAPICount{Requests: to.JSAPI.Requests - from.JSAPI.Requests, KVReads: to.JSAPI.KVReads - from.JSAPI.KVReads}
		m := map[string]KVPhase{}
		for b, t := range to.KV {
			f := from.KV[b]
			k := KVPhase{Attempts: t.Attempts - f.Attempts, Stored: t.Stored - f.Stored}
			k.Conflicts = int64(k.Attempts) - int64(k.Stored)
			if k.Attempts > 0 {
				m[b] = k
			}
		}
		out[sp.Name] = m
	}
	return out, api
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// write puts the result in the results directory and, with -docs, in
// docs/.
func (r *millionRun) write(res *Result) error {
	if err := writeJSON(filepath.Join(r.dir, "summary.json"), res); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.dir, "report.md"), []byte(res.markdown()), 0o644); err != nil {
		return err
	}
	charts := res.charts()
	for name, svg := range charts {
		if err := os.WriteFile(filepath.Join(r.dir, name+".svg"), svg, 0o644); err != nil {
			return err
		}
	}
	r.logf("results in %s", r.dir)
	if r.o.docs == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(r.root, "docs", "scaling"), 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(r.root, "docs", "scaling", r.o.docs+".json"), res); err != nil {
		return err
	}
	for name, svg := range charts {
		if err := os.WriteFile(filepath.Join(r.root, "docs", "img", r.o.docs+"-"+name+".svg"), svg, 0o644); err != nil {
			return err
		}
	}
	r.logf("wrote docs/scaling/%s.json and docs/img/%s-*.svg", r.o.docs, r.o.docs)
	return nil
}

// charts are the plots, by name.
func (res *Result) charts() map[string][]byte {
	out := map[string][]byte{}
	conn := inSpan(res.samples, res.spans(), phaseConnect)
	rate := rates(conn)
	out["connect"] = plot.Chart{Title: "Connect rate", XLabel: "seconds since the load generators started", YLabel: "sockets subscribed per second",
		XFrom0: true, YFrom0: true, Note: fmt.Sprintf("%d sockets, %d gateways, %d load generators; sampled every second", res.Layout.Sockets, res.Layout.Gateways, res.Layout.Loadgens),
		Series: []plot.Series{{Name: "subscribed/s", Color: "#1f77b4", Points: rate}}}.SVG()

	var base Sample
	if len(res.samples) > 0 {
		base = res.samples[0]
	}
	mem := []struct {
		name, color string
		v           func(s Sample) int64
	}{
		{"gateways", "#1f77b4", func(s Sample) int64 { return s.Procs[kindGateway].RSS - base.Procs[kindGateway].RSS }},
		{"load generators", "#ff7f0e", func(s Sample) int64 { return s.Procs[kindLoadgen].RSS }},
		{"nats-server", "#2ca02c", func(s Sample) int64 { return s.Procs[kindNATS].RSS - base.Procs[kindNATS].RSS }},
		{"kernel slab", "#d62728", func(s Sample) int64 { return s.Kernel.Slab - base.Kernel.Slab }},
	}
	var series []plot.Series
	for _, m := range mem {
		var pts []plot.Point
		for _, s := range append(conn, inSpan(res.samples, res.spans(), phaseHold)...) {
			pts = append(pts, plot.Point{X: float64(s.Subscribed) / 1000, Y: mib(m.v(s))})
		}
		series = append(series, plot.Series{Name: m.name, Color: m.color, Points: pts})
	}
	out["memory"] = plot.Chart{Title: "Memory by component as sockets connect", XLabel: "sockets subscribed (thousands)",
		YLabel: "MiB above the baseline", XFrom0: true, YFrom0: true,
		Note: "connect and hold phases; the slope is the cost per socket (the kernel's for both ends)", Series: series}.SVG()

	var cpu []plot.Series
	colors := map[string]string{kindGateway: "#1f77b4", kindLoadgen: "#ff7f0e", kindNATS: "#2ca02c", kindWorker: "#9467bd", kindHarness: "#7f7f7f"}
	for _, k := range kinds {
		var pts []plot.Point
		for i := 1; i < len(res.samples); i++ {
			a, b := res.samples[i-1], res.samples[i]
			if dt := b.T - a.T; dt > 0 && a.Phase != phaseBaseline {
				pts = append(pts, plot.Point{X: b.T, Y: 100 * (b.Procs[k].CPU - a.Procs[k].CPU) / dt})
			}
		}
		cpu = append(cpu, plot.Series{Name: kindWords[k], Color: colors[k], Points: pts})
	}
	var marks []plot.Mark
	for _, p := range res.Phases {
		marks = append(marks, plot.Mark{X: p.Start, Label: p.Name})
	}
	out["cpu"] = plot.Chart{Title: "CPU by kind of process", XLabel: "seconds since the load generators started", YLabel: "% of one core",
		XFrom0: true, YFrom0: true, Series: cpu, Marks: marks,
		Note: fmt.Sprintf("%d cores in all; every second", res.Machine.CPUs)}.SVG()
	return out
}

func (res *Result) spans() []PhaseSpan {
	out := make([]PhaseSpan, len(res.Phases))
	for i, p := range res.Phases {
		out[i] = p.PhaseSpan
	}
	return out
}

// markdown is the readable summary: report.md, and the console.
func (res *Result) markdown() string {
	var b strings.Builder
	l := res.Layout
	fmt.Fprintf(&b, "# Million-socket run: %d sockets\n\n", l.Sockets)
	fmt.Fprintf(&b, "`%s`, started %s on %d cores (%s), %s GiB, load %s → %s.\n\n", res.Command, res.Started, res.Machine.CPUs,
		res.Machine.CPUModel, res.Machine.MemTotalGiB, res.Machine.LoadStart, res.Machine.LoadEnd)
	fmt.Fprintf(&b, "%d gateways × %d sockets, %d load generators, %d workers, one nats-server; %d small channels of %d (every %d-th presence) and one channel everybody is on.\n\n",
		l.Gateways, l.PerGateway, l.Loadgens, l.Workers, l.Channels, l.ChannelSize, l.PresenceEvery)
	b.WriteString("| phase | seconds | machine busy | limit |\n|---|---|---|---|\n")
	for _, p := range res.Phases {
		fmt.Fprintf(&b, "| %s | %.1f | %.0f%% | %s |\n", p.Name, p.Seconds, p.BusyPct, p.Limit)
	}
	if c := res.Connect; c != nil {
		fmt.Fprintf(&b, "\n**Connect:** %d subscribed, %d failed, in %.1f s: %.0f sockets/s on average, %.0f at the peak.", c.Subscribed, c.Failed, c.Seconds, c.MeanRate, c.PeakRate)
		if c.ConnectMs != nil {
			fmt.Fprintf(&b, " Connect p50 %.0f ms, p99 %.0f ms; subscribe p50 %.0f ms, p99 %.0f ms.", c.ConnectMs.P50, c.ConnectMs.P99, c.SubscribeMs.P50, c.SubscribeMs.P99)
		}
		b.WriteString("\n")
	}
	if m := res.Memory; m != nil {
		fmt.Fprintf(&b, "\n**Memory per socket** at the end of the hold (%d sockets, %d pings answered over the run):\n\n| component | baseline MiB | held MiB | bytes per socket |\n|---|---|---|---|\n", m.Sockets, m.Pings)
		for _, c := range m.Components {
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f |\n", c.Name, mib(c.Baseline), mib(c.Held), c.PerSocket)
		}
		fmt.Fprintf(&b, "| total (without the unreclaimable slab, part of the slab) | | | %.0f |\n\nPeak TCP buffer memory: %d pages.\n", m.PerSocket, m.TCPMemPeak)
		fmt.Fprintf(&b, "Gateways just after the last connect: %.0f bytes per socket.\n", m.GatewaysAfterConnect)
		if g := m.Gateways; g != nil {
			fmt.Fprintf(&b, "Gateways' Go runtime, summed: heap in use %.0f MiB, heap idle %.0f MiB (%.0f MiB of it released), stacks %.0f MiB, %0.f goroutines, %0.f connections; RSS %.1f–%.1f MiB a gateway.\n",
				g.HeapInuse/(1<<20), g.HeapIdle/(1<<20), g.HeapReleased/(1<<20), g.StackInuse/(1<<20), g.Goroutines, g.Connections, mib(g.RSSMin), mib(g.RSSMax))
		}
	}
	for _, p := range res.Phases {
		if p.Name == phaseHold {
			fmt.Fprintf(&b, "\n**CPU over the hold** (%.0f s): gateways %.1f s, load generators %.1f s, nats-server %.1f s, workers %.1f s.\n",
				p.Seconds, p.CPU[kindGateway], p.CPU[kindLoadgen], p.CPU[kindNATS], p.CPU[kindWorker])
		}
	}
	if f := res.Fanout; f != nil {
		fmt.Fprintf(&b, "\n**Steady fan-out:** %d events, %d of %d delivered, %d missing, %d duplicates, %d out of order (gap %d, of which %d arrived; %d events a reconnected socket had had before it reconnected came again on its new subscription, sent before that subscription was made, which Pusher allows).",
			f.EventsSent, f.Deliveries, f.Expected, f.Missing, f.Duplicates, f.OutOfOrder, f.Gap, f.GapReceived, f.DuplicatesAcrossReconnect)
		if f.LatencyMs != nil {
			fmt.Fprintf(&b, " Latency p50 %.1f ms, p99 %.1f ms, max %.0f ms.", f.LatencyMs.P50, f.LatencyMs.P99, f.LatencyMs.Max)
		}
		b.WriteString("\n")
		names := make([]string, 0, len(f.ByPhase))
		for n := range f.ByPhase {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			p := f.ByPhase[n]
			fmt.Fprintf(&b, "- during %s: p50 %.1f ms, p99 %.1f ms, max %.0f ms (%d deliveries)\n", n, p.P50, p.P99, p.Max, p.Count)
		}
	}
	if br := res.Broadcast; br != nil {
		fmt.Fprintf(&b, "\n**Broadcasts to everybody** (%d subscribers): %d missing, %d duplicates, %d out of order.\n\n| event | deliveries | missing | last delivery ms | deliveries/s |\n|---|---|---|---|---|\n",
			br.Subscribers, br.Missing, br.Duplicates, br.OutOfOrder)
		for _, e := range br.Events {
			label := fmt.Sprint(e.Seq)
			if e.AfterDrain {
				label += " (after the drain)"
			}
			fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %.0f |\n", label, e.Deliveries, e.Missing, e.LastMs, e.PerSec)
		}
	}
	if d := res.Drain; d != nil {
		fmt.Fprintf(&b, "\n**Drain** of gateways %v: %d clients moved, all back within %.1f s, drained gateways gone after %.1f s; %d reconnections, failed attempts %v.\n",
			d.Gateways, d.Moved, d.BackS, d.ExitS, d.Reconnects, d.ReconnectFailures)
	}
	for _, p := range res.Presence {
		fmt.Fprintf(&b, "\n**Presence members** at the %s (last of %d reads over %.0f s): %d channels list %d members for %d subscribers; %d channels wrong %v %s\n",
			p.When, p.Reads, p.SettledS, p.Channels, p.Members, p.Expected, p.Wrong, p.Examples, p.Error)
	}
	if len(res.KV) > 0 {
		b.WriteString("\n**Shared-state writes** (attempts seen on the bucket subjects, stored, and the difference: compare-and-sets that lost):\n\n| phase | bucket | attempts | stored | conflicts |\n|---|---|---|---|---|\n")
		for _, p := range res.Phases {
			m := res.KV[p.Name]
			names := make([]string, 0, len(m))
			for n := range m {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				k := m[n]
				fmt.Fprintf(&b, "| %s | %s | %d | %d | %d |\n", p.Name, n, k.Attempts, k.Stored, k.Conflicts)
			}
		}
	}
	if len(res.JSAPI) > 0 {
		b.WriteString("\n**JetStream API requests** by phase (of them, reads of a bucket key):")
		for _, p := range res.Phases {
			a := res.JSAPI[p.Name]
			fmt.Fprintf(&b, " %s %d (%d);", p.Name, a.Requests, a.KVReads)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n**Kernel settings:**")
	for _, s := range res.Sysctls {
		fmt.Fprintf(&b, " %s = %s", s.Name, s.Value)
		if s.Set != "" {
			fmt.Fprintf(&b, " (set to %s for the run)", s.Set)
		}
		b.WriteString(";")
	}
	b.WriteString("\n")
	for _, p := range res.Problems {
		fmt.Fprintf(&b, "\n- PROBLEM: %s", p)
	}
	b.WriteString("\n")
	return b.String()
}
