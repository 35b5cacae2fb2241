package main

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/loadgen"

	"github.com/resoundhq/resound/internal/machine"
)

func TestWindows(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		d, sample       time.Duration
		cycleEnd, cycle float64
		from, width     time.Duration
		atCycle         bool
	}{
		// An hour: minute 10, windows of a whole cycle of attacks.
		{time.Hour, 10 * time.Second, 90, 80, 10 * time.Minute, 80 * time.Second, false},
		{time.Hour, 10 * time.Second, 90, 40, 10 * time.Minute, time.Minute, false},
		{time.Hour, 10 * time.Second, nan, nan, 10 * time.Minute, time.Minute, false},
		{2 * time.Hour, 10 * time.Second, 90, 80, 10 * time.Minute, 80 * time.Second, false},
		// Three minutes: duration/6, or the end of the first cycle when
		// it leaves two windows; windows of six samples.
		{3 * time.Minute, 5 * time.Second, nan, nan, 30 * time.Second, 30 * time.Second, false},
		{3 * time.Minute, 5 * time.Second, 77, 76, 77 * time.Second, 30 * time.Second, true},
		{3 * time.Minute, 5 * time.Second, 130, 129, 30 * time.Second, 30 * time.Second, false},
	} {
		from, width, why := windows(c.d, c.sample, c.cycleEnd, c.cycle)
		if from != c.from || width != c.width || strings.Contains(why, "cycle") != c.atCycle {
			t.Errorf("windows(%v, %v, %v, %v) = %v, %v, %q; want %v, %v (at the cycle's end %v)", c.d, c.sample, c.cycleEnd, c.cycle, from, width, why, c.from, c.width, c.atCycle)
		}
	}
}

func gw(rss int64, goroutines float64, fds int, conns float64) GatewayStats {
	return GatewayStats{ProcStats: ProcStats{RSS: rss, FDs: fds}, Goroutines: goroutines, Connections: conns, Series: 70}
}

func streams(msgs uint64) map[string]StreamStats {
	out := map[string]StreamStats{}
	for _, n := range streamNames {
		out[n] = StreamStats{Msgs: msgs}
	}
	return out
}

func TestSettleCheck(t *testing.T) {
	base := Sample{Gateways: []GatewayStats{gw(20<<20, 94, 18, 0), gw(20<<20, 94, 18, 0)}, Streams: streams(0)}
	if ok, why := settleCheck(base, base); !ok {
		t.Errorf("the baseline itself is not settled: %s", why)
	}
	cur := Sample{Gateways: []GatewayStats{gw(30<<20, 94+settleGoroutines, 18+settleFDs, 0), gw(30<<20, 94, 18, 0)}, Streams: streams(0)}
	if ok, why := settleCheck(base, cur); !ok {
		t.Errorf("within the slack, and RSS is not judged here: %s", why)
	}
	cur = Sample{Gateways: []GatewayStats{gw(20<<20, 94+settleGoroutines+1, 18, 1), gw(20<<20, 94, 18+settleFDs+1, 0)}, Streams: streams(0)}
	cur.Streams[cluster.BucketPresence] = StreamStats{Msgs: 3}
	ok, why := settleCheck(base, cur)
	for _, want := range []string{"gateway-1 holds 1 connections", "gateway-1 has 105 goroutines", "gateway-2 has 21 descriptors", "RESOUND_PRESENCE holds 3 messages"} {
		if ok || !strings.Contains(why, want) {
			t.Errorf("settleCheck = %v, %q; want it to name %q", ok, why, want)
		}
	}
}

// run makes the samples of a synthetic run of d with a sample every
// step: f gives each gateway's stats at t seconds.
func synthetic(d, step time.Duration, f func(t float64) GatewayStats) []Sample {
	base := f(0)
	base.Connections = 0
	out := []Sample{{T: -2, Phase: phaseBaseline, Gateways: []GatewayStats{base, base}, Streams: streams(0)}}
	for t := step; t <= d; t += step {
		g := f(t.Seconds())
		out = append(out, Sample{T: t.Seconds(), Phase: phaseLoad, Gateways: []GatewayStats{g, g}, Streams: streams(5)})
	}
	out = append(out, Sample{T: d.Seconds() + 60, Phase: phaseSettle, Gateways: []GatewayStats{base, base}, Streams: streams(0)})
	return out
}

func exactLoads() loads {
	return loads{
		Fanout:    &loadgen.Summary{Fanout: &loadgen.FanoutStats{EventsSent: 10, Expected: 100, Deliveries: 100}},
		Churn:     []*loadgen.Summary{{Churn: &loadgen.ChurnStats{Completed: 5}}},
		Presence:  PresenceResult{Joins: 3, Problems: map[string]int{}},
		Bystander: BystanderReport{Result: "bystander: 10 events"},
	}
}

func checks(r *report) map[string]Check {
	out := map[string]Check{}
	for _, c := range r.Checks {
		out[c.Name] = c
	}
	return out
}

func TestEvaluate(t *testing.T) {
	o := defaults()
	o.sample = 10 * time.Second
	attacks := []AttackRecord{{Round: 0, Name: "a", T: 1}, {Round: 1, Name: "a", T: 100}}
	cases := []attackCase{{name: "a", bound: "b"}}
	flat := func(t float64) GatewayStats {
		// Attacks come and go: every minute, one sample holds 200 more
		// goroutines and descriptors; the floor stays.
		extra := 0.0
		if int(t)%60 == 30 {
			extra = 200
		}
		return gw(30<<20, 100+extra, 200+int(extra), 180)
	}
	r := evaluate(evalInput{o: o, samples: synthetic(time.Hour, 10*time.Second, flat), attacks: attacks, cases: cases, loads: exactLoads(),
		loadSeconds: 3600, settled: true})
	if !r.Pass {
		t.Errorf("a flat run fails: %+v", r.Checks)
	}
	if r.FromS != 600 || r.WindowS != 99 || r.CycleS != 99 {
		t.Errorf("judged from %v s with windows of %v s, cycle %v s; want 600, 99, 99", r.FromS, r.WindowS, r.CycleS)
	}

	growing := func(t float64) GatewayStats {
		g := flat(t)
		g.RSS = int64(float64(30<<20) * (1 + 0.1*t/3600)) // +10% over the hour
		g.Goroutines += math.Floor(t / 60)                // one a minute
		return g
	}
	r = evaluate(evalInput{o: o, samples: synthetic(time.Hour, 10*time.Second, growing), attacks: attacks, cases: cases, loads: exactLoads(),
		loadSeconds: 3600, settled: true})
	c := checks(r)
	if r.Pass || c["gateway-1 RSS"].Pass || c["gateway-1 goroutines"].Pass || !c["gateway-1 descriptors"].Pass {
		t.Errorf("a growing run: pass %v, checks %+v", r.Pass, r.Checks)
	}

	ld := exactLoads()
	ld.Fanout.Fanout.Missing = 1
	ld.Bystander.Err = "client 0: missing 1"
	ld.Presence.Problems["member list"] = 1
	r = evaluate(evalInput{o: o, samples: synthetic(time.Hour, 10*time.Second, flat), attacks: append(attacks, AttackRecord{Round: 1, Name: "a", T: 200, Problems: []string{"x"}}),
		cases: cases, loads: ld, loadSeconds: 3600, settled: false, settleNote: "still: x", exited: []string{"worker (exit code 2)"}})
	c = checks(r)
	for _, name := range []string{"fan-out exact", "bystander exact", "presence, sign-in, client events", "every attack met its bound", "back to the start after the load", "processes alive, no panic"} {
		if c[name].Pass {
			t.Errorf("check %q passed: %+v", name, c[name])
		}
	}
	if c["gateway-1 RSS"].Pass != true || r.Pass {
		t.Errorf("pass %v with checks %+v", r.Pass, r.Checks)
	}
}

func TestReplaceSection(t *testing.T) {
	doc := "# Security\n\nby hand\n\n## Soak\n\n" + docsBegin + "\nold\n" + docsEnd + "\n\nafter\n"
	got, err := replaceSection(doc, "\nnew numbers\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "# Security\n\nby hand\n\n## Soak\n\n" + docsBegin + "\n\nnew numbers\n\n" + docsEnd + "\n\nafter\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if again, err := replaceSection(got, "new numbers"); err != nil || again != got {
		t.Errorf("replacing again changed the document (err %v):\n%s", err, again)
	}
	for name, bad := range map[string]string{
		"no markers": "# Security\n",
		"no end":     docsBegin + "\n",
		"two begins": docsBegin + "\n" + docsBegin + "\n" + docsEnd + "\n",
		"reversed":   docsEnd + "\n" + docsBegin + "\n",
	} {
		if _, err := replaceSection(bad, "x"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestProcReading(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	p := readProc(os.Getpid())
	if p.Err != "" || p.RSS <= 0 || p.FDs <= 0 || p.CPU < 0 {
		t.Errorf("readProc(self) = %+v", p)
	}
	if machine.Busy() <= 0 {
		t.Error("machine.Busy() is not positive")
	}
}

func TestOutputs(t *testing.T) {
	o := defaults()
	o.duration, o.sample = 3*time.Minute, 5*time.Second
	samples := synthetic(3*time.Minute, 5*time.Second, func(t float64) GatewayStats { return gw(30<<20, 100, 200, 180) })
	r := evaluate(evalInput{o: o, samples: samples, cases: []attackCase{{name: "a", bound: "b|c"}}, attacks: []AttackRecord{{Name: "a", Detail: "fine"}},
		loads: exactLoads(), loadSeconds: 180, settled: true, settleNote: "after 60 s"})
	r.Started, r.Results = "2026-01-02T03:04:05Z", "bench/results/soak-x"

	path := filepath.Join(t.TempDir(), "samples.csv")
	if err := writeCSV(path, samples); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(samples)+1 || recs[0][0] != "t_s" || !strings.Contains(strings.Join(recs[0], ","), "g2_rss_mib") {
		t.Errorf("%d CSV records, header %q", len(recs), recs[0])
	}

	for name, svg := range charts(r) {
		d := xml.NewDecoder(bytes.NewReader(svg))
		for {
			_, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s is not well-formed: %v", name, err)
			}
		}
	}
	md := r.markdown("img")
	for _, want := range []string{"**PASS**", "`SOAK_DURATION=3m go tool task soak`", "#### Verdict: PASS", "| fan-out exact | PASS |",
		"(img/soak-memory.svg)", `b\|c`, "| gateway-1 RSS (MiB), median | 30.0 | 30.0 | 30.0 | 30.0 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if got := command(options{duration: 2 * time.Hour, sample: 7 * time.Second, panics: true, fanoutRate: 100}); got !=
		"SOAK_DURATION=2h SOAK_SAMPLE=7s SOAK_FANOUT_RATE=100 SOAK_FANOUT_CONNS=0 SOAK_FANOUT_CHANNELS=0 SOAK_CHURN_RATE=0 SOAK_PRESENCE=0 SOAK_BYSTANDER_RATE=0 SOAK_ATTACK_GAP=0s SOAK_PANICS=1 go tool task soak" {
		t.Errorf("command: %s", got)
	}
	d := defaults()
	d.sample = autoSample(d.duration)
	if got := command(d); got != "go tool task soak" {
		t.Errorf("command of the defaults: %s", got)
	}
	if !strings.Contains(r.console(), "soak: PASS") {
		t.Errorf("console: %s", r.console())
	}
}
