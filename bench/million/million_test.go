//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/loadgen"
)

func defaultOptions(t *testing.T) options {
	t.Helper()
	for _, k := range []string{"GATEWAYS", "PER_GATEWAY", "PER_LOADGEN", "DOCS", "BROADCASTS", "DRAIN_FRACTION"} {
		t.Setenv("MILLION_"+k, "")
	}
	o, err := parse(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// The default run is a million sockets that fit this machine: every
// process under its open-files limit before and after the drain, and the
// ports of every (source, gateway) pair plenty.
func TestDefaultLayout(t *testing.T) {
	o := defaultOptions(t)
	l, err := planLayout(o)
	if err != nil {
		t.Fatal(err)
	}
	if l.Sockets < 1_000_000 || l.Gateways != 60 || l.Channels != l.Sockets/10 || o.docs != "million" {
		t.Fatalf("layout %+v, docs %q", l, o.docs)
	}
	if l.maxShare() > o.perLoadgen || l.maxShare() > loadgen.DefaultMaxConnsPerProcess || l.Loadgens != 56 {
		t.Fatalf("%d load generators of up to %d sockets", l.Loadgens, l.maxShare())
	}
	if len(l.Drained) != 6 || l.perGatewayAfterDrain() > maxPerGateway {
		t.Fatalf("drained %v, then %d a gateway", l.Drained, l.perGatewayAfterDrain())
	}
	for i := 1; i < len(l.Drained); i++ {
		if l.Drained[i]-l.Drained[i-1] < 2 {
			t.Fatalf("drained neighbours: %v", l.Drained)
		}
	}
	if l.portsPerPair() > 28_000/4 {
		t.Fatalf("%d ports a pair", l.portsPerPair())
	}
	// Every load generator's sources are its own, and valid.
	seen := map[string]bool{}
	for i := range l.Loadgens {
		f := l.sourcesFlag(i)
		addrs, err := loadgen.ParseSources(f)
		if err != nil || len(addrs) != l.SourcesPer {
			t.Fatalf("load generator %d: %q: %v %v", i, f, addrs, err)
		}
		for _, a := range addrs {
			if seen[a.String()] || !a.IsLoopback() || a.String() == "127.0.0.1" {
				t.Fatalf("address %v of load generator %d", a, i)
			}
			seen[a.String()] = true
		}
	}
	// The plan a load generator makes of these flags holds its share.
	for _, i := range []int{0, l.Loadgens - 1} {
		cfg := loadgen.Config{Mode: loadgen.ModeFanout, Key: "k", AppID: "1", Secret: "s", Run: runName, Conns: l.Sockets,
			Channels: l.Channels, Shard: i, Shards: l.Loadgens, All: true, PresenceEvery: l.PresenceEvery, Duration: time.Hour}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("load generator %d: %v", i, err)
		}
	}
}

// The presence channels the check expects are those the load generators
// make presence channels (every n-th of each shard's), with the
// subscribers the plan puts on each.
func TestPresenceChannels(t *testing.T) {
	l := layout{Sockets: 75, Channels: 8, Loadgens: 2, PresenceEvery: 2}
	got := l.presenceChannels()
	if want := map[int]int{0: 10, 1: 10, 4: 9, 5: 9}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%v, want %v", got, want)
	}
	if loadgenChannel(4) != "lg-m-4" || len((layout{PresenceEvery: 0, Channels: 9}).presenceChannels()) != 0 {
		t.Fatal("names or none")
	}
}

func TestLayoutRefusals(t *testing.T) {
	o := defaultOptions(t)
	for name, change := range map[string]func(*options){
		"one gateway":        func(o *options) { o.gateways = 1 },
		"full after a drain": func(o *options) { o.perGateway = 19_000 },
		"drain everything":   func(o *options) { o.drainFraction = 0.99; o.gateways = 2 },
		"too many a loadgen": func(o *options) { o.perLoadgen = 25_000 },
	} {
		c := o
		change(&c)
		if _, err := planLayout(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, args := range [][]string{{"-broadcasts", "64"}, {"-sysctl", "yes"}, {"-drain-fraction", "1"}, {"extra"}} {
		if _, err := parse(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	small, err := parse([]string{"-gateways", "3", "-per-gateway", "5000"}, io.Discard)
	if err != nil || small.docs != "" {
		t.Fatalf("a small run writes docs? %q %v", small.docs, err)
	}
	l, err := planLayout(small)
	if err != nil || l.Loadgens != 1 || len(l.Drained) != 1 || l.Drained[0] != 1 {
		t.Fatalf("%+v %v", l, err)
	}
}

// Settings are raised only when short, and only with a working write;
// what was raised is put back.
func TestEnsureSysctls(t *testing.T) {
	sys := []Sysctl{{Name: "fs.file-max", Value: "2466290"}, {Name: "net.ipv4.tcp_mem", Value: "287913 383885 575826"}, {Name: "net.core.netdev_max_backlog", Value: "1000"}}
	l := layout{Sockets: 1_000_000}
	written := map[string]string{}
	write := func(name, v string) error { written[name] = v; return nil }
	restore, unmet := ensure(l.needs(), sys, write)
	if len(unmet) != 0 || len(restore) != 2 || restore[0].name != "net.ipv4.tcp_mem" || restore[0].old != "287913 383885 575826" ||
		restore[1].name != "net.core.netdev_max_backlog" || restore[1].old != "1000" {
		t.Fatalf("restore %v unmet %v", restore, unmet)
	}
	if written["net.ipv4.tcp_mem"] != "500000 1000000 1500000" || sys[1].Set != written["net.ipv4.tcp_mem"] ||
		written["net.core.netdev_max_backlog"] != "1000000" || len(written) != 2 {
		t.Fatalf("wrote %v; %+v", written, sys)
	}
	// A run this small needs nothing.
	sys = []Sysctl{{Name: "fs.file-max", Value: "2466290"}, {Name: "net.ipv4.tcp_mem", Value: "287913 383885 575826"}, {Name: "net.core.netdev_max_backlog", Value: "100000"}}
	if restore, unmet := ensure(layout{Sockets: 90_000}.needs(), sys, func(string, string) error { t.Fatal("wrote"); return nil }); len(restore)+len(unmet) != 0 {
		t.Fatal(restore, unmet)
	}
	// Not writable: reported, nothing to restore.
	sys = []Sysctl{{Name: "fs.file-max", Value: "100"}, {Name: "net.ipv4.tcp_mem", Value: "1 2 3"}, {Name: "net.core.netdev_max_backlog", Value: "1000"}}
	restore, unmet = ensure(l.needs(), sys, func(string, string) error { return errors.New("read-only") })
	if len(restore) != 0 || len(unmet) != 3 || !strings.Contains(sys[0].Note, "read-only") {
		t.Fatalf("restore %v unmet %v notes %+v", restore, unmet, sys)
	}
}

func sample(t, cpuGW, busy float64, phase string, subscribed int64, kvAttempts, kvStored uint64) Sample {
	return Sample{T: t, Phase: phase, Subscribed: subscribed, MachineBusy: busy,
		Procs:  map[string]Group{kindGateway: {CPU: cpuGW, RSS: 20<<20 + subscribed*3000}, kindLoadgen: {RSS: subscribed * 1000}},
		Kernel: Kernel{Slab: 600<<20 + subscribed*10_000},
		KV:     map[string]KVCount{"RESOUND_COUNTS": {Attempts: kvAttempts, Stored: kvStored}}}
}

// The figures of the summary, from samples: phases' CPU and what limited
// them, the shared-state writes, memory per socket, the broadcasts.
func TestResultFigures(t *testing.T) {
	spans := []PhaseSpan{{Name: phaseConnect, Start: 0, End: 10}, {Name: phaseHold, Start: 10, End: 20}}
	samples := []Sample{
		sample(0, 0, 0, phaseConnect, 0, 0, 0),
		sample(5, 9, 10, phaseConnect, 60_000, 500, 100),
		sample(10, 18, 19.8, phaseHold, 100_000, 1000, 200),
		sample(20, 18.5, 21, phaseHold, 100_000, 1000, 200),
	}
	l := layout{InflightPer: 10}
	c := phaseStats(spans[0], samples, 2, l)
	if c.CPU[kindGateway] != 18 || c.BusyPct != 99 || !strings.HasPrefix(c.Limit, "CPU: the 2 cores were 99% busy (gateways 180%") {
		t.Fatalf("connect %+v", c)
	}
	h := phaseStats(spans[1], samples, 2, l)
	if h.BusyPct != 6 || !strings.HasPrefix(h.Limit, "not CPU") {
		t.Fatalf("hold %+v", h)
	}
	if p := peakRate(inSpan(samples, spans, phaseConnect)); p != 12_000 {
		t.Fatalf("peak %v", p)
	}
	kv, _ := kvByPhase(spans, samples)
	if k := kv[phaseConnect]["RESOUND_COUNTS"]; k.Attempts != 1000 || k.Stored != 200 || k.Conflicts != 800 {
		t.Fatalf("kv %+v", kv)
	}
	m := memory(samples[0], samples[3], samples)
	if m.Sockets != 100_000 || m.Components[0].PerSocket != 3000 || m.Components[1].PerSocket != 1000 || m.PerSocket != 14_000 {
		t.Fatalf("memory %+v", m)
	}

	at := time.UnixMilli(1_000_000)
	lg := &loadgen.Summary{All: &loadgen.AllStats{Subscribed: 100, Events: []loadgen.AllEvent{
		{Seq: 1, Deliveries: 100, LastRecvMs: 1_000_500, LastLatencyMs: 500},
		{Seq: 2, Deliveries: 99, LastRecvMs: 1_001_000, LastLatencyMs: 900},
	}}}
	b := broadcastResult([]sent{{seq: 1, at: at}, {seq: 2, at: at.Add(100 * time.Millisecond)}}, lg, true)
	if b.Missing != 1 || b.Events[0].PerSec != 200 || b.Events[1].Missing != 1 || !b.Events[1].AfterDrain || b.Events[0].AfterDrain {
		t.Fatalf("broadcasts %+v", b)
	}
}

// The summary renders as Markdown and as well-formed SVG plots with data.
func TestOutputs(t *testing.T) {
	res := &Result{Layout: layout{Sockets: 100_000, Gateways: 6, Loadgens: 6},
		Phases:  []PhaseStats{{PhaseSpan: PhaseSpan{Name: phaseConnect, End: 10}}, {PhaseSpan: PhaseSpan{Name: phaseHold, Start: 10, End: 20}}},
		Memory:  &MemoryResult{Sockets: 100_000, Components: []MemoryComponent{{Name: "gateways (RSS)", PerSocket: 3000}}},
		samples: []Sample{sample(0, 0, 0, phaseConnect, 0, 0, 0), sample(5, 9, 10, phaseConnect, 60_000, 0, 0), sample(10, 18, 19, phaseHold, 100_000, 0, 0)},
	}
	md := res.markdown()
	for _, want := range []string{"100000 sockets", "| connect |", "| gateways (RSS) |", "3000"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	charts := res.charts()
	for _, name := range []string{"connect", "memory", "cpu"} {
		svg := charts[name]
		if err := xml.Unmarshal(svg, new(struct{})); err != nil || !bytes.Contains(svg, []byte("<polyline")) {
			t.Errorf("%s: %v\n%s", name, err, svg)
		}
	}
}

// A child's progress lines are read, its commands reach it, and stop ends
// it with SIGKILL when SIGTERM does not.
func TestChild(t *testing.T) {
	dir := t.TempDir()
	c, err := start(childSpec{name: "echo", kind: kindLoadgen, bin: "/bin/sh", dir: dir, stdin: true, progress: true,
		args: []string{"-c", `trap '' TERM; echo '{"message":"progress","subscribed":7}' >&2; read line; echo "got $line" >&2; sleep 60`}}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitUntil(context.Background(), 10*time.Second, 10*time.Millisecond, "progress", func() bool { return c.count("subscribed") == 7 }); err != nil {
		t.Fatal(err)
	}
	if err := c.command("send"); err != nil {
		t.Fatal(err)
	}
	if err := waitUntil(context.Background(), 10*time.Second, 10*time.Millisecond, "the command", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "echo.log"))
		return strings.Contains(string(b), "got send")
	}); err != nil {
		t.Fatal(err)
	}
	if !c.stop(200*time.Millisecond) || !c.exited() {
		t.Fatal("a child that ignores SIGTERM was not killed")
	}
}

// threadNices reads this test's own threads: all at the nice value the
// process was started with.
func TestThreadNices(t *testing.T) {
	own, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		t.Skip(err)
	}
	// Linux's getpriority answers 20 - nice.
	want := 20 - own
	if got := threadNices(os.Getpid()); !slices.Equal(got, []int{want}) {
		t.Fatalf("threadNices = %v, want [%d]", got, want)
	}
}
