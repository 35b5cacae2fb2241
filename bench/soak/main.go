// Command soak runs Resound in scaled mode under every kind of load at
// once for a long time, and checks that nothing grows: the proof, after
// the gateway's hardening (issue 9), that no bound leaks over time.
//
//	go tool task soak                      # one hour (SOAK_DURATION=1h)
//	SOAK_DURATION=3m go tool task soak     # a short check
//	go run ./bench/soak -duration 10m -sample 5s
//
// It builds nats-server, the gateway, the worker and loadgen into a
// temporary directory and starts one nats-server, one worker and two
// gateways, whose app has max_connections set and subscription_count on,
// so that every shared-state bucket is written. Then, all at once for the
// whole duration:
//
//   - fan-out: loadgen fanout over both gateways with exact counting (every
//     event to every subscriber once, in order), and a Bystander
//     (internal/attack) on the attacked gateway;
//   - churn: loadgen churn on each gateway (connect, subscribe, close);
//   - presence: members joining and leaving presence channels on both
//     gateways, signing in with watchlists, reading cache channels and
//     sending client events;
//   - attacks: the functions of internal/attack in a loop against gateway
//     1, each from a client address of its own, each judged.
//
// Every -sample it records each gateway's RSS, Go heap, goroutines, open
// descriptors, connections and /metrics series; the worker's and
// nats-server's RSS; CPU of every process; and the messages and bytes of
// the RESOUND_PRESENCE, RESOUND_USERS, RESOUND_COUNTS and RESOUND_CACHE
// buckets and of the job and dead-letter streams, read from outside
// through a NATS client. Then it stops the load, waits for the cluster to
// let go of everything, and judges (see verdict.go): RSS growth under 5%
// from minute 10 to the end, no growth in goroutines or descriptors,
// buckets back to where they started, nothing missing.
//
// Results go to bench/results/soak-<stamp>/ (samples.csv, samples.jsonl,
// attacks.jsonl, summary.json, report.md, the plots, every process's log).
// A run of an hour or more also writes its plots to docs/img/soak-*.svg
// and its numbers between the soak markers of docs/security.md
// (SOAK_DOCS=1 or 0 forces either way). The exit status is 0 when the
// verdict is a pass, 1 when it is a failure, 2 when the run could not be
// made.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/machine"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the run's knobs; each flag defaults to an environment
// variable, so that `go tool task soak` is configured by SOAK_*.
type options struct {
	duration       time.Duration
	sample         time.Duration
	fanoutRate     float64
	fanoutConns    int
	fanoutChannels int
	churnRate      float64
	presence       int
	bystanderRate  float64
	attackGap      time.Duration
	panics         bool
	settleTimeout  time.Duration
	results        string
	docs           string
	keep           bool
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(strings.TrimSpace(os.Getenv(name))); err == nil {
		return d
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if f, err := strconv.ParseFloat(strings.TrimSpace(os.Getenv(name)), 64); err == nil {
		return f
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(strings.TrimSpace(os.Getenv(name))); err == nil {
		return n
	}
	return def
}

func envBool(name string) bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv(name)))
	return v != "" && v != "0" && v != "false" && v != "no"
}

// defaults are the load of `go tool task soak`: on this 2-core machine
// the soak's own processes (gateways, worker, nats-server, loadgen, the
// soak itself) take about one core between them, each gateway about a
// fifth of one, well below saturation, so that the run measures leaks
// rather than a box out of breath, and leaves room for others.
func defaults() options {
	return options{duration: time.Hour, fanoutRate: 500, fanoutConns: 300, fanoutChannels: 10,
		churnRate: 100, presence: 60, bystanderRate: 20, attackGap: 5 * time.Second}
}

// autoSample is the sampling interval when none is given: 10 s, or less
// for runs under 6 minutes (duration/36, at least 2 s), so that a short
// check still has windows of several samples.
func autoSample(d time.Duration) time.Duration {
	return min(10*time.Second, max(2*time.Second, d/36))
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	d := defaults()
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", envDuration("SOAK_DURATION", d.duration), "how long the load runs (env SOAK_DURATION)")
	fs.DurationVar(&o.sample, "sample", envDuration("SOAK_SAMPLE", 0), "sampling interval (env SOAK_SAMPLE; default 10s, less for runs under 6 minutes: duration/36, at least 2s)")
	fs.Float64Var(&o.fanoutRate, "fanout-rate", envFloat("SOAK_FANOUT_RATE", d.fanoutRate), "loadgen fanout: events per second (env SOAK_FANOUT_RATE)")
	fs.IntVar(&o.fanoutConns, "fanout-conns", envInt("SOAK_FANOUT_CONNS", d.fanoutConns), "loadgen fanout: subscribers over both gateways (env SOAK_FANOUT_CONNS)")
	fs.IntVar(&o.fanoutChannels, "fanout-channels", envInt("SOAK_FANOUT_CHANNELS", d.fanoutChannels), "loadgen fanout: channels (env SOAK_FANOUT_CHANNELS)")
	fs.Float64Var(&o.churnRate, "churn-rate", envFloat("SOAK_CHURN_RATE", d.churnRate), "loadgen churn: connections per second on each gateway (env SOAK_CHURN_RATE)")
	fs.IntVar(&o.presence, "presence", envInt("SOAK_PRESENCE", d.presence), "presence members coming and going at once (env SOAK_PRESENCE)")
	fs.Float64Var(&o.bystanderRate, "bystander-rate", envFloat("SOAK_BYSTANDER_RATE", d.bystanderRate), "bystander: events per second on the attacked gateway (env SOAK_BYSTANDER_RATE)")
	fs.DurationVar(&o.attackGap, "attack-gap", envDuration("SOAK_ATTACK_GAP", d.attackGap), "pause between two attacks (env SOAK_ATTACK_GAP)")
	fs.BoolVar(&o.panics, "panics", envBool("SOAK_PANICS"), "build the gateways with -tags faultinject and add the injected panics to the attacks (env SOAK_PANICS)")
	fs.DurationVar(&o.settleTimeout, "settle-timeout", envDuration("SOAK_SETTLE_TIMEOUT", 4*time.Minute), "how long to wait, once the load stopped, for the cluster to let go (env SOAK_SETTLE_TIMEOUT)")
	fs.StringVar(&o.results, "results", "bench/results", "directory that gets the soak-<stamp> results directory")
	fs.StringVar(&o.docs, "docs", os.Getenv("SOAK_DOCS"), "write docs/img/soak-*.svg and docs/security.md's soak section: 1 or 0 (env SOAK_DOCS; default: when the run lasts an hour or more)")
	fs.BoolVar(&o.keep, "keep", envBool("SOAK_KEEP"), "keep the temporary directory (binaries, NATS store) (env SOAK_KEEP)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.duration < time.Minute {
		return o, errors.New("-duration must be at least 1m")
	}
	if o.sample <= 0 {
		o.sample = autoSample(o.duration)
	}
	return o, nil
}

// writeDocs says whether this run replaces the numbers in docs/.
func (o options) writeDocs() bool {
	switch strings.ToLower(strings.TrimSpace(o.docs)) {
	case "1", "true", "yes":
		return true
	case "0", "false", "no":
		return false
	}
	return o.duration >= time.Hour
}

// Client addresses of the load: loopback has all of 127/8, and the
// gateways cap connections per address, so each load has its own range.
const (
	fanoutSources   = "127.0.10.1-127.0.10.20"
	churnSources    = "127.0.1%d.1-127.0.1%d.20" // gateway i: 127.0.1(i).x
	presenceNet     = "127.0.20."
	bystanderSource = "127.0.0.9"
	harnessSource   = "127.0.0.8"
)

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "soak:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := newSoak(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		if s != nil {
			s.teardown()
		}
		return 2
	}
	rep, err := s.run(ctx)
	s.teardown()
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		return 2
	}
	fmt.Fprint(stdout, rep.console())
	if !rep.Pass {
		return 1
	}
	return 0
}

// soak is one run.
type soak struct {
	o       options
	log     io.Writer
	root    string
	tmp     string
	dir     string // results
	cluster *deployment
	nc      *nats.Conn
	js      jetstream.JetStream
	smp     *sampler
	machine machine.Info
	lgs     []*proc

	mu      sync.Mutex
	samples []Sample
	attacks []AttackRecord
	sampleW *os.File
	attackW *os.File
}

func (s *soak) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "%s soak: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func newSoak(ctx context.Context, o options, log io.Writer) (*soak, error) {
	s := &soak{o: o, log: log, machine: machine.Read()}
	var err error
	if s.root, err = moduleRoot(); err != nil {
		return nil, err
	}
	stamp := time.Now().Format("20060102-150405")
	s.dir = filepath.Join(o.results, "soak-"+stamp)
	if !filepath.IsAbs(s.dir) {
		s.dir = filepath.Join(s.root, s.dir)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	if s.tmp, err = os.MkdirTemp("", "resound-soak-"); err != nil {
		return nil, err
	}
	bin := filepath.Join(s.tmp, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return s, err
	}
	s.logf("results in %s; building into %s", s.dir, bin)
	if err := build(ctx, s.root, bin, o.panics); err != nil {
		return s, err
	}
	s.logf("starting nats-server, a worker and 2 gateways")
	s.cluster, err = startCluster(ctx, bin, filepath.Join(s.dir, "logs"), s.tmp, 2)
	if err != nil {
		return s, err
	}
	if s.nc, err = nats.Connect(s.cluster.natsURL, nats.Name("resound-soak")); err != nil {
		return s, err
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		return s, err
	}
	s.smp = &sampler{c: s.cluster, js: s.js}
	if s.sampleW, err = os.Create(filepath.Join(s.dir, "samples.jsonl")); err != nil {
		return s, err
	}
	if s.attackW, err = os.Create(filepath.Join(s.dir, "attacks.jsonl")); err != nil {
		return s, err
	}
	return s, nil
}

// teardown stops everything the soak started, in order, and removes the
// temporary directory.
func (s *soak) teardown() {
	for _, p := range s.lgs {
		p.stop(stopGrace)
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.cluster != nil {
		if killed := s.cluster.stop(); len(killed) > 0 {
			s.logf("had to SIGKILL %v", killed)
		}
	}
	for _, f := range []*os.File{s.sampleW, s.attackW} {
		if f != nil {
			_ = f.Close()
		}
	}
	if s.tmp != "" && !s.o.keep {
		_ = os.RemoveAll(s.tmp)
	}
}

func (s *soak) record(smp Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, smp)
	b, _ := json.Marshal(smp)
	_, _ = s.sampleW.Write(append(b, '\n'))
}

func (s *soak) recordAttack(r AttackRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attacks = append(s.attacks, r)
	b, _ := json.Marshal(r)
	_, _ = s.attackW.Write(append(b, '\n'))
	if len(r.Problems) > 0 {
		s.logf("attack %q (round %d) broke its bound: %v", r.Name, r.Round, r.Problems)
	}
}

// sampleEvery records a sample every interval with the phase phase()
// says, until ctx ends.
func (s *soak) sampleEvery(ctx context.Context, phase func() string) {
	t := time.NewTicker(s.o.sample)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		smp := s.smp.take(ctx, phase())
		if ctx.Err() != nil {
			return
		}
		s.record(smp)
		if smp.Phase == phaseLoad && len(s.samples)%6 == 0 {
			g := smp.Gateways
			s.logf("t=%4.0fs  gateway RSS %.1f / %.1f MiB, goroutines %.0f / %.0f, fds %d / %d, connections %.0f / %.0f",
				smp.T, mib(g[0].RSS), mib(g[1].RSS), g[0].Goroutines, g[1].Goroutines, g[0].FDs, g[1].FDs, g[0].Connections, g[1].Connections)
		}
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// loads are what runs during the load phase, for the report.
type loads struct {
	Fanout    *loadgen.Summary   `json:"fanout"`
	Churn     []*loadgen.Summary `json:"churn"`
	Bystander BystanderReport    `json:"bystander"`
	Presence  PresenceResult     `json:"presence"`
	CacheSent int                `json:"cache_triggers"`
	CacheFail int                `json:"cache_trigger_failures"`
	Errors    []string           `json:"errors,omitempty"` // a load that could not run as planned
}

// BystanderReport is the bystander's result in a form that survives JSON.
type BystanderReport struct {
	Clients  int     `json:"clients"`
	Rate     float64 `json:"rate"`
	Expected int     `json:"expected"`
	Retries  int     `json:"retries"`
	Err      string  `json:"err,omitempty"`
	Result   string  `json:"result"`
}

func (s *soak) run(ctx context.Context) (*report, error) {
	gw := s.cluster.gateways
	var phaseMu sync.Mutex
	phase := phaseBaseline
	getPhase := func() string { phaseMu.Lock(); defer phaseMu.Unlock(); return phase }
	setPhase := func(p string) { phaseMu.Lock(); defer phaseMu.Unlock(); phase = p }

	// Baseline: the cluster up and idle, sampled three times; recorded
	// once the load's start, their time zero, is known.
	var baseline []Sample
	for i := range 3 {
		if i > 0 && !pause(ctx, 2*time.Second) {
			return nil, ctx.Err()
		}
		baseline = append(baseline, s.smp.take(ctx, phaseBaseline))
	}
	s.dumpProfiles("baseline")
	last := baseline[len(baseline)-1].Gateways
	s.logf("baseline: gateway RSS %.1f / %.1f MiB, goroutines %.0f / %.0f, fds %d / %d",
		mib(last[0].RSS), mib(last[1].RSS), last[0].Goroutines, last[1].Goroutines, last[0].FDs, last[1].FDs)

	sctx, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() { defer close(sampled); s.sampleEvery(sctx, getPhase) }()
	defer func() { stopSampling(); <-sampled }()

	// The load, all at once.
	var ld loads
	start := time.Now()
	s.smp.setStart(start)
	for _, b := range baseline {
		b.T = b.at.Sub(start).Seconds()
		s.record(b)
	}
	setPhase(phaseLoad)
	s.logf("load for %v: fan-out %.0f events/s to %d subscribers, churn %.0f/s per gateway, %d presence members, bystander %.0f events/s, attacks on gateway-1; sampling every %v",
		s.o.duration, s.o.fanoutRate, s.o.fanoutConns, s.o.churnRate, s.o.presence, s.o.bystanderRate, s.o.sample)
	lctx, stopLoad := context.WithDeadline(ctx, start.Add(s.o.duration))
	defer stopLoad()

	fanout, err := s.startLoadgen("loadgen-fanout", "fanout",
		"-url", "http://"+gw[1].addr, "-ws-urls", "http://"+gw[0].addr+",http://"+gw[1].addr,
		"-conns", itoa(s.o.fanoutConns), "-channels", itoa(s.o.fanoutChannels), "-rate", ftoa(s.o.fanoutRate),
		"-duration", s.o.duration.String(), "-drain", "10s", "-run", "soakfan", "-sources", fanoutSources)
	if err != nil {
		return nil, err
	}
	var churns []*proc
	for i, g := range gw {
		p, err := s.startLoadgen(fmt.Sprintf("loadgen-churn-%d", i+1), "churn",
			"-url", "http://"+g.addr, "-rate", ftoa(s.o.churnRate), "-duration", s.o.duration.String(),
			"-hold", "1s", "-channels", "10", "-run", fmt.Sprintf("soakchurn%d", i+1),
			"-sources", fmt.Sprintf(churnSources, i+1, i+1))
		if err != nil {
			return nil, err
		}
		churns = append(churns, p)
	}

	by := attack.NewBystander(attack.BystanderOptions{Target: gw[0].target, Channels: []string{"soak-bystander-0", "soak-bystander-1"},
		Clients: 3, Rate: s.o.bystanderRate, Source: bystanderSource})
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = by.Start(bctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("starting the bystander: %w", err)
	}

	var sources []string
	for i := 1; i <= 20; i++ {
		sources = append(sources, presenceNet+itoa(i))
	}
	pd := newPresenceDriver(presenceOptions{Targets: []attack.Target{gw[0].target, gw[1].target}, Members: s.o.presence,
		Channels: 4, Users: max(2, s.o.presence*2/3), Life: 12 * time.Second, EventEvery: time.Second, Sources: sources})
	pd.start(lctx)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ld.CacheSent, ld.CacheFail = cacheTicker(lctx, gw[1].target, 4, 2*time.Second, harnessSource)
	}()
	cases := attackCases(s.o.panics)
	go func() {
		defer wg.Done()
		attackLoop(lctx, gw[0], cases, s.o.attackGap, start, s.recordAttack)
	}()

	// Watch for a process that dies meanwhile: the run goes on (the
	// samples say when), and the verdict fails.
	<-lctx.Done()
	if ctx.Err() != nil {
		s.logf("interrupted: stopping the load")
	}
	s.logf("load time is up: stopping the load (the attack in progress finishes first)")
	loadEnd := time.Now()
	wg.Wait()
	pd.wait()
	ld.Presence = pd.result()
	br := by.Stop()
	ld.Bystander = BystanderReport{Clients: len(br.Clients), Rate: s.o.bystanderRate, Expected: br.Expected, Retries: br.Retries, Result: br.String()}
	if err := br.Err(); err != nil {
		ld.Bystander.Err = err.Error()
	}
	ld.Fanout, err = s.awaitLoadgen(ctx, fanout)
	if err != nil {
		ld.Errors = append(ld.Errors, err.Error())
	}
	for _, p := range churns {
		sum, err := s.awaitLoadgen(ctx, p)
		if err != nil {
			ld.Errors = append(ld.Errors, err.Error())
		}
		ld.Churn = append(ld.Churn, sum)
	}
	loadStopped := time.Since(start)
	s.logf("load stopped %.0f s after its end; settling (up to %v)", time.Since(loadEnd).Seconds(), s.o.settleTimeout)

	// Settle: everything the load made the cluster hold must go.
	setPhase(phaseSettle)
	settled, why := s.settle(ctx)
	stopSampling()
	<-sampled
	final := s.smp.take(context.Background(), phaseSettle)
	s.record(final)
	s.dumpProfiles("settled")
	s.logf("settled: %v %s", settled, why)

	s.mu.Lock()
	samples := append([]Sample(nil), s.samples...)
	attacks := append([]AttackRecord(nil), s.attacks...)
	s.mu.Unlock()
	rep := evaluate(evalInput{
		o: s.o, samples: samples, attacks: attacks, cases: cases, loads: ld,
		loadSeconds: s.o.duration.Seconds(), stoppedAt: loadStopped.Seconds(),
		settled: settled, settleNote: why, exited: s.cluster.exited(), interrupted: ctx.Err() != nil,
	})
	rep.Machine = s.machine
	rep.Machine.LoadEnd = machine.LoadAvg()
	rep.Started = start.UTC().Format(time.RFC3339)
	rep.Results = s.rel(s.dir)
	if err := s.write(rep); err != nil {
		return rep, err
	}
	return rep, nil
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// rel is path relative to the module root, for the report.
func (s *soak) rel(path string) string {
	if r, err := filepath.Rel(s.root, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}

func (s *soak) startLoadgen(name, mode string, args ...string) (*proc, error) {
	out := filepath.Join(s.dir, name+".json")
	env := []string{"REVERB_APP_ID=" + appID, "REVERB_APP_KEY=" + appKey, "REVERB_APP_SECRET=" + secret}
	p, err := startProc(name, filepath.Join(s.tmp, "bin", "loadgen"), filepath.Join(s.dir, "logs"), s.tmp, env, out,
		append([]string{mode, "-json", "-progress", "30s"}, args...)...)
	if err != nil {
		return nil, err
	}
	s.lgs = append(s.lgs, p)
	s.smp.addLoadgen(p)
	return p, nil
}

// awaitLoadgen waits for a loadgen process to end on its own (it is
// bounded by -duration and -drain) and reads its summary.
func (s *soak) awaitLoadgen(ctx context.Context, p *proc) (*loadgen.Summary, error) {
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		p.stop(stopGrace)
	case <-ctx.Done():
		p.stop(stopGrace)
	}
	sum, err := loadgen.ReadSummaryFile(p.out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (exit code %d; log %s)", p.name, err, p.cmd.ProcessState.ExitCode(), s.rel(p.log))
	}
	return sum, nil
}

// dumpProfiles saves every gateway's goroutine and heap profiles
// (RESOUND_PPROF serves them on the ops address) before the load and
// after it settled, so that a count or a heap that grew can be traced:
// `go tool pprof -base heap-gateway-1-baseline.pb.gz heap-gateway-1-settled.pb.gz`.
// The heap profile is taken after a garbage collection (gc=1), which is
// why it is never taken while the load runs.
func (s *soak) dumpProfiles(when string) {
	for i, g := range s.cluster.gateways {
		for _, p := range []struct{ path, file string }{
			{"goroutine?debug=1", "goroutines-gateway-%d-%s.txt"},
			{"heap?gc=1", "heap-gateway-%d-%s.pb.gz"},
		} {
			if ok, b := httpOK("http://" + g.opsAddr + "/debug/pprof/" + p.path); ok {
				_ = os.WriteFile(filepath.Join(s.dir, fmt.Sprintf(p.file, i+1, when)), b, 0o644)
			}
		}
	}
}
