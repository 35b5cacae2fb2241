package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/machine"
	"github.com/resoundhq/resound/internal/queue"
)

// Phases of a run, as each sample records it.
const (
	phaseBaseline = "baseline" // the cluster is up, no load yet
	phaseLoad     = "load"     // everything runs
	phaseSettle   = "settle"   // the load stopped; waiting for the gateways to let go
)

// ProcStats is what the kernel says about one process.
type ProcStats struct {
	RSS int64 `json:"rss"` // bytes
	FDs int   `json:"fds"`
	// CPU is the process's user + system time so far, in seconds.
	CPU float64 `json:"cpu_s"`
	Err string  `json:"err,omitempty"`
}

// GatewayStats is one gateway's sample: its process and its /metrics.
type GatewayStats struct {
	ProcStats
	HeapInuse     float64 `json:"heap_inuse"` // go_memstats_heap_inuse_bytes
	Goroutines    float64 `json:"goroutines"`
	Connections   float64 `json:"connections"` // resound_connections
	Subscriptions float64 `json:"subscriptions"`
	Channels      float64 `json:"channels"`
	// Series counts the lines of /metrics: labels must take bounded
	// values, so this must not grow with what clients send.
	Series       int     `json:"series"`
	LimitHits    float64 `json:"limit_hits"` // resound_limit_hits_total, all limits
	Panics       float64 `json:"panics"`
	StateRetries float64 `json:"state_retries"`
	ScrapeErr    string  `json:"scrape_err,omitempty"`
}

// StreamStats is a JetStream stream's size.
type StreamStats struct {
	Msgs  uint64 `json:"msgs"`
	Bytes uint64 `json:"bytes"`
	Err   string `json:"err,omitempty"`
}

// Sample is everything measured at one moment.
type Sample struct {
	// T is seconds since the load started (negative before).
	T        float64        `json:"t_s"`
	Time     string         `json:"time"`
	Phase    string         `json:"phase"`
	Gateways []GatewayStats `json:"gateways"`
	Worker   GatewayStats   `json:"worker"`
	NATS     ProcStats      `json:"nats"`
	// Load is the soak process itself (bystander, presence driver,
	// attacks) and the loadgen processes, for the CPU they cost.
	Soak    ProcStats `json:"soak"`
	Loadgen ProcStats `json:"loadgen"`
	// Streams maps the buckets (by bucket name) and streams to their size.
	Streams map[string]StreamStats `json:"streams"`
	// MachineBusy is the whole machine's CPU busy time so far, in
	// seconds over all cores, from /proc/stat: on a shared box it tells
	// how much else ran.
	MachineBusy float64 `json:"machine_busy_s"`

	at time.Time
}

// The buckets and streams sampled, in the order of the CSV and the plot.
var streamNames = []string{
	cluster.BucketPresence, cluster.BucketUsers, cluster.BucketCounts, cluster.BucketCache,
	queue.StreamName, queue.DeadLetterStream,
}

// streamOf is the JetStream stream behind a bucket or stream name.
func streamOf(name string) string {
	if strings.HasPrefix(name, "RESOUND_") && name != queue.StreamName && name != queue.DeadLetterStream {
		return "KV_" + name
	}
	return name
}

// sampler takes samples of the cluster.
type sampler struct {
	c       *deployment
	js      jetstream.JetStream
	start   time.Time // the load's start; zero before
	mu      sync.Mutex
	loadgen []*proc // the loadgen processes running now
	// loadgenCPU keeps the CPU of loadgen processes that exited, so
	// that the sum stays monotonic.
	loadgenCPU map[int]float64
}

func (s *sampler) setStart(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.start = t
}

func (s *sampler) addLoadgen(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadgen = append(s.loadgen, p)
}

func (s *sampler) take(ctx context.Context, phase string) Sample {
	now := time.Now()
	s.mu.Lock()
	start := s.start
	lgs := append([]*proc(nil), s.loadgen...)
	s.mu.Unlock()
	var t float64
	if !start.IsZero() {
		t = now.Sub(start).Seconds()
	}
	out := Sample{T: t, Time: now.UTC().Format(time.RFC3339), Phase: phase, Streams: map[string]StreamStats{}, at: now}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, g := range s.c.gateways {
		out.Gateways = append(out.Gateways, scrapeProcess(ctx, g.pid(), g.opsAddr))
	}
	out.Worker = scrapeProcess(ctx, s.c.worker.pid(), s.c.workerMx)
	out.NATS = readProc(s.c.nats.pid())
	out.Soak = readProc(os.Getpid())
	out.Loadgen = s.loadgenStats(lgs)
	for _, name := range streamNames {
		out.Streams[name] = streamStats(ctx, s.js, streamOf(name))
	}
	out.MachineBusy = machine.Busy()
	return out
}

// loadgenStats sums the loadgen processes' CPU (and RSS of those alive).
func (s *sampler) loadgenStats(lgs []*proc) ProcStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loadgenCPU == nil {
		s.loadgenCPU = map[int]float64{}
	}
	var out ProcStats
	for _, p := range lgs {
		if !p.exited() {
			ps := readProc(p.pid())
			if ps.Err == "" {
				s.loadgenCPU[p.pid()] = ps.CPU
				out.RSS += ps.RSS
				out.FDs += ps.FDs
			}
		}
	}
	for _, v := range s.loadgenCPU {
		out.CPU += v
	}
	return out
}

func scrapeProcess(ctx context.Context, pid int, metricsAddr string) GatewayStats {
	g := GatewayStats{ProcStats: readProc(pid)}
	m, err := attack.Scrape(ctx, metricsAddr)
	if err != nil {
		g.ScrapeErr = err.Error()
		return g
	}
	g.HeapInuse = m.Sum("go_memstats_heap_inuse_bytes")
	g.Goroutines = m.Sum("go_goroutines")
	g.Connections = m.Sum("resound_connections")
	g.Subscriptions = m.Sum("resound_subscriptions")
	g.Channels = m.Sum("resound_channels")
	g.Series = m.Series("")
	g.LimitHits = m.Sum("resound_limit_hits_total")
	g.Panics = m.Sum("resound_panics_total")
	g.StateRetries = m.Sum("resound_state_retries_total")
	return g
}

// readProc reads RSS and descriptors (attack.ReadProc) and CPU time.
func readProc(pid int) ProcStats {
	p, err := attack.ReadProc(pid)
	if err != nil {
		return ProcStats{Err: err.Error()}
	}
	cpu, err := procCPU(pid)
	out := ProcStats{RSS: p.RSS, FDs: p.FDs, CPU: cpu}
	if err != nil {
		out.Err = err.Error()
	}
	return out
}

// clockTick is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture Go runs on (the kernel fixes it for user space).
const clockTick = 100

// procCPU reads utime + stime from /proc/<pid>/stat, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after its closing one.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After ")": state(3) ... utime(14) stime(15), so indexes 11 and 12.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad times in /proc/%d/stat", pid)
	}
	return (u + st) / clockTick, nil
}

func streamStats(ctx context.Context, js jetstream.JetStream, name string) StreamStats {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return StreamStats{Err: err.Error()}
	}
	info, err := st.Info(ctx)
	if err != nil {
		return StreamStats{Err: err.Error()}
	}
	msgs := info.State.Msgs
	if name == queue.StreamName {
		// Jobs only: the workers keep an anchor in the job stream, one or,
		// for a moment, two (internal/queue/anchor.go).
		if msgs, err = queue.Jobs(ctx, st); err != nil {
			return StreamStats{Err: err.Error()}
		}
	}
	return StreamStats{Msgs: msgs, Bytes: info.State.Bytes}
}
