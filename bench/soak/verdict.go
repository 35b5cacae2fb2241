package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/machine"
	"github.com/resoundhq/resound/internal/queue"
)

// The pass criteria (issue 9, item 10): RSS growth under 5% from minute
// 10 to the end, no growth in goroutines or descriptors, nothing missing.
const (
	// maxRSSGrowth is the RSS growth allowed from minute 10 to the end.
	maxRSSGrowth = 0.05
	// loadSlack is how far a gateway's goroutines (or descriptors) at the
	// end of the load may lie above their level at minute 10, each the
	// median of its window: max(25, 5%). Attacks move the counts both ways
	// for a few seconds (slowloris and idle API connections hold a hundred
	// or two; slowloris also has the churn refused meanwhile), which the
	// median of a window leaves out; what remains is the load's own
	// jitter: presence members connected or between two sessions (about
	// one in twenty at any time), churned connections in their one-second
	// hold (paced: about the rate, give or take the few being set up), API
	// keep-alive connections coming and going. A leak of one per churned
	// connection (360,000 an hour per gateway at the default rate), per
	// attack socket (hundreds per cycle) or per presence session (about
	// 15,000 an hour) passes it within minutes.
	loadSlackAbs = 25
	loadSlackRel = 0.05
	// settleGoroutines and settleFDs are how far above their level before
	// the load a gateway's goroutines and descriptors may stay once every
	// client has gone: what the Go runtime and the NATS client start on
	// their own (a timer, a GC worker); a connection left behind costs a
	// descriptor, so the descriptors must come back exactly but for the
	// listener's accept backlog.
	settleGoroutines = 10
	settleFDs        = 2
	// seriesSlack is how many /metrics lines may appear after the first
	// full cycle of attacks: the labels are bounded sets (limits, close
	// code classes, panic sites), and a label value first met late (a rare
	// close class) adds one line.
	seriesSlack = 10
)

// windows says where the verdict looks. The judged part starts at minute
// 10, or duration/6 in a run shorter than an hour, so that a short run
// keeps its proportions; but not before the first full cycle of attacks
// has ended (cycleEnd, seconds; NaN if unknown), which in a short run
// comes later: until every attack has run once, the gateway's heap has
// not yet grown to the working set of the whole load, which is the
// warm-up minute 10 is there to leave out. The levels compared are taken
// over windows of min(1 minute, duration/12), at least six samples, so
// that a window holds a quiet moment between two attacks, and, where the
// run is long enough, a whole cycle of attacks (cycle seconds), so that
// both windows see the same mix of them.
func windows(d, sample time.Duration, cycleEnd, cycle float64) (from, width time.Duration, why string) {
	from = min(10*time.Minute, d/6)
	width = max(min(time.Minute, d/12), 6*sample)
	why = "min(10 min, duration/6)"
	if c := seconds(cycle); !math.IsNaN(cycle) && c > width && from+2*c <= d {
		width = c
	}
	if c := seconds(cycleEnd); !math.IsNaN(cycleEnd) && c > from && c+2*width <= d {
		from = c
		why = "the end of the first full cycle of attacks, later than min(10 min, duration/6)"
	}
	return from, width, why
}

func zeroNaN(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// level aggregates f over the load samples in [from, to] seconds.
func level(samples []Sample, from, to float64, f func(Sample) float64, agg func([]float64) float64) (float64, int) {
	var vs []float64
	for _, s := range samples {
		if s.Phase == phaseLoad && s.T >= from && s.T <= to {
			vs = append(vs, f(s))
		}
	}
	if len(vs) == 0 {
		return math.NaN(), 0
	}
	return agg(vs), len(vs)
}

func median(vs []float64) float64 {
	v := slices.Clone(vs)
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// settleCheck says whether cur, a sample after the load, is back to base,
// the last sample before it, and if not, what is still held.
func settleCheck(base, cur Sample) (bool, string) {
	var held []string
	for i := range cur.Gateways {
		if i >= len(base.Gateways) {
			break
		}
		b, c := base.Gateways[i], cur.Gateways[i]
		if c.ScrapeErr != "" || c.Err != "" {
			held = append(held, fmt.Sprintf("gateway-%d unreadable: %s%s", i+1, c.ScrapeErr, c.Err))
			continue
		}
		if c.Connections > 0 {
			held = append(held, fmt.Sprintf("gateway-%d holds %.0f connections", i+1, c.Connections))
		}
		if c.Goroutines > b.Goroutines+settleGoroutines {
			held = append(held, fmt.Sprintf("gateway-%d has %.0f goroutines (%.0f before the load)", i+1, c.Goroutines, b.Goroutines))
		}
		if c.FDs > b.FDs+settleFDs {
			held = append(held, fmt.Sprintf("gateway-%d has %d descriptors (%d before the load)", i+1, c.FDs, b.FDs))
		}
	}
	for _, name := range []string{cluster.BucketPresence, cluster.BucketUsers, cluster.BucketCounts, cluster.BucketCache, queue.StreamName} {
		b, c := base.Streams[name], cur.Streams[name]
		if c.Err != "" || c.Msgs > b.Msgs {
			held = append(held, fmt.Sprintf("%s holds %d messages (%d before the load)%s", name, c.Msgs, b.Msgs, errNote(c.Err)))
		}
	}
	return len(held) == 0, strings.Join(held, "; ")
}

func errNote(err string) string {
	if err == "" {
		return ""
	}
	return " (" + err + ")"
}

// settle waits until the cluster is back to its level before the load,
// or settleTimeout passes. Removal markers in the presence, users and
// counts buckets expire a minute after they are written
// (cluster.DefaultMarkerTTL), and cache entries RESOUND_CACHE_TTL (60 s
// here) after the last trigger: the wait covers both.
func (s *soak) settle(ctx context.Context) (bool, string) {
	s.mu.Lock()
	var base Sample
	for _, smp := range s.samples {
		if smp.Phase == phaseBaseline {
			base = smp
		}
	}
	s.mu.Unlock()
	deadline := time.Now().Add(s.o.settleTimeout)
	began := time.Now()
	for {
		ok, why := settleCheck(base, s.smp.take(ctx, phaseSettle))
		if ok {
			return true, fmt.Sprintf("after %.0f s", time.Since(began).Seconds())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false, fmt.Sprintf("after %.0f s still: %s", time.Since(began).Seconds(), why)
		}
		if !pause(ctx, 2*time.Second) {
			return false, "interrupted: " + why
		}
	}
}

// Check is one criterion and how the run fared.
type Check struct {
	Name   string `json:"name"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// Row is one line of the levels table: a quantity at the baseline, at
// minute 10, at the end of the load and after settling.
type Row struct {
	What     string  `json:"what"`
	Agg      string  `json:"agg"` // how the windows are aggregated
	Baseline float64 `json:"baseline"`
	Start    float64 `json:"start"`
	End      float64 `json:"end"`
	Settled  float64 `json:"settled"`
	Unit     string  `json:"unit"`
}

// CPUShare is a process's average CPU over the load, in percent of one
// core.
type CPUShare struct {
	Name    string  `json:"name"`
	Percent float64 `json:"percent"`
}

// report is the run's outcome.
type report struct {
	Pass        bool            `json:"pass"`
	Interrupted bool            `json:"interrupted,omitempty"`
	Started     string          `json:"started"`
	Results     string          `json:"results"`
	Machine     machine.Info    `json:"machine"`
	DurationS   float64         `json:"duration_s"`
	SampleS     float64         `json:"sample_s"`
	FromS       float64         `json:"judged_from_s"`
	FromWhy     string          `json:"judged_from"`
	WindowS     float64         `json:"window_s"`
	StoppedS    float64         `json:"load_stopped_s"`
	Settled     bool            `json:"settled"`
	SettleNote  string          `json:"settle_note"`
	Checks      []Check         `json:"checks"`
	Rows        []Row           `json:"levels"`
	CPU         []CPUShare      `json:"cpu_percent"`
	MachineBusy float64         `json:"machine_busy_percent"`
	Attacks     []AttackSummary `json:"attacks"`
	// CycleS is how long the first full cycle of attacks took.
	CycleS     float64 `json:"attack_cycle_s"`
	AttackGapS float64 `json:"attack_gap_s"`
	Loads      loads   `json:"loads"`
	Settings   string  `json:"gateway_settings"`
	Panics     bool    `json:"faultinject"`
	Command    string  `json:"command"`

	samples []Sample
	images  map[string][]byte
}

type evalInput struct {
	o           options
	samples     []Sample
	attacks     []AttackRecord
	cases       []attackCase
	loads       loads
	loadSeconds float64
	stoppedAt   float64
	settled     bool
	settleNote  string
	exited      []string
	interrupted bool
}

func gwf(i int, f func(GatewayStats) float64) func(Sample) float64 {
	return func(s Sample) float64 {
		if i >= len(s.Gateways) {
			return math.NaN()
		}
		return f(s.Gateways[i])
	}
}

func streamf(name string) func(Sample) float64 {
	return func(s Sample) float64 { return float64(s.Streams[name].Msgs) }
}

// evaluate judges a run from its samples and the loads' results.
func evaluate(in evalInput) *report {
	cycleEnd, cycle := math.NaN(), math.NaN()
	for _, a := range in.attacks {
		if a.Round == 1 {
			cycleEnd = a.T
			cycle = a.T - in.attacks[0].T
			break
		}
	}
	from, width, fromWhy := windows(in.o.duration, in.o.sample, cycleEnd, cycle)
	r := &report{
		DurationS: in.loadSeconds, SampleS: in.o.sample.Seconds(), FromS: from.Seconds(), FromWhy: fromWhy, WindowS: width.Seconds(), CycleS: zeroNaN(cycle),
		StoppedS: in.stoppedAt, Settled: in.settled, SettleNote: in.settleNote, Loads: in.loads,
		Attacks: summarizeAttacks(in.cases, in.attacks), Settings: settingsLine(), Panics: in.o.panics,
		Interrupted: in.interrupted, samples: in.samples, Command: command(in.o), AttackGapS: in.o.attackGap.Seconds(),
	}
	var base, settled Sample
	for _, s := range in.samples {
		switch s.Phase {
		case phaseBaseline:
			base = s
		case phaseSettle:
			settled = s
		}
	}
	startFrom, startTo := from.Seconds(), from.Seconds()+width.Seconds()
	endFrom, endTo := in.loadSeconds-width.Seconds(), in.loadSeconds
	add := func(name string, pass bool, format string, args ...any) {
		r.Checks = append(r.Checks, Check{Name: name, Pass: pass, Detail: fmt.Sprintf(format, args...)})
	}
	row := func(what, unit string, f func(Sample) float64, agg func([]float64) float64, aggName string) (start, end float64) {
		start, _ = level(in.samples, startFrom, startTo, f, agg)
		end, _ = level(in.samples, endFrom, endTo, f, agg)
		r.Rows = append(r.Rows, Row{What: what, Agg: aggName, Baseline: f(base), Start: start, End: end, Settled: f(settled), Unit: unit})
		return start, end
	}
	mibOf := func(f func(GatewayStats) int64) func(GatewayStats) float64 {
		return func(g GatewayStats) float64 { return mib(f(g)) }
	}

	nGateways := len(base.Gateways)
	for i := range nGateways {
		name := fmt.Sprintf("gateway-%d", i+1)
		s, e := row(name+" RSS", "MiB", gwf(i, mibOf(func(g GatewayStats) int64 { return g.RSS })), median, "median")
		growth := (e - s) / s
		add(name+" RSS", !math.IsNaN(growth) && growth < maxRSSGrowth,
			"%.1f → %.1f MiB (%+.1f%%), medians of [%s, %s] and [%s, %s]; allowed +%.0f%%",
			s, e, 100*growth, clock(startFrom), clock(startTo), clock(endFrom), clock(endTo), 100*maxRSSGrowth)
		row(name+" Go heap in use", "MiB", gwf(i, func(g GatewayStats) float64 { return g.HeapInuse / (1 << 20) }), median, "median")
		for _, q := range []struct {
			what string
			f    func(GatewayStats) float64
		}{
			{"goroutines", func(g GatewayStats) float64 { return g.Goroutines }},
			{"descriptors", func(g GatewayStats) float64 { return float64(g.FDs) }},
		} {
			s, e := row(name+" "+q.what, "", gwf(i, q.f), median, "median")
			slack := max(loadSlackAbs, math.Round(loadSlackRel*s))
			add(name+" "+q.what, !math.IsNaN(e) && e <= s+slack,
				"%.0f at minute %s, %.0f at the end, medians of the same windows (allowed +%.0f)", s, clock(startFrom), e, slack)
		}
		row(name+" connections", "", gwf(i, func(g GatewayStats) float64 { return g.Connections }), median, "median")
		row(name+" /metrics series", "", gwf(i, func(g GatewayStats) float64 { return float64(g.Series) }), slices.Max, "max")
	}
	row("worker RSS", "MiB", func(s Sample) float64 { return mib(s.Worker.RSS) }, median, "median")
	row("worker goroutines", "", func(s Sample) float64 { return s.Worker.Goroutines }, median, "median")
	row("nats-server RSS", "MiB", func(s Sample) float64 { return mib(s.NATS.RSS) }, median, "median")
	for _, name := range streamNames {
		row(name+" messages", "", streamf(name), median, "median")
	}

	// /metrics must not grow once every attack has run.
	if math.IsNaN(cycleEnd) || cycleEnd > endFrom {
		add("/metrics series", true, "not judged: the run had no full cycle of attacks before its last window")
	} else {
		pass := true
		var parts []string
		for i := range nGateways {
			s, _ := level(in.samples, cycleEnd, cycleEnd+width.Seconds(), gwf(i, func(g GatewayStats) float64 { return float64(g.Series) }), slices.Max)
			e, _ := level(in.samples, endFrom, endTo, gwf(i, func(g GatewayStats) float64 { return float64(g.Series) }), slices.Max)
			pass = pass && e <= s+seriesSlack
			parts = append(parts, fmt.Sprintf("gateway-%d %.0f → %.0f", i+1, s, e))
		}
		add("/metrics series", pass, "after the first cycle of attacks (%s) to the end: %s (allowed +%d)", clock(cycleEnd), strings.Join(parts, ", "), seriesSlack)
	}

	add("back to the start after the load", in.settled, "connections, goroutines (+%d), descriptors (+%d) and the presence, users, counts, cache and job streams back to their level before the load: %s",
		settleGoroutines, settleFDs, in.settleNote)
	dl := queue.DeadLetterStream
	add("nothing dead-lettered", settled.Streams[dl].Msgs == base.Streams[dl].Msgs, "%s: %d messages (%d before)", dl, settled.Streams[dl].Msgs, base.Streams[dl].Msgs)

	// Nothing missing.
	if f := in.loads.Fanout; f == nil || f.Fanout == nil {
		add("fan-out exact", false, "no loadgen fanout summary")
	} else {
		fs := f.Fanout
		failures := int64(0)
		for _, v := range fs.RequestFailures {
			failures += v
		}
		pass := fs.Missing == 0 && fs.Duplicates == 0 && fs.OutOfOrder == 0 && fs.Unexpected == 0 && fs.Malformed == 0 &&
			f.Conns.Failed == 0 && f.Conns.Dropped == 0 && failures == 0 && len(f.Errors) == 0 && fs.Deliveries > 0
		add("fan-out exact", pass, "%d events, %d of %d deliveries; missing %d, duplicates %d, out of order %d; %d connections failed, %d dropped; %d requests failed%s",
			fs.EventsSent, fs.Deliveries, fs.Expected, fs.Missing, fs.Duplicates, fs.OutOfOrder, f.Conns.Failed, f.Conns.Dropped, failures, errsNote(f.Errors))
	}
	b := in.loads.Bystander
	add("bystander exact", b.Err == "", "%s%s", b.Result, ifErr(b.Err))
	p := in.loads.Presence
	add("presence, sign-in, client events", len(p.Problems) == 0 && p.Joins > 0,
		"%d sessions, %d joins, %d sign-ins, %d client events sent and %d received; problems %v%s",
		p.Sessions, p.Joins, p.Signins, p.ClientSent, p.ClientRecv, p.Problems, examples(p.Examples))
	churnOK, churnNote := true, []string{}
	for i, c := range in.loads.Churn {
		if c == nil || c.Churn == nil {
			churnOK = false
			churnNote = append(churnNote, fmt.Sprintf("gateway-%d: no summary", i+1))
			continue
		}
		churnNote = append(churnNote, fmt.Sprintf("gateway-%d: %d completed, failures %v", i+1, c.Churn.Completed, c.Conns.Failures))
		churnOK = churnOK && c.Churn.Completed > 0
	}
	add("churn ran", churnOK && len(in.loads.Churn) > 0, "%s", strings.Join(churnNote, "; "))
	failed, runs := 0, 0
	var broken []string
	for _, a := range r.Attacks {
		runs += a.Runs
		failed += a.Failed
		if a.Failed > 0 {
			broken = append(broken, fmt.Sprintf("%s %d of %d: %s", a.Name, a.Failed, a.Runs, strings.Join(a.Problems, " | ")))
		}
	}
	add("every attack met its bound", failed == 0 && runs > 0, "%d attacks in %d kinds, %d broke a bound%s", runs, len(r.Attacks), failed, list(broken))

	// The processes lived, and recovered nothing they should not have.
	panics := 0.0
	for _, g := range settled.Gateways {
		panics += g.Panics
	}
	panics += settled.Worker.Panics
	if in.o.panics {
		add("processes alive", len(in.exited) == 0, "exited: %v; %0.f panics recovered (injected on purpose)", in.exited, panics)
	} else {
		add("processes alive, no panic", len(in.exited) == 0 && panics == 0, "exited: %v; resound_panics_total %.0f", in.exited, panics)
	}
	if len(in.loads.Errors) > 0 {
		add("loads ran as planned", false, "%s", strings.Join(in.loads.Errors, "; "))
	}
	if in.interrupted {
		add("ran the full duration", false, "interrupted")
	}

	r.CPU, r.MachineBusy = cpuShares(in.samples, nGateways)
	r.Pass = true
	for _, c := range r.Checks {
		r.Pass = r.Pass && c.Pass
	}
	return r
}

func errsNote(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return "; errors: " + strings.Join(errs, "; ")
}

func ifErr(err string) string {
	if err == "" {
		return ""
	}
	return ": " + err
}

func examples(ex []string) string {
	if len(ex) == 0 {
		return ""
	}
	return "; e.g. " + strings.Join(ex[:min(len(ex), 3)], " | ")
}

func list(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return ": " + strings.Join(s, "; ")
}

// clock writes seconds as m:ss.
func clock(sec float64) string {
	if math.IsNaN(sec) {
		return "?"
	}
	neg := ""
	if sec < 0 {
		neg, sec = "-", -sec
	}
	s := int(math.Round(sec))
	return fmt.Sprintf("%s%d:%02d", neg, s/60, s%60)
}

// cpuShares is each process's average CPU over the load, and the whole
// machine's, in percent of one core.
func cpuShares(samples []Sample, gateways int) ([]CPUShare, float64) {
	var first, last *Sample
	for i := range samples {
		if samples[i].Phase == phaseLoad {
			if first == nil {
				first = &samples[i]
			}
			last = &samples[i]
		}
	}
	if first == nil || last == first {
		return nil, 0
	}
	wall := last.T - first.T
	pct := func(a, b float64) float64 { return math.Round(1000*(b-a)/wall) / 10 }
	var out []CPUShare
	for i := range gateways {
		out = append(out, CPUShare{fmt.Sprintf("gateway-%d", i+1), pct(first.Gateways[i].CPU, last.Gateways[i].CPU)})
	}
	out = append(out,
		CPUShare{"worker", pct(first.Worker.CPU, last.Worker.CPU)},
		CPUShare{"nats-server", pct(first.NATS.CPU, last.NATS.CPU)},
		CPUShare{"loadgen (3 processes)", pct(first.Loadgen.CPU, last.Loadgen.CPU)},
		CPUShare{"soak (bystander, presence, attacks)", pct(first.Soak.CPU, last.Soak.CPU)},
	)
	return out, pct(first.MachineBusy, last.MachineBusy)
}

// command is how to run this soak again: the task, with the settings
// that differ from the defaults.
func command(o options) string {
	d := defaults()
	var env []string
	set := func(name string, differs bool, value string) {
		if differs {
			env = append(env, name+"="+value)
		}
	}
	set("SOAK_DURATION", o.duration != d.duration, shortDuration(o.duration))
	set("SOAK_SAMPLE", o.sample != autoSample(o.duration), shortDuration(o.sample))
	set("SOAK_FANOUT_RATE", o.fanoutRate != d.fanoutRate, ftoa(o.fanoutRate))
	set("SOAK_FANOUT_CONNS", o.fanoutConns != d.fanoutConns, itoa(o.fanoutConns))
	set("SOAK_FANOUT_CHANNELS", o.fanoutChannels != d.fanoutChannels, itoa(o.fanoutChannels))
	set("SOAK_CHURN_RATE", o.churnRate != d.churnRate, ftoa(o.churnRate))
	set("SOAK_PRESENCE", o.presence != d.presence, itoa(o.presence))
	set("SOAK_BYSTANDER_RATE", o.bystanderRate != d.bystanderRate, ftoa(o.bystanderRate))
	set("SOAK_ATTACK_GAP", o.attackGap != d.attackGap, shortDuration(o.attackGap))
	set("SOAK_PANICS", o.panics, "1")
	return strings.TrimSpace(strings.Join(env, " ") + " go tool task soak")
}

// shortDuration writes 1h rather than 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
