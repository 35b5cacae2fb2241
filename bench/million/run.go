//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/machine"
)

// The app every process serves: loopback only, for the run.
const (
	appID   = "100013"
	appKey  = "million-key"
	secret  = "million-secret"
	runName = "m"
)

// Bounds of the set-up and tear-down.
const (
	buildTimeout = 10 * time.Minute
	upTimeout    = 2 * time.Minute
	stopGrace    = 30 * time.Second
	// loadgenDrain is how long a load generator waits after "stop" for
	// the last deliveries and reconnections before it counts.
	loadgenDrain = time.Minute
)

// The buckets whose compare-and-set traffic the run counts.
var buckets = []string{cluster.BucketCounts, cluster.BucketPresence, cluster.BucketUsers}

type gatewayProc struct {
	*child
	url, ops string // http://127.0.0.1:port, and host:port of RESOUND_OPS_ADDR
}

type millionRun struct {
	o       options
	l       layout
	log     io.Writer
	root    string
	tmp     string
	dir     string
	machine machine.Info
	sysctls []Sysctl
	restore []applied

	nats     *child
	natsURL  string
	gateways []*gatewayProc
	workers  []*child
	loadgens []*child
	nc       *nats.Conn
	js       jetstream.JetStream
	stores   *cluster.Stores           // the gateways' shared state, read by the checks
	attempts map[string]*atomic.Uint64 // KV publishes seen, by bucket
	// apiRequests and kvReads count the JetStream API requests seen, and
	// of them the reads of a bucket's key (direct or not).
	apiRequests, kvReads atomic.Uint64

	mu       sync.Mutex
	phase    string
	start    time.Time // the load generators started
	samples  []Sample
	lastCPU  map[int]float64 // by pid, so that exited processes still count
	phases   []PhaseSpan
	sampleW  *os.File
	problems []string
}

func (r *millionRun) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "%s million: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (r *millionRun) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.logf("PROBLEM: %s", msg)
	r.mu.Lock()
	r.problems = append(r.problems, msg)
	r.mu.Unlock()
}

func newRun(ctx context.Context, o options, log io.Writer) (*millionRun, error) {
	l, err := planLayout(o)
	if err != nil {
		return nil, err
	}
	r := &millionRun{o: o, l: l, log: log, machine: machine.Read(), lastCPU: map[int]float64{}, attempts: map[string]*atomic.Uint64{}}
	if r.root, err = moduleRoot(); err != nil {
		return nil, err
	}
	if err := r.preflight(); err != nil {
		return r, err
	}
	r.dir = filepath.Join(o.results, "million-"+time.Now().Format("20060102-150405"))
	if !filepath.IsAbs(r.dir) {
		r.dir = filepath.Join(r.root, r.dir)
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "logs"), 0o755); err != nil {
		return r, err
	}
	if r.tmp, err = os.MkdirTemp("", "resound-million-"); err != nil {
		return r, err
	}
	if r.sampleW, err = os.Create(filepath.Join(r.dir, "samples.jsonl")); err != nil {
		return r, err
	}
	bin := filepath.Join(r.tmp, "bin")
	r.logf("%d sockets: %d gateways × %d, %d load generators, %d workers; results in %s", l.Sockets, l.Gateways, l.PerGateway,
		l.Loadgens, l.Workers, r.dir)
	bctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	if err := build(bctx, r.root, bin); err != nil {
		return r, err
	}
	return r, r.startCluster(ctx, bin)
}

// preflight reads the kernel settings, raises those the run needs (with
// -sysctl auto), and checks the rest against the layout.
func (r *millionRun) preflight() error {
	r.sysctls = readSysctls()
	if r.o.sysctl == "auto" {
		var unmet []string
		r.restore, unmet = ensure(r.l.needs(), r.sysctls, writeSysctl)
		for _, u := range unmet {
			r.logf("kernel setting short, run goes on: %s", u)
		}
	}
	for _, s := range r.sysctls {
		switch {
		case s.Set != "":
			r.logf("sysctl %s = %s, set to %s for the run", s.Name, s.Value, s.Set)
		default:
			r.logf("sysctl %s = %s %s", s.Name, s.Value, s.Note)
		}
	}
	if v, err := parseInts(sysctlValue(r.sysctls, "net.ipv4.ip_local_port_range")); err == nil && len(v) == 2 {
		if per, have := r.l.portsPerPair(), int(v[1]-v[0]+1); per > have*9/10 {
			return fmt.Errorf("a (source, gateway) pair may need %d ephemeral ports, and ip_local_port_range has %d: raise -sources-per-loadgen", per, have)
		}
	}
	if v, err := parseInts(sysctlValue(r.sysctls, "fs.file-max")); err == nil && len(v) == 1 && v[0] < int64(2*r.l.Sockets) {
		return fmt.Errorf("fs.file-max is %d, under the %d descriptors both ends of %d connections take", v[0], 2*r.l.Sockets, r.l.Sockets)
	}
	if c, err := parseInts(sysctlValue(r.sysctls, "net.netfilter.nf_conntrack_count")); err == nil && len(c) == 1 && c[0] > 0 {
		if m, err := parseInts(sysctlValue(r.sysctls, "net.netfilter.nf_conntrack_max")); err == nil && len(m) == 1 && m[0] < int64(r.l.Sockets) {
			r.logf("connection tracking is on (%d tracked) with room for %d: it will drop connections past that", c[0], m[0])
		}
	}
	return nil
}

func (r *millionRun) startCluster(ctx context.Context, bin string) error {
	ports, err := freePorts(2 + 2*r.l.Gateways + r.l.Workers)
	if err != nil {
		return err
	}
	natsPort, natsMon := ports[0], ports[1]
	r.natsURL = "nats://127.0.0.1:" + itoa(natsPort)
	natsArgs := []string{"-js", "-sd", filepath.Join(r.tmp, "nats"), "-a", "127.0.0.1", "-p", itoa(natsPort), "-m", itoa(natsMon)}
	if r.o.natsProfile > 0 {
		natsArgs = append(natsArgs, "--profile", itoa(r.o.natsProfile))
		r.logf("nats-server's pprof: http://127.0.0.1:%d/debug/pprof/", r.o.natsProfile)
	}
	// nats-server stands for a deployment's NATS cluster, which has
	// machines of its own; here it is one process among about 120 on two
	// cores, and fair scheduling gave it too little of them: in the third
	// full run, at 750,000 sockets, its read loops took 2 s a pass, the
	// gateways' heartbeats lapsed, and connects slowed to 100/s. So it
	// runs at a higher priority when the kernel lets the run raise it.
	// (Runs 3 to 7 set it after the start, which reached only nats-server's
	// main thread; see childSpec.nice.)
	r.nats, err = start(childSpec{name: "nats-server", kind: kindNATS, bin: filepath.Join(bin, "nats-server"), dir: r.tmp,
		args: natsArgs, nice: natsNice}, r.logDir())
	if err != nil {
		return err
	}
	if err := waitUntil(ctx, upTimeout, 100*time.Millisecond, "nats-server", func() bool {
		code, _, _ := get("http://127.0.0.1:" + itoa(natsMon) + "/healthz")
		return code == 200
	}, r.nats); err != nil {
		return err
	}
	r.logf("nats-server's threads run at nice %v", threadNices(r.nats.cmd.Process.Pid))
	common := []string{"NATS_URL=" + r.natsURL, "REVERB_APP_ID=" + appID, "REVERB_APP_KEY=" + appKey, "REVERB_APP_SECRET=" + secret,
		"RESOUND_LOG_FORMAT=json", "RESOUND_LOG_LEVEL=warn"}
	if r.o.countConnections {
		common = append(common, "REVERB_APP_MAX_CONNECTIONS="+itoa(2*r.l.Sockets))
	}
	for i := range r.l.Workers {
		w, err := start(childSpec{name: fmt.Sprintf("worker-%d", i+1), kind: kindWorker, bin: filepath.Join(bin, "worker"), dir: r.tmp,
			env: append(append([]string{}, common...), "RESOUND_METRICS_PORT="+itoa(ports[2+2*r.l.Gateways+i]))}, r.logDir())
		if err != nil {
			return err
		}
		r.workers = append(r.workers, w)
	}
	for i := range r.l.Gateways {
		port, ops := ports[2+2*i], ports[3+2*i]
		env := append(append([]string{}, common...), "REVERB_SERVER_HOST=127.0.0.1", "REVERB_SERVER_PORT="+itoa(port),
			"RESOUND_OPS_ADDR=127.0.0.1:"+itoa(ops), fmt.Sprintf("RESOUND_DRAIN_WINDOW=%g", r.o.drainWindow.Seconds()),
			fmt.Sprintf("RESOUND_PING_INTERVAL=%d", int(r.o.pingInterval.Seconds())),
			"RESOUND_PPROF=true")
		env = append(env, r.goMaxProcs()...)
		c, err := start(childSpec{name: fmt.Sprintf("gateway-%d", i+1), kind: kindGateway, bin: filepath.Join(bin, "gateway"), dir: r.tmp, env: env}, r.logDir())
		if err != nil {
			return err
		}
		r.gateways = append(r.gateways, &gatewayProc{child: c, url: "http://127.0.0.1:" + itoa(port), ops: "127.0.0.1:" + itoa(ops)})
	}
	watch := append([]*child{r.nats}, r.workers...)
	for _, g := range r.gateways {
		watch = append(watch, g.child)
	}
	for _, g := range r.gateways {
		if err := waitUntil(ctx, upTimeout, 200*time.Millisecond, g.name+" up", func() bool {
			code, _, _ := get(g.url + "/up")
			return code == 200
		}, watch...); err != nil {
			return err
		}
	}
	for _, w := range r.workers {
		if err := waitUntil(ctx, upTimeout, 200*time.Millisecond, w.name+" up", func() bool {
			code, _, _ := get("http://127.0.0.1:" + itoa(ports[2+2*r.l.Gateways+indexOf(r.workers, w)]) + "/up")
			return code == 200
		}, watch...); err != nil {
			return err
		}
	}
	if r.nc, err = nats.Connect(r.natsURL, nats.Name("resound-million")); err != nil {
		return err
	}
	if r.js, err = jetstream.New(r.nc); err != nil {
		return err
	}
	// The buckets exist (the gateways made them); this only opens them.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	r.stores, err = cluster.Ensure(sctx, r.js, cluster.Options{})
	cancel()
	if err != nil {
		return err
	}
	// Every write to a bucket, the compare-and-sets that lose included,
	// is a publish on its subject: counting them here against what the
	// stream stored gives the conflicts.
	for _, b := range buckets {
		n := &atomic.Uint64{}
		r.attempts[b] = n
		sub, err := r.nc.Subscribe("$KV."+b+".>", func(*nats.Msg) { n.Add(1) })
		if err != nil {
			return err
		}
		_ = sub.SetPendingLimits(-1, -1)
	}
	// Reads are requests to the JetStream API: a sweep reads every key
	// of a bucket, and every gateway sweeps when one goes.
	sub, err := r.nc.Subscribe("$JS.API.>", func(m *nats.Msg) {
		r.apiRequests.Add(1)
		if strings.HasPrefix(m.Subject, "$JS.API.DIRECT.GET.KV_") || strings.HasPrefix(m.Subject, "$JS.API.STREAM.MSG.GET.KV_") {
			r.kvReads.Add(1)
		}
	})
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(-1, -1)
	r.logf("nats-server, %d workers and %d gateways are up", len(r.workers), len(r.gateways))
	return nil
}

func indexOf(cs []*child, c *child) int {
	for i, x := range cs {
		if x == c {
			return i
		}
	}
	return -1
}

func (r *millionRun) logDir() string { return filepath.Join(r.dir, "logs") }

// liveGateways are the gateways the drain leaves, by index.
func (r *millionRun) liveGateways() []int {
	var out []int
	for i := range r.gateways {
		drained := false
		for _, d := range r.l.Drained {
			drained = drained || d == i
		}
		if !drained {
			out = append(out, i)
		}
	}
	return out
}

func (r *millionRun) startLoadgens() error {
	var wsURLs []string
	for _, g := range r.gateways {
		wsURLs = append(wsURLs, g.url)
	}
	live := r.liveGateways()
	ramp := 1e6 // bounded by the handshakes in flight
	if r.o.connectRate > 0 {
		ramp = r.o.connectRate / float64(r.l.Loadgens)
	}
	for i := range r.l.Loadgens {
		api := r.gateways[live[i%len(live)]].url
		name := fmt.Sprintf("loadgen-%d", i+1)
		args := []string{"fanout", "-json", "-progress", "1s", "-control", "-all", "-reconnect",
			"-presence-every", itoa(r.l.PresenceEvery), "-url", api, "-ws-urls", strings.Join(wsURLs, ","),
			"-conns", itoa(r.l.Sockets), "-channels", itoa(r.l.Channels), "-shard", fmt.Sprintf("%d/%d", i, r.l.Loadgens),
			"-run", runName, "-rate", fmt.Sprint(r.o.fanoutRate), "-inflight", "4", "-duration", "12h",
			"-drain", loadgenDrain.String(), "-sources", r.l.sourcesFlag(i), "-max-pending", itoa(r.l.InflightPer),
			"-ramp", fmt.Sprint(ramp), "-connect-timeout", "60s", "-pollers", "1",
			// Closing a million at once, on two cores, takes a while; the
			// counts are settled before.
			"-close-grace", "30s"}
		c, err := start(childSpec{name: name, kind: kindLoadgen, bin: filepath.Join(r.tmp, "bin", "loadgen"), dir: r.tmp,
			args: args, env: append([]string{"REVERB_APP_ID=" + appID, "REVERB_APP_KEY=" + appKey, "REVERB_APP_SECRET=" + secret}, r.goMaxProcs()...),
			stdout: filepath.Join(r.dir, name+".json"), stdin: true, progress: true}, r.logDir())
		if err != nil {
			return err
		}
		r.loadgens = append(r.loadgens, c)
	}
	return nil
}

// command sends every load generator a -control line.
func (r *millionRun) command(line string) {
	for _, c := range r.loadgens {
		if err := c.command(line); err != nil && !c.exited() {
			r.problem("%s: command %q: %v", c.name, line, err)
		}
	}
}

// sum adds up a field of the load generators' last progress lines.
func (r *millionRun) sum(field string) int64 {
	var n int64
	for _, c := range r.loadgens {
		n += c.count(field)
	}
	return n
}

// setPhase ends the phase running and starts the next ("" for none), with
// a sample at the boundary, so that even a phase shorter than a second
// has a first and a last sample.
func (r *millionRun) setPhase(name string) {
	r.mu.Lock()
	t := time.Since(r.start).Seconds()
	if n := len(r.phases); n > 0 && r.phases[n-1].End == 0 {
		r.phases[n-1].End = t
	}
	r.phase = name
	if name != "" {
		r.phases = append(r.phases, PhaseSpan{Name: name, Start: t})
	}
	r.mu.Unlock()
	smp := r.take()
	smp.T = t // the boundary, to which the sample is a few milliseconds late
	r.record(smp)
}

// take samples the run now.
func (r *millionRun) take() Sample {
	r.mu.Lock()
	phase, start := r.phase, r.start
	r.mu.Unlock()
	now := time.Now()
	s := Sample{Phase: phase, Procs: map[string]Group{}, at: now, MachineBusy: machine.Busy(), Kernel: readKernel()}
	if !start.IsZero() {
		s.T = now.Sub(start).Seconds()
	}
	all := []*child{r.nats}
	all = append(all, r.workers...)
	for _, g := range r.gateways {
		all = append(all, g.child)
	}
	all = append(all, r.loadgens...)
	r.mu.Lock()
	for _, c := range all {
		if c == nil {
			continue
		}
		g := s.Procs[c.kind]
		if cpu, rss, ok := procStat(c.pid()); ok && !c.exited() {
			r.lastCPU[c.pid()] = cpu
			g.RSS += rss
			g.Alive++
		}
		g.CPU += r.lastCPU[c.pid()]
		s.Procs[c.kind] = g
	}
	r.mu.Unlock()
	if cpu, rss, ok := procStat(os.Getpid()); ok {
		s.Procs[kindHarness] = Group{CPU: cpu, RSS: rss, Alive: 1}
	}
	s.Attempted, s.Subscribed, s.Failed = r.sum("attempted"), r.sum("subscribed"), r.sum("failed")
	s.Dropped, s.Reconnects, s.Deliveries = r.sum("dropped"), r.sum("reconnects"), r.sum("deliveries")
	s.AllDeliveries, s.EventsSent = r.sum("all_deliveries"), r.sum("events_sent")
	if r.js != nil {
		s.KV = map[string]KVCount{}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, b := range buckets {
			kc := KVCount{Attempts: r.attempts[b].Load()}
			if st, err := r.js.Stream(ctx, "KV_"+b); err == nil {
				if info, err := st.Info(ctx); err == nil {
					kc.Stored = info.State.LastSeq
				}
			}
			s.KV[b] = kc
		}
		s.JSAPI = JSAPICount{Requests: r.apiRequests.Load(), KVReads: r.kvReads.Load()}
	}
	return s
}

func (r *millionRun) record(s Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, s)
	b, _ := json.Marshal(s)
	_, _ = r.sampleW.Write(append(b, '\n'))
}

// sampleEvery records a sample every second until ctx ends, and logs one
// every ten.
func (r *millionRun) sampleEvery(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := r.take()
		r.record(s)
		if i%10 == 0 {
			r.logf("t=%4.0fs %-10s subscribed %d, failed %d, reconnects %d, deliveries %d (all channel %d); RSS gateways %.0f MiB, load generators %.0f MiB, nats %.0f MiB; slab %.0f MiB",
				s.T, s.Phase, s.Subscribed, s.Failed, s.Reconnects, s.Deliveries, s.AllDeliveries,
				mib(s.Procs[kindGateway].RSS), mib(s.Procs[kindLoadgen].RSS), mib(s.Procs[kindNATS].RSS), mib(s.Kernel.Slab))
		}
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// teardown stops everything the run started, load generators first, and
// puts back the kernel settings.
func (r *millionRun) teardown() {
	for _, c := range r.loadgens {
		if c.in != nil {
			_ = c.in.Close()
		}
	}
	var wg sync.WaitGroup
	stopAll := func(cs []*child) {
		for _, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if c.stop(stopGrace) {
					r.logf("had to SIGKILL %s", c.name)
				}
			}()
		}
		wg.Wait()
	}
	// The load generators end by themselves once their input is closed.
	for _, c := range r.loadgens {
		c.wait(context.Background(), loadgenDrain+30*time.Second)
	}
	stopAll(r.loadgens)
	if r.nc != nil {
		r.nc.Close()
	}
	var gws []*child
	for _, g := range r.gateways {
		gws = append(gws, g.child)
	}
	stopAll(gws)
	stopAll(r.workers)
	if r.nats != nil {
		stopAll([]*child{r.nats})
	}
	for _, err := range restoreSysctls(r.restore) {
		r.logf("%v", err)
	}
	r.restore = nil
	if r.sampleW != nil {
		_ = r.sampleW.Close()
	}
	if r.tmp != "" && !r.o.keep {
		_ = os.RemoveAll(r.tmp)
	}
}

// scrapeConnections is a gateway's resound_connections.
func scrapeConnections(ctx context.Context, g *gatewayProc) (float64, error) {
	m, err := attack.Scrape(ctx, g.ops)
	if err != nil {
		return 0, err
	}
	return m.Sum("resound_connections"), nil
}

// broadcaster triggers the all channel through a gateway the drain keeps.
func (r *millionRun) broadcaster() (*loadgen.Broadcaster, error) {
	return loadgen.NewBroadcaster(r.gateways[r.liveGateways()[0]].url, appID, appKey, secret, loadgen.AllChannel(runName))
}

// goMaxProcs is the environment that sets a gateway's or load
// generator's GOMAXPROCS, if the run sets it. The run has many more such
// processes than cores; each needs one P to do its work, and a second
// one only adds a thread that wakes, finds nothing and sleeps (Go's
// scheduler starts a spinning thread when it has an idle P), to a run
// queue already hundreds deep.
func (r *millionRun) goMaxProcs() []string {
	if r.o.gomaxprocs <= 0 {
		return nil
	}
	return []string{"GOMAXPROCS=" + itoa(r.o.gomaxprocs)}
}

// natsNice is nats-server's nice value in the run (see where it starts).
const natsNice = -10

// threadNices lists the distinct nice values of a process's threads.
func threadNices(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, _ := os.ReadDir(dir)
	var nices []int
	for _, t := range tasks {
		// From the state (field 3), nice is field 19.
		f, ok := statFields(dir + "/" + t.Name() + "/stat")
		if !ok || len(f) < 17 {
			continue
		}
		if n, err := strconv.Atoi(f[16]); err == nil {
			nices = append(nices, n)
		}
	}
	slices.Sort(nices)
	return slices.Compact(nices)
}
