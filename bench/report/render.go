//go:build linux

package main

import (
	"cmp"
	_ "embed"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"text/template"

	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/plot"
)

//go:embed section.md.tmpl
var sectionTemplate string

// result is one run as read back from the results directory.
type result struct {
	rec     RunRecord
	sum     *loadgen.Summary // nil when loadgen printed none
	problem string           // why the run is suspect, if it is
}

// results are the runs of one target on one workload.
type results []result

// ok are the runs with a summary.
func (rs results) ok() []*loadgen.Summary {
	var out []*loadgen.Summary
	for _, r := range rs {
		if r.sum != nil {
			out = append(out, r.sum)
		}
	}
	return out
}

// stat summarizes a metric over the runs that have it.
func (rs results) stat(get func(*loadgen.Summary) (float64, bool)) Stat {
	var vs []float64
	for _, s := range rs.ok() {
		if v, ok := get(s); ok {
			vs = append(vs, v)
		}
	}
	return Summarize(vs)
}

// total adds a count over every run.
func (rs results) total(get func(*loadgen.Summary) (float64, bool)) (float64, bool) {
	var t float64
	seen := false
	for _, s := range rs.ok() {
		if v, ok := get(s); ok {
			t += v
			seen = true
		}
	}
	return t, seen
}

// latency merges the latency histograms of every run.
func (rs results) latency() *loadgen.Hist {
	h := &loadgen.Hist{}
	for _, s := range rs.ok() {
		if s.Hist.Latency != nil {
			h.Merge(s.Hist.Latency)
		}
	}
	return h
}

// Report is everything rendered from one results directory.
type Report struct {
	Markdown string
	// Images maps file names (in the image directory) to SVG documents.
	Images map[string][]byte
}

// Render reads every run the index lists and makes the generated section
// and its plots. resultsRel names the results directory in the text;
// imgRel is the image directory as the markdown links it.
func Render(dir string, idx *Index, resultsRel, imgRel string) (Report, error) {
	byRun := map[string]map[string]results{}
	for _, rec := range idx.Runs {
		r := result{rec: rec, problem: rec.Error}
		if s, err := loadgen.ReadSummaryFile(filepath.Join(dir, rec.Summary)); err == nil {
			r.sum = s
			if r.problem == "" && len(s.Errors) > 0 {
				r.problem = s.Errors[0]
			}
		} else if r.problem == "" {
			r.problem = err.Error()
		}
		if byRun[rec.Target] == nil {
			byRun[rec.Target] = map[string]results{}
		}
		byRun[rec.Target][rec.Workload] = append(byRun[rec.Target][rec.Workload], r)
	}
	var ran []TargetStatus
	for _, t := range idx.Targets {
		if t.Ran {
			ran = append(ran, t)
		}
	}
	b := &builder{idx: idx, ran: ran, runs: byRun, images: map[string][]byte{}, imgRel: imgRel}
	p := b.page()
	p.ResultsDir = resultsRel
	tmpl, err := template.New("section").Parse(sectionTemplate)
	if err != nil {
		return Report{}, err
	}
	var out strings.Builder
	if err := tmpl.Execute(&out, p); err != nil {
		return Report{}, err
	}
	return Report{Markdown: out.String(), Images: b.images}, nil
}

type builder struct {
	idx    *Index
	ran    []TargetStatus
	runs   map[string]map[string]results
	images map[string][]byte
	imgRel string
}

// page is what section.md.tmpl fills in.
type page struct {
	Index      *Index
	Times      string // how many times each workload ran, in words
	ResultsDir string
	TargetRows []targetRow
	Env        string
	Ran        int
	Idle       *section
	Sections   []section
	Problems   []string
}

type targetRow struct {
	Title, About, Script, Status string
}

type section struct {
	Title    string
	Commands []string
	Table    string
	Notes    []string
	Images   []image
}

type image struct{ Alt, Path string }

func (b *builder) page() page {
	p := page{
		Index: b.idx,
		Env:   fmt.Sprintf("export REVERB_APP_ID=%s REVERB_APP_KEY=%s REVERB_APP_SECRET=%s", benchAppID, benchKey, benchSecret),
		Ran:   len(b.ran),
		Times: times(b.idx.Repeats),
	}
	for _, t := range b.idx.Targets {
		st := "ran"
		if !t.Ran {
			st = "**not run**: " + t.Reason
		}
		p.TargetRows = append(p.TargetRows, targetRow{Title: t.Title, About: t.About, Script: "bench/targets/" + t.Name + ".sh", Status: st})
	}
	var idle, storm []Workload
	for _, w := range b.idx.Workloads {
		switch w.Kind {
		case KindIdle:
			idle = append(idle, w)
		case KindStorm:
			storm = append(storm, w)
		case KindFanout:
			p.Sections = append(p.Sections, b.fanout(w))
		case KindLatency:
			p.Sections = append(p.Sections, b.latency(w))
		case KindChurn:
			p.Sections = append(p.Sections, b.churn(w))
		}
	}
	if len(idle) > 0 {
		s := b.idle(idle)
		p.Idle = &s
	}
	if len(storm) > 0 {
		p.Sections = append(p.Sections, b.storm(storm))
	}
	for _, t := range b.idx.Targets {
		for _, w := range b.idx.Workloads {
			for _, r := range b.runs[t.Name][w.ID] {
				if r.problem != "" {
					p.Problems = append(p.Problems, fmt.Sprintf("%s, `%s`, run %d: %s", t.Title, w.ID, r.rec.Repeat, oneLine(r.problem)))
				}
			}
		}
	}
	return p
}

func times(n int) string {
	switch n {
	case 1:
		return "once"
	case 2:
		return "twice"
	}
	return fmt.Sprintf("%d times", n)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", "\\|")
}

// table writes a markdown table.
func table(head []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|")
	for range head {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// cell shows a median in bold with its range over the runs.
func cell(s Stat, format func(float64) string) string {
	switch {
	case s.N == 0:
		return "—"
	case s.N == 1 || s.Min == s.Max:
		return "**" + format(s.Median) + "**"
	default:
		return fmt.Sprintf("**%s** (%s–%s)", format(s.Median), format(s.Min), format(s.Max))
	}
}

func ratio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return "×" + strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

// runsNote says how many runs a row stands on when some are missing.
func (b *builder) runsNote(rs results) string {
	ok := len(rs.ok())
	if ok == b.idx.Repeats {
		return ""
	}
	return fmt.Sprintf(" (%d of %d runs)", ok, b.idx.Repeats)
}

// resound is the target ratios are taken against.
const resound = "resound"

func (b *builder) idle(ws []Workload) section {
	ws = slices.Clone(ws)
	slices.SortFunc(ws, func(a, c Workload) int { return a.Conns - c.Conns })
	before, after := rssBeforeMiB, rssAfterMiB
	perConn := func(s *loadgen.Summary) (float64, bool) {
		if s.Idle == nil || s.Idle.TargetRSSAfterKiB == 0 {
			return 0, false
		}
		return s.Idle.KiBPerConn, true
	}
	subscribed := func(s *loadgen.Summary) (float64, bool) { return float64(s.Conns.Subscribed), true }

	sec := section{Title: "Idle memory: server RSS against subscribed connections"}
	var rows [][]string
	var series []plot.Series
	for _, t := range b.ran {
		ser := plot.Series{Name: t.Title, Color: t.Color, Markers: true}
		var befores []float64
		for _, w := range ws {
			rs := b.runs[t.Name][w.ID]
			for _, s := range rs.ok() {
				if v, ok := before(s); ok {
					befores = append(befores, v)
				}
			}
		}
		if st := Summarize(befores); st.N > 0 {
			ser.Points = append(ser.Points, plot.Point{X: 0, Y: st.Median, YLo: st.Min, YHi: st.Max})
		}
		for _, w := range ws {
			rs := b.runs[t.Name][w.ID]
			a := rs.stat(after)
			if a.N > 0 {
				ser.Points = append(ser.Points, plot.Point{X: float64(w.Conns), Y: a.Median, YLo: a.Min, YHi: a.Max})
			}
		}
		series = append(series, ser)
	}
	for _, w := range ws {
		sec.Commands = append(sec.Commands, w.Command())
		base := b.runs[resound][w.ID].stat(after)
		for _, t := range b.ran {
			rs := b.runs[t.Name][w.ID]
			rows = append(rows, []string{
				thousands(float64(w.Conns)), t.Title + b.runsNote(rs),
				cell(rs.stat(subscribed), thousands),
				cell(rs.stat(before), f1),
				cell(rs.stat(after), f1),
				cell(rs.stat(perConn), sig),
				ratio(Ratio(rs.stat(after), base)),
			})
		}
	}
	sec.Table = table([]string{"connections", "target", "subscribed", "RSS before (MiB)", "RSS holding them (MiB)", "KiB per connection", "RSS ÷ Resound's"}, rows)

	// The slope between the smallest and largest size leaves out what the
	// server holds with no connections at all.
	if len(ws) >= 2 {
		lo, hi := ws[0], ws[len(ws)-1]
		var parts []string
		for _, t := range b.ran {
			a, z := b.runs[t.Name][lo.ID].stat(after), b.runs[t.Name][hi.ID].stat(after)
			if a.N == 0 || z.N == 0 {
				continue
			}
			kib := (z.Median - a.Median) * 1024 / float64(hi.Conns-lo.Conns)
			parts = append(parts, fmt.Sprintf("%s %s", t.Title, sig(kib)))
		}
		if len(parts) > 0 {
			sec.Notes = append(sec.Notes, fmt.Sprintf("Marginal memory per connection, from the median RSS at %s to that at %s connections, in KiB: %s.",
				thousands(float64(lo.Conns)), thousands(float64(hi.Conns)), strings.Join(parts, "; ")))
		}
	}
	sec.Notes = append(sec.Notes, "KiB per connection is (RSS holding them − RSS before) ÷ connections established, so it includes what the server allocates on its first connections.")
	name := "bench-rss.svg"
	b.images[name] = plot.Chart{
		Title:  "Server RSS against subscribed idle connections",
		XLabel: "subscribed connections (over 100 channels)", YLabel: "RSS (MiB)",
		XFrom0: true, YFrom0: true,
		Note:   b.chartNote("points: median; bars: range; at 0: RSS before connecting"),
		Series: series,
	}.SVG()
	sec.Images = append(sec.Images, image{Alt: "Server RSS against connections", Path: b.imgRel + "/" + name})
	return sec
}

// rssBeforeMiB is the server's RSS before loadgen's first connection.
func rssBeforeMiB(s *loadgen.Summary) (float64, bool) {
	if s.Idle == nil || s.Idle.TargetRSSBeforeKiB == 0 {
		return 0, false
	}
	return float64(s.Idle.TargetRSSBeforeKiB) / 1024, true
}

// rssAfterMiB is the server's RSS at the end of the hold.
func rssAfterMiB(s *loadgen.Summary) (float64, bool) {
	if s.Idle == nil || s.Idle.TargetRSSAfterKiB == 0 {
		return 0, false
	}
	return float64(s.Idle.TargetRSSAfterKiB) / 1024, true
}

// bytesPerSocket is the server's RSS growth per established connection,
// in bytes, from the RSS samples themselves: loadgen's own per-connection
// figure is rounded to a thousandth of a KiB.
func bytesPerSocket(s *loadgen.Summary) (float64, bool) {
	if s.Idle == nil || s.Idle.TargetRSSAfterKiB == 0 || s.Conns.Established == 0 {
		return 0, false
	}
	return float64(s.Idle.TargetRSSAfterKiB-s.Idle.TargetRSSBeforeKiB) * 1024 / float64(s.Conns.Established), true
}

// stormBudget is issue 13's bound on a gateway's RSS per idle subscribed
// socket, whatever the connect pattern.
const stormBudget = 1024

// storm shows idle memory by connect pattern: the same connections held
// after a steady ramp and after a connect storm, per target, in bytes per
// socket against issue 13's 1 KiB.
func (b *builder) storm(ws []Workload) section {
	before, after := rssBeforeMiB, rssAfterMiB
	subscribed := func(s *loadgen.Summary) (float64, bool) { return float64(s.Conns.Subscribed), true }
	c99 := func(s *loadgen.Summary) (float64, bool) { return s.ConnectMs.P99, s.ConnectMs.Count > 0 }
	bytes := func(v float64) string { return thousands(v) }

	sec := section{Title: "Idle memory after a connect storm: RSS per socket by connect pattern"}
	var rows [][]string
	for _, w := range ws {
		sec.Commands = append(sec.Commands, w.Command())
		base := b.runs[resound][w.ID].stat(bytesPerSocket)
		for _, t := range b.ran {
			rs := b.runs[t.Name][w.ID]
			rows = append(rows, []string{
				w.Pattern(), t.Title + b.runsNote(rs),
				cell(rs.stat(subscribed), thousands),
				cell(rs.stat(c99), sig),
				cell(rs.stat(before), f1),
				cell(rs.stat(after), f1),
				cell(rs.stat(bytesPerSocket), bytes),
				ratio(Ratio(rs.stat(bytesPerSocket), base)),
			})
		}
	}
	sec.Table = table([]string{"connect pattern", "target", "subscribed", "connect p99 (ms)", "RSS before (MiB)", "RSS holding them (MiB)", "bytes per socket", "÷ Resound's"}, rows)

	// Each target's storm against its steady state: what the storm left
	// behind. The first workload is the steady one, the others storms.
	if len(ws) >= 2 {
		var parts []string
		for _, t := range b.ran {
			steady := b.runs[t.Name][ws[0].ID].stat(bytesPerSocket)
			for _, w := range ws[1:] {
				if r := Ratio(b.runs[t.Name][w.ID].stat(bytesPerSocket), steady); !math.IsNaN(r) {
					parts = append(parts, fmt.Sprintf("%s %s", t.Title, ratio(r)))
				}
			}
		}
		if len(parts) > 0 {
			sec.Notes = append(sec.Notes, "Bytes per socket after the storm ÷ after the steady ramp (medians): "+strings.Join(parts, "; ")+".")
		}
	}
	var verdict []string
	for _, w := range ws {
		if st := b.runs[resound][w.ID].stat(bytesPerSocket); st.N > 0 {
			mark := "within"
			if st.Max > stormBudget {
				mark = "**over**"
			}
			verdict = append(verdict, fmt.Sprintf("%s, worst run %s B: %s", strings.SplitN(w.Pattern(), ":", 2)[0], thousands(st.Max), mark))
		}
	}
	if len(verdict) > 0 {
		sec.Notes = append(sec.Notes, fmt.Sprintf("Resound against issue 13's bound of %s B per idle subscribed socket: %s.", thousands(stormBudget), strings.Join(verdict, "; ")))
	}
	sec.Notes = append(sec.Notes,
		"Bytes per socket is (RSS holding them − RSS before) × 1,024 ÷ connections established. "+
			"loadgen reads the server's VmRSS from /proc/<pid>/status twice: before its first connection, and once at the end of the hold, "+
			"which starts when every connection has subscribed (or failed). Nothing forces a collection from outside: "+
			"whatever a server gives back by itself in the hold is counted (Resound trims once a storm is over, internal/gateway/trim.go). "+
			"Connect p99 is TCP connect to the server's first message; the storm's shows the handshakes queueing.")
	return sec
}

func (b *builder) chartNote(s string) string {
	return fmt.Sprintf("%s; each target run %s; %s", s, times(b.idx.Repeats), dateOf(b.idx.Started))
}

func dateOf(ts string) string {
	if len(ts) >= 10 {
		return ts[:10]
	}
	return ts
}

func fanoutGet(get func(*loadgen.FanoutStats) float64) func(*loadgen.Summary) (float64, bool) {
	return func(s *loadgen.Summary) (float64, bool) {
		if s.Fanout == nil {
			return 0, false
		}
		return get(s.Fanout), true
	}
}

// delivered is "delivered of expected" over every run.
func delivered(rs results) string {
	d, ok := rs.total(fanoutGet(func(f *loadgen.FanoutStats) float64 { return float64(f.Deliveries) }))
	e, _ := rs.total(fanoutGet(func(f *loadgen.FanoutStats) float64 { return float64(f.Expected) }))
	if !ok {
		return "—"
	}
	return thousands(d) + " of " + thousands(e)
}

func totalCell(rs results, get func(*loadgen.FanoutStats) float64) string {
	v, ok := rs.total(fanoutGet(get))
	if !ok {
		return "—"
	}
	return thousands(v)
}

func (b *builder) fanout(w Workload) section {
	rate := fanoutGet(func(f *loadgen.FanoutStats) float64 { return f.DeliveriesPerSec })
	sent := fanoutGet(func(f *loadgen.FanoutStats) float64 { return f.EventsPerSec })
	base := b.runs[resound][w.ID].stat(rate)
	var rows [][]string
	for _, t := range b.ran {
		rs := b.runs[t.Name][w.ID]
		rows = append(rows, []string{
			t.Title + b.runsNote(rs),
			cell(rs.stat(rate), compact),
			cell(rs.stat(sent), compact),
			delivered(rs),
			totalCell(rs, func(f *loadgen.FanoutStats) float64 { return float64(f.Missing) }),
			totalCell(rs, func(f *loadgen.FanoutStats) float64 { return float64(f.Duplicates) }),
			totalCell(rs, func(f *loadgen.FanoutStats) float64 { return float64(f.OutOfOrder) }),
			ratio(Ratio(rs.stat(rate), base)),
		})
	}
	return section{
		Title:    w.Title(),
		Commands: []string{w.Command()},
		Table:    table([]string{"target", "deliveries/s", "events/s accepted", "delivered (all runs)", "missing", "duplicates", "out of order", "deliveries/s ÷ Resound's"}, rows),
		Notes:    []string{"Deliveries/s counts distinct events received by all subscribers, from the first send to the last receipt. Missing, duplicates and out of order are totals over all runs."},
	}
}

func (b *builder) latency(w Workload) section {
	pct := func(get func(p *loadgen.Percentiles) float64) func(*loadgen.Summary) (float64, bool) {
		return func(s *loadgen.Summary) (float64, bool) {
			if s.LatencyMs == nil || s.LatencyMs.Count == 0 {
				return 0, false
			}
			return get(s.LatencyMs), true
		}
	}
	p50 := pct(func(p *loadgen.Percentiles) float64 { return p.P50 })
	p90 := pct(func(p *loadgen.Percentiles) float64 { return p.P90 })
	p99 := pct(func(p *loadgen.Percentiles) float64 { return p.P99 })
	p999 := pct(func(p *loadgen.Percentiles) float64 { return p.P999 })
	pmax := pct(func(p *loadgen.Percentiles) float64 { return p.Max })
	sent := fanoutGet(func(f *loadgen.FanoutStats) float64 { return f.EventsPerSec })
	base := b.runs[resound][w.ID]
	var rows [][]string
	var series []plot.Series
	for _, t := range b.ran {
		rs := b.runs[t.Name][w.ID]
		rows = append(rows, []string{
			t.Title + b.runsNote(rs),
			cell(rs.stat(p50), sig), cell(rs.stat(p90), sig), cell(rs.stat(p99), sig), cell(rs.stat(p999), sig), cell(rs.stat(pmax), sig),
			cell(rs.stat(sent), sig),
			delivered(rs),
			ratio(Ratio(rs.stat(p50), base.stat(p50))),
			ratio(Ratio(rs.stat(p99), base.stat(p99))),
		})
		series = append(series, plot.Series{Name: t.Title, Color: t.Color, Points: cdf(rs.latency())})
	}
	name := "bench-" + w.ID + ".svg"
	b.images[name] = plot.Chart{
		Title:  w.Title(),
		XLabel: "trigger-to-receipt latency (ms, log scale)", YLabel: "fraction of deliveries",
		LogX: true, YFrom0: true, YMax: 1,
		Note:   b.chartNote("every delivery of every run"),
		Series: series,
	}.SVG()
	return section{
		Title:    w.Title(),
		Commands: []string{w.Command()},
		Table:    table([]string{"target", "p50 (ms)", "p90", "p99", "p99.9", "max", "events/s accepted", "delivered (all runs)", "p50 ÷ Resound's", "p99 ÷ Resound's"}, rows),
		Notes:    []string{"Latency runs from building the HTTP trigger request to the frame's receipt, so it includes the API call. Percentiles are medians of each run's percentiles; the plot merges every run's histogram."},
		Images:   []image{{Alt: "Latency distribution: " + w.Title(), Path: b.imgRel + "/" + name}},
	}
}

// cdf samples a histogram's distribution: the latency (ms) under which
// each fraction of deliveries arrived, finer in the tail.
func cdf(h *loadgen.Hist) []plot.Point {
	if h.Count() == 0 {
		return nil
	}
	var qs []float64
	for q := 0.0; q < 0.9; q += 0.01 {
		qs = append(qs, q)
	}
	for q := 0.9; q < 0.99; q += 0.002 {
		qs = append(qs, q)
	}
	qs = append(qs, 0.99, 0.995, 0.999, 0.9999, 1)
	var pts []plot.Point
	for _, q := range qs {
		ms := float64(h.Quantile(q)) / 1e6
		if ms <= 0 {
			continue
		}
		pts = append(pts, plot.Point{X: ms, Y: q})
	}
	return pts
}

func (b *builder) churn(w Workload) section {
	hs := func(s *loadgen.Summary) (float64, bool) {
		if s.Churn == nil {
			return 0, false
		}
		return s.Churn.HandshakesPerSec, true
	}
	c50 := func(s *loadgen.Summary) (float64, bool) { return s.ConnectMs.P50, s.ConnectMs.Count > 0 }
	c99 := func(s *loadgen.Summary) (float64, bool) { return s.ConnectMs.P99, s.ConnectMs.Count > 0 }
	failed := func(s *loadgen.Summary) (float64, bool) { return float64(s.Conns.Failed), true }
	base := b.runs[resound][w.ID].stat(hs)
	var rows [][]string
	for _, t := range b.ran {
		rs := b.runs[t.Name][w.ID]
		f, ok := rs.total(failed)
		fs := "—"
		if ok {
			fs = thousands(f) + failureKinds(rs)
		}
		rows = append(rows, []string{
			t.Title + b.runsNote(rs),
			cell(rs.stat(hs), compact),
			cell(rs.stat(c50), sig), cell(rs.stat(c99), sig),
			fs,
			ratio(Ratio(rs.stat(hs), base)),
		})
	}
	return section{
		Title:    w.Title(),
		Commands: []string{w.Command()},
		Table:    table([]string{"target", "handshakes/s", "connect p50 (ms)", "connect p99 (ms)", "failed (all runs)", "handshakes/s ÷ Resound's"}, rows),
		Notes:    []string{"A handshake is TCP connect, WebSocket upgrade and the server's first message; each connection then subscribes and closes. Handshakes/s is connections established over the window, so it cannot exceed the offered rate."},
	}
}

// failureKinds lists the most common failure kinds over all runs.
func failureKinds(rs results) string {
	kinds := map[string]int64{}
	for _, s := range rs.ok() {
		for k, v := range s.Conns.Failures {
			kinds[k] += v
		}
	}
	if len(kinds) == 0 {
		return ""
	}
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, c string) int {
		return cmp.Or(cmp.Compare(kinds[c], kinds[a]), strings.Compare(a, c))
	})
	if len(names) > 3 {
		names = names[:3]
	}
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %s", n, thousands(float64(kinds[n])))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
