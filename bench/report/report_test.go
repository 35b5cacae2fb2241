//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/machine"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want Stat
	}{
		{nil, Stat{}},
		{[]float64{4}, Stat{N: 1, Median: 4, Min: 4, Max: 4}},
		{[]float64{9, 1, 5}, Stat{N: 3, Median: 5, Min: 1, Max: 9}},
		{[]float64{8, 2, 6, 4}, Stat{N: 4, Median: 5, Min: 2, Max: 8}},
	} {
		in := slices.Clone(c.in)
		if got := Summarize(in); got != c.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("Summarize reordered its input: %v", in)
		}
	}
}

func TestRatio(t *testing.T) {
	a, b := Summarize([]float64{3}), Summarize([]float64{2})
	if got := Ratio(a, b); got != 1.5 {
		t.Errorf("Ratio = %v, want 1.5", got)
	}
	for _, c := range [][2]Stat{{a, {}}, {{}, b}, {a, Summarize([]float64{0})}} {
		if got := Ratio(c[0], c[1]); !math.IsNaN(got) {
			t.Errorf("Ratio(%+v, %+v) = %v, want NaN", c[0], c[1], got)
		}
	}
	if ratio(1.5) != "×1.5" || ratio(2) != "×2" || ratio(math.NaN()) != "—" {
		t.Errorf("ratio formats: %q %q %q", ratio(1.5), ratio(2), ratio(math.NaN()))
	}
}

func TestNumberFormats(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 19000: "19,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0.1234: "0.123", 8.04: "8.04", 16.44: "16.4", 625312: "625k", 8000: "8,000", 2.2e6: "2.20M"} {
		if got := compact(in); got != want {
			t.Errorf("compact(%v) = %q, want %q", in, got, want)
		}
	}
}

// svgDoc parses an SVG and returns its elements' names and attributes and
// its text, failing the test if it is not well-formed XML.
func svgDoc(t *testing.T, b []byte) (elems []xml.StartElement, texts []string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		switch v := tok.(type) {
		case xml.StartElement:
			elems = append(elems, v.Copy())
		case xml.CharData:
			if s := strings.TrimSpace(string(v)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	if len(elems) == 0 || elems[0].Name.Local != "svg" {
		t.Fatalf("root element is not svg: %s", b)
	}
	return elems, texts
}

func attr(e xml.StartElement, name string) string {
	for _, a := range e.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func TestReplaceGenerated(t *testing.T) {
	doc := "# Benchmarks\n\nby hand, before\n\n" + beginPrefix + " (an older wording) -->\nold numbers\n" + endMarker + "\n\n## By hand, after\n"
	got, err := ReplaceGenerated(doc, "\n## New\n\nnew numbers\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "# Benchmarks\n\nby hand, before\n\n" + beginMarker + "\n\n## New\n\nnew numbers\n\n" + endMarker + "\n\n## By hand, after\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	again, err := ReplaceGenerated(got, "## New\n\nnew numbers")
	if err != nil || again != got {
		t.Errorf("replacing again changed the document (err %v):\n%s", err, again)
	}
	for name, bad := range map[string]string{
		"no markers":   "# Benchmarks\n",
		"no end":       beginMarker + "\nx\n",
		"two begins":   beginMarker + "\n" + beginMarker + "\n" + endMarker + "\n",
		"end first":    endMarker + "\n" + beginMarker + "\n",
		"begin inline": "text " + beginPrefix + " -->" + endMarker + "\n",
	} {
		if _, err := ReplaceGenerated(bad, "x"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestWorkloadArgs(t *testing.T) {
	ws := Workloads(false)
	idle := ws[0]
	if got, want := idle.Command(), "loadgen idle -url $URL -conns 5000 -channels 100 -duration 15s -pid $SERVER_PID -sources 127.0.0.2-127.0.0.9"; got != want {
		t.Errorf("idle command\n%s\nwant\n%s", got, want)
	}
	fan := ws[3]
	if got, want := strings.Join(fan.Args("http://127.0.0.1:1", 7, "pusher"), " "), "fanout -url http://127.0.0.1:1 -conns 1000 -channels 1 -rate 0 -duration 10s -drain 60s"; got != want {
		t.Errorf("fanout args\n%s\nwant\n%s", got, want)
	}
	if got := fan.Args("u", 7, "centrifugo"); !slices.Equal(got[:3], []string{"fanout", "-protocol", "centrifugo"}) {
		t.Errorf("centrifugo args %q", got)
	}
	var churn, steady, storm Workload
	for _, w := range ws {
		switch w.ID {
		case "churn":
			churn = w
		case "steady-15k":
			steady = w
		case "storm-15k":
			storm = w
		}
	}
	// Issue 13's pair: the same 15,000 connections, 64 handshakes in
	// flight at loadgen's default pace, or 1,000 with no pace.
	if got, want := steady.Command(), "loadgen idle -url $URL -conns 15000 -channels 100 -duration 15s -max-pending 64 -pid $SERVER_PID -sources 127.0.0.2-127.0.0.9"; got != want {
		t.Errorf("steady command\n%s\nwant\n%s", got, want)
	}
	if got, want := storm.Command(), "loadgen idle -url $URL -conns 15000 -channels 100 -duration 15s -max-pending 1000 -ramp 1000000 -pid $SERVER_PID -sources 127.0.0.2-127.0.0.9"; got != want {
		t.Errorf("storm command\n%s\nwant\n%s", got, want)
	}
	if got := churn.Command(); strings.Contains(got, "-conns") || !strings.Contains(got, "-rate 8000") {
		t.Errorf("churn command %q", got)
	}
	for _, quick := range []bool{false, true} {
		ids := map[string]bool{}
		for _, w := range Workloads(quick) {
			if ids[w.ID] {
				t.Errorf("duplicate workload id %q", w.ID)
			}
			ids[w.ID] = true
			if w.Kind != KindChurn && w.Conns%w.Channels != 0 {
				t.Errorf("%s: %d connections do not divide over %d channels", w.ID, w.Conns, w.Channels)
			}
		}
	}
}

func TestPick(t *testing.T) {
	names := func(w Workload) []string { return []string{w.ID, string(w.Kind)} }
	all := Workloads(false)
	got, err := pick(all, "latency, churn,latency-1ch", names)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, w := range got {
		ids = append(ids, w.ID)
	}
	if want := []string{"latency-1ch", "latency-many", "churn"}; !slices.Equal(ids, want) {
		t.Errorf("picked %q, want %q", ids, want)
	}
	if got, _ := pick(all, "storm", names); len(got) != 2 || got[0].ID != "steady-15k" || got[1].ID != "storm-15k" {
		t.Errorf("kind storm picked %v", got)
	}
	if _, err := pick(all, "idel", names); err == nil {
		t.Error("a name that matches nothing was accepted")
	}
	if got, _ := pick(all, "", names); len(got) != len(all) {
		t.Errorf("empty list picked %d of %d", len(got), len(all))
	}
}

// writeSummary stores a made-up loadgen summary line as a run's output.
func writeSummary(t *testing.T, dir, rel string, s *loadgen.Summary) {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, append([]byte("log line\n"), append(b, '\n')...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRender(t *testing.T) {
	dir := t.TempDir()
	ws := []Workload{
		{ID: "idle-1k", Kind: KindIdle, Conns: 1000, Channels: 100, Duration: "3s"},
		{ID: "idle-2k", Kind: KindIdle, Conns: 2000, Channels: 100, Duration: "3s"},
		{ID: "lat", Kind: KindLatency, Conns: 100, Channels: 1, Rate: 20, Duration: "3s"},
		{ID: "steady-2k", Kind: KindStorm, Conns: 2000, Channels: 100, Duration: "3s", MaxPending: 64},
		{ID: "storm-2k", Kind: KindStorm, Conns: 2000, Channels: 100, Duration: "3s", MaxPending: 1000, Ramp: 1000000},
	}
	ts := Targets()
	idx := &Index{Started: "2026-01-02T03:04:05Z", Repeats: 2, Machine: machine.Info{CPUs: 2, CPUModel: "Test CPU", Go: "go1.26"}, Workloads: ws,
		Targets: []TargetStatus{{Target: ts[0], Ran: true}, {Target: ts[1], Ran: true}, {Target: ts[2], Reason: "no bench/targets/soketi.sh"}}}
	for _, tg := range []struct {
		name  string
		scale float64
	}{{"resound", 1}, {"baseline", 2}} {
		for rep := 1; rep <= 2; rep++ {
			for _, w := range ws {
				s := &loadgen.Summary{Mode: w.Mode()}
				s.Conns.Subscribed = int64(w.Conns)
				s.Conns.Established = int64(w.Conns)
				switch {
				case w.Kind == KindStorm:
					// 512 B a socket steady, 1,280 B after the storm, times scale.
					grow := int64(1000 * tg.scale)
					if w.Ramp > 0 {
						grow = int64(2500 * tg.scale)
					}
					before := int64(20 * 1024 * tg.scale)
					s.Idle = &loadgen.IdleStats{TargetRSSBeforeKiB: before, TargetRSSAfterKiB: before + grow}
				case w.Kind == KindIdle:
					before := int64(20 * 1024 * tg.scale)
					after := before + int64(float64(w.Conns)*tg.scale)
					s.Idle = &loadgen.IdleStats{TargetRSSBeforeKiB: before, TargetRSSAfterKiB: after, KiBPerConn: tg.scale}
				default:
					h := &loadgen.Hist{}
					for i := range 1000 {
						h.Record(int64(float64(1e6+i*1e4) * tg.scale)) // 1 to 11 ms, times scale
					}
					s.Hist.Latency = h
					p := h.Digest()
					s.LatencyMs = &p
					s.Fanout = &loadgen.FanoutStats{Expected: 60, Deliveries: 60, EventsPerSec: 20}
				}
				rec := RunRecord{Target: tg.name, Workload: w.ID, Repeat: rep, Summary: filepath.Join(tg.name, w.ID, fmt.Sprintf("run-%d.json", rep))}
				writeSummary(t, dir, rec.Summary, s)
				idx.Runs = append(idx.Runs, rec)
			}
		}
	}
	// A run that failed without a summary is listed, not counted.
	idx.Runs = append(idx.Runs, RunRecord{Target: "baseline", Workload: "lat", Repeat: 3, Summary: "missing.json", Error: "server exited before it was ready"})

	rep, err := Render(dir, idx, "bench/results/x", "img")
	if err != nil {
		t.Fatal(err)
	}
	md := rep.Markdown
	for _, want := range []string{
		"## Side by side",
		"2 CPUs (Test CPU)",
		"| soketi 1.6.1 |",
		"**not run**: no bench/targets/soketi.sh",
		"loadgen idle -url $URL -conns 1000",
		"| 2,000 | Baseline | **2,000** | **40.0** | **43.9** | **2.00** | ×2 |",
		"![Server RSS against connections](img/bench-rss.svg)",
		"![Latency distribution: ",
		"(img/bench-lat.svg)",
		"| ×2 | ×2 |",
		"120 of 120",
		"Baseline, `lat`, run 3: server exited before it was ready",
		"Marginal memory per connection",
		"### Idle memory after a connect storm",
		"loadgen idle -url $URL -conns 2000 -channels 100 -duration 3s -max-pending 1000 -ramp 1000000 -pid $SERVER_PID",
		"| steady: 2,000/s, at most 64 in flight | Resound | **2,000** | — | **20.0** | **21.0** | **512** | ×1 |",
		"| storm: unpaced, 1,000 handshakes in flight | Baseline | **2,000** | — | **40.0** | **44.9** | **2,560** | ×2 |",
		"after the steady ramp (medians): Resound ×2.5; Baseline ×2.5.",
		"steady, worst run 512 B: within; storm, worst run 1,280 B: **over**",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "soketi 1.6.1 |  |") || strings.Count(md, "| soketi") != 1 {
		t.Errorf("a target that did not run has rows besides its status:\n%s", md)
	}
	if got := slices.Sorted(maps.Keys(rep.Images)); !slices.Equal(got, []string{"bench-lat.svg", "bench-rss.svg"}) {
		t.Errorf("images %q", got)
	}
	for name, svg := range rep.Images {
		elems, _ := svgDoc(t, svg)
		var series []string
		for _, e := range elems {
			if e.Name.Local == "g" && attr(e, "class") == "series" {
				series = append(series, attr(e, "data-series"))
			}
		}
		if want := []string{"Resound", "Baseline"}; !slices.Equal(series, want) {
			t.Errorf("%s: series %q, want %q", name, series, want)
		}
	}
}
