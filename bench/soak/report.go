package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/plot"
	"github.com/resoundhq/resound/internal/queue"
)

// The generated part of docs/security.md lies between these lines; the
// rest of the file is written by hand.
const (
	docsBegin = "<!-- soak:begin -->"
	docsEnd   = "<!-- soak:end -->"
)

// write puts the run's files in its results directory, and in docs/ when
// the run is meant to.
func (s *soak) write(r *report) error {
	if err := writeCSV(filepath.Join(s.dir, "samples.csv"), r.samples); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(filepath.Join(s.dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	r.images = charts(r)
	for name, svg := range r.images {
		if err := os.WriteFile(filepath.Join(s.dir, name), svg, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(s.dir, "report.md"), []byte("# Soak run\n\n"+r.markdown(".")), 0o644); err != nil {
		return err
	}
	if !s.o.writeDocs() {
		s.logf("docs left alone (a run under an hour; SOAK_DOCS=1 writes them anyway)")
		return nil
	}
	docs := filepath.Join(s.root, "docs")
	for name, svg := range r.images {
		if err := os.WriteFile(filepath.Join(docs, "img", name), svg, 0o644); err != nil {
			return err
		}
	}
	path := filepath.Join(docs, "security.md")
	doc, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		doc = []byte("# Security\n\n" + docsBegin + "\n" + docsEnd + "\n")
	} else if err != nil {
		return err
	}
	out, err := replaceSection(string(doc), r.markdown("img"))
	if err != nil {
		return fmt.Errorf("docs/security.md: %w", err)
	}
	s.logf("wrote docs/security.md's soak section and docs/img/soak-*.svg")
	return os.WriteFile(path, []byte(out), 0o644)
}

// replaceSection puts body between the soak markers of doc. It refuses a
// document without exactly one pair in order, rather than guess.
func replaceSection(doc, body string) (string, error) {
	if n := strings.Count(doc, docsBegin); n != 1 {
		return "", fmt.Errorf("want one %s line, found %d", docsBegin, n)
	}
	if n := strings.Count(doc, docsEnd); n != 1 {
		return "", fmt.Errorf("want one %s line, found %d", docsEnd, n)
	}
	b, e := strings.Index(doc, docsBegin), strings.Index(doc, docsEnd)
	if e < b {
		return "", errors.New("the end marker comes before the begin marker")
	}
	return doc[:b] + docsBegin + "\n\n" + strings.Trim(body, "\n") + "\n\n" + doc[e:], nil
}

// csvColumns are the CSV's columns and how each is read from a sample.
func csvColumns(gateways int) ([]string, []func(prev, s Sample) string) {
	var names []string
	var fs []func(prev, s Sample) string
	col := func(name string, f func(prev, s Sample) string) {
		names = append(names, name)
		fs = append(fs, f)
	}
	num := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	cpu := func(prev, cur float64, dt float64) string {
		if dt <= 0 || prev == 0 {
			return ""
		}
		return num(100*(cur-prev)/dt, 1)
	}
	col("t_s", func(_, s Sample) string { return num(s.T, 1) })
	col("time", func(_, s Sample) string { return s.Time })
	col("phase", func(_, s Sample) string { return s.Phase })
	for i := range gateways {
		p := fmt.Sprintf("g%d_", i+1)
		g := func(s Sample) GatewayStats {
			if i < len(s.Gateways) {
				return s.Gateways[i]
			}
			return GatewayStats{}
		}
		col(p+"rss_mib", func(_, s Sample) string { return num(mib(g(s).RSS), 2) })
		col(p+"heap_inuse_mib", func(_, s Sample) string { return num(g(s).HeapInuse/(1<<20), 2) })
		col(p+"goroutines", func(_, s Sample) string { return num(g(s).Goroutines, 0) })
		col(p+"fds", func(_, s Sample) string { return strconv.Itoa(g(s).FDs) })
		col(p+"connections", func(_, s Sample) string { return num(g(s).Connections, 0) })
		col(p+"subscriptions", func(_, s Sample) string { return num(g(s).Subscriptions, 0) })
		col(p+"metrics_series", func(_, s Sample) string { return strconv.Itoa(g(s).Series) })
		col(p+"limit_hits", func(_, s Sample) string { return num(g(s).LimitHits, 0) })
		col(p+"cpu_pct", func(prev, s Sample) string { return cpu(g(prev).CPU, g(s).CPU, s.T-prev.T) })
	}
	col("worker_rss_mib", func(_, s Sample) string { return num(mib(s.Worker.RSS), 2) })
	col("worker_goroutines", func(_, s Sample) string { return num(s.Worker.Goroutines, 0) })
	col("worker_cpu_pct", func(prev, s Sample) string { return cpu(prev.Worker.CPU, s.Worker.CPU, s.T-prev.T) })
	col("nats_rss_mib", func(_, s Sample) string { return num(mib(s.NATS.RSS), 2) })
	col("nats_cpu_pct", func(prev, s Sample) string { return cpu(prev.NATS.CPU, s.NATS.CPU, s.T-prev.T) })
	col("loadgen_cpu_pct", func(prev, s Sample) string { return cpu(prev.Loadgen.CPU, s.Loadgen.CPU, s.T-prev.T) })
	col("soak_cpu_pct", func(prev, s Sample) string { return cpu(prev.Soak.CPU, s.Soak.CPU, s.T-prev.T) })
	col("machine_busy_pct", func(prev, s Sample) string { return cpu(prev.MachineBusy, s.MachineBusy, s.T-prev.T) })
	for _, name := range streamNames {
		short := strings.ToLower(strings.TrimPrefix(name, "RESOUND_"))
		col(short+"_msgs", func(_, s Sample) string { return strconv.FormatUint(s.Streams[name].Msgs, 10) })
		col(short+"_bytes", func(_, s Sample) string { return strconv.FormatUint(s.Streams[name].Bytes, 10) })
	}
	return names, fs
}

func writeCSV(path string, samples []Sample) error {
	gateways := 0
	for _, s := range samples {
		gateways = max(gateways, len(s.Gateways))
	}
	names, fs := csvColumns(gateways)
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write(names)
	for i, s := range samples {
		prev := Sample{}
		if i > 0 && samples[i-1].Phase == s.Phase {
			prev = samples[i-1]
		}
		rec := make([]string, len(fs))
		for j, f := range fs {
			rec[j] = f(prev, s)
		}
		_ = w.Write(rec)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"}

// charts draws the three plots: memory, goroutines and descriptors,
// bucket sizes, over the run in minutes from the load's start.
func charts(r *report) map[string][]byte {
	samples := r.samples
	series := func(name string, color int, f func(Sample) float64) plot.Series {
		s := plot.Series{Name: name, Color: palette[color%len(palette)]}
		for _, smp := range samples {
			// The baseline is in the table; on the plot its few seconds
			// before zero would only widen the axis.
			if v := f(smp); !math.IsNaN(v) && smp.T >= 0 {
				s.Points = append(s.Points, plot.Point{X: smp.T / 60, Y: v})
			}
		}
		return s
	}
	gateways := 0
	for _, s := range samples {
		gateways = max(gateways, len(s.Gateways))
	}
	marks := []plot.Mark{{X: r.FromS / 60, Label: "judged from " + clock(r.FromS)}, {X: r.DurationS / 60, Label: "load stops"}}
	note := fmt.Sprintf("%s; a sample every %s; %s", r.Command, secs(r.SampleS), r.Started)
	xlabel := "minutes since the load started"

	var mem, gor, kv []plot.Series
	for i := range gateways {
		mem = append(mem,
			series(fmt.Sprintf("gateway-%d RSS", i+1), i, gwf(i, func(g GatewayStats) float64 { return mib(g.RSS) })),
			series(fmt.Sprintf("gateway-%d heap", i+1), i+2, gwf(i, func(g GatewayStats) float64 { return g.HeapInuse / (1 << 20) })))
		gor = append(gor,
			series(fmt.Sprintf("gateway-%d goroutines", i+1), i, gwf(i, func(g GatewayStats) float64 { return g.Goroutines })),
			series(fmt.Sprintf("gateway-%d descriptors", i+1), i+2, gwf(i, func(g GatewayStats) float64 { return float64(g.FDs) })))
	}
	mem = append(mem,
		series("worker RSS", 4, func(s Sample) float64 { return mib(s.Worker.RSS) }),
		series("nats-server RSS", 5, func(s Sample) float64 { return mib(s.NATS.RSS) }))
	for i, name := range []string{cluster.BucketPresence, cluster.BucketUsers, cluster.BucketCounts, cluster.BucketCache, queue.StreamName} {
		kv = append(kv, series(strings.TrimPrefix(name, "RESOUND_"), i, streamf(name)))
	}
	return map[string][]byte{
		"soak-memory.svg": plot.Chart{Title: "Memory over the soak", XLabel: xlabel, YLabel: "MiB", YFrom0: true,
			Note: note, Series: mem, Marks: marks}.SVG(),
		"soak-goroutines.svg": plot.Chart{Title: "Gateway goroutines and open descriptors", XLabel: xlabel, YLabel: "count", YFrom0: true,
			Note: note, Series: gor, Marks: marks}.SVG(),
		"soak-kv.svg": plot.Chart{Title: "Shared-state buckets and the job stream", XLabel: xlabel, YLabel: "messages", YFrom0: true,
			Note: note, Series: kv, Marks: marks}.SVG(),
	}
}

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Millisecond).String()
}

func verdictWord(pass bool) string {
	if pass {
		return "PASS"
	}
	return "FAIL"
}

func cellf(v float64, unit string) string {
	if math.IsNaN(v) {
		return "–"
	}
	if unit == "MiB" {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return thousands(v)
}

func thousands(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// markdown is the report, with images under imgDir.
func (r *report) markdown(imgDir string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	p("Generated by `%s` (bench/soak) on %s: **%s**. Raw samples, every process's log and the attacks' records are in `%s/` on the machine that ran it (not committed).\n\n",
		r.Command, r.Started, verdictWord(r.Pass), r.Results)
	p("- **Machine:** %d CPUs (%s), %s GiB, Linux %s, %s; load average %s at the start, %s at the end (the machine is shared: the soak's own processes used the CPU below).\n",
		m.CPUs, m.CPUModel, m.MemTotalGiB, m.Kernel, m.Go, m.LoadStart, m.LoadEnd)
	p("- **Deployment (scaled mode):** one nats-server with JetStream, one worker (2 goroutines), two gateways. The app has `max_connections` %d and `subscription_count` on, so every shared-state bucket is written. Gateway settings besides the defaults: %s.\n",
		maxConnections, r.Settings)
	p("- **Duration:** %s of load, a sample every %s; the load stopped %s after it started (the attack in progress finishes); then %s.\n",
		secs(r.DurationS), secs(r.SampleS), clock(r.StoppedS), settleWords(r))
	p("\n#### Load, all at once for the whole run\n\n")
	p("| load | what | rate | outcome |\n|---|---|---|---|\n")
	ld := r.Loads
	if f := ld.Fanout; f != nil && f.Fanout != nil {
		p("| fan-out | `loadgen fanout` over both gateways (API on gateway-2), %s subscribers on %d channels, exact counting | %s events/s (%s deliveries/s) | %s events, %s deliveries; %d missing, %d duplicated, %d out of order |\n",
			thousands(float64(f.Settings.Conns)), f.Settings.Channels, num1(f.Fanout.EventsPerSec), thousands(f.Fanout.DeliveriesPerSec),
			thousands(float64(f.Fanout.EventsSent)), thousands(float64(f.Fanout.Deliveries)), f.Fanout.Missing, f.Fanout.Duplicates, f.Fanout.OutOfOrder)
	}
	p("| bystander | `attack.Bystander` on gateway-1 (the attacked one): %d clients on 2 channels, triggers through its API | %s events/s | %s%s |\n",
		ld.Bystander.Clients, num1(ld.Bystander.Rate), mdEscape(ld.Bystander.Result), mdEscape(ifErr(ld.Bystander.Err)))
	for i, c := range ld.Churn {
		if c == nil || c.Churn == nil {
			continue
		}
		p("| churn | `loadgen churn` on gateway-%d: connect, subscribe (10 channels), hold 1 s, close | %s connections/s | %s completed; failures %s |\n",
			i+1, num1(c.Settings.Rate), thousands(float64(c.Churn.Completed)), mapWords(c.Conns.Failures, " "))
	}
	pr := ld.Presence
	p("| presence | %d members on %d presence channels over both gateways, as %d users; half sign in (`pusher:signin`, with a watchlist), half also read a cache channel; each stays 6–18 s, half unsubscribe, half drop the socket | 1 client event/s per member | %s sessions, %s joins, %s sign-ins; %s client events sent, %s received; %s member_added, %s member_removed; refused at connect (an attack holding a bound) %s |\n",
		pr.Members, pr.Channels, pr.Users, thousands(float64(pr.Sessions)), thousands(float64(pr.Joins)), thousands(float64(pr.Signins)),
		thousands(float64(pr.ClientSent)), thousands(float64(pr.ClientRecv)), thousands(float64(pr.MemberAdded)), thousands(float64(pr.Removed)), mapWords(pr.Refused, " × "))
	p("| cache | an event on 4 cache channels through gateway-2's API | every 2 s | %s triggers, %d refused |\n", thousands(float64(ld.CacheSent)), ld.CacheFail)
	runs := 0
	for _, a := range r.Attacks {
		runs += a.Runs
	}
	p("| attacks | the %d attacks below, one after the other, %s apart, on gateway-1, each from its own address | a cycle every ~%s | %d attacks run |\n",
		len(r.Attacks), secs(r.AttackGapS), cycleWords(r), runs)
	p("\nConnections refused with 503 on gateway-1 (churn, presence) are the slowloris attack at work: it holds all of `RESOUND_MAX_HANDSHAKES` for up to `RESOUND_HANDSHAKE_TIMEOUT`, and the bound refuses everyone meanwhile, as it must; the per-address cap (`RESOUND_MAX_CONNECTIONS_PER_IP`) lies above it here.\n")

	p("\nCPU over the load, in %% of one core: ")
	var parts []string
	for _, c := range r.CPU {
		parts = append(parts, fmt.Sprintf("%s %s", c.Name, num1(c.Percent)))
	}
	p("%s; the whole machine %s of %d.\n", strings.Join(parts, ", "), num1(r.MachineBusy), 100*m.CPUs)

	p("\n#### Verdict: %s\n\n", verdictWord(r.Pass))
	p("Judged from minute %s (%s) to the end of the load; a window's level is taken over %s.\n\n", clock(r.FromS), r.FromWhy, secs(r.WindowS))
	p("| check | result | detail |\n|---|---|---|\n")
	for _, c := range r.Checks {
		p("| %s | %s | %s |\n", mdEscape(c.Name), verdictWord(c.Pass), mdEscape(c.Detail))
	}
	p("\n| quantity | before the load | minute %s | end of the load | after settling |\n|---|---|---|---|---|\n", clock(r.FromS))
	for _, row := range r.Rows {
		unit := ""
		if row.Unit != "" {
			unit = " (" + row.Unit + ")"
		}
		p("| %s%s, %s | %s | %s | %s | %s |\n", row.What, unit, row.Agg, cellf(row.Baseline, row.Unit), cellf(row.Start, row.Unit), cellf(row.End, row.Unit), cellf(row.Settled, row.Unit))
	}
	p("\nEach level is the median of its window, which leaves out the few seconds an attack holds (or has refused) a hundred sockets; *max* for the /metrics series, which must stay bounded. \"Before the load\" and \"after settling\" are single samples.\n")

	p("\n#### Attacks\n\n| attack | bound | runs | broke the bound | last run |\n|---|---|---|---|---|\n")
	for _, a := range r.Attacks {
		p("| %s | %s | %d | %d | %s |\n", a.Name, mdEscape(a.Bound), a.Runs, a.Failed, mdEscape(a.Last))
	}
	p("\n![Memory over the soak](%s/soak-memory.svg)\n\n", imgDir)
	p("![Gateway goroutines and open descriptors](%s/soak-goroutines.svg)\n\n", imgDir)
	p("![Shared-state buckets and the job stream](%s/soak-kv.svg)\n", imgDir)
	return b.String()
}

func settleWords(r *report) string {
	if r.Settled {
		return "everything it held was let go " + r.SettleNote
	}
	return "it did not let go of everything: " + r.SettleNote
}

func cycleWords(r *report) string {
	if r.CycleS <= 0 {
		return "?"
	}
	return clock(r.CycleS)
}

func num1(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// mapWords lists a map's counts by key: "handshake_status_503 12, timeout 1".
func mapWords[V int | int64](m map[string]V, sep string) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s%s%d", k, sep, m[k]))
	}
	return strings.Join(parts, ", ")
}

// console is what the soak prints at the end.
func (r *report) console() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nsoak: %s of load; judged from minute %s (%s), windows of %s\n", secs(r.DurationS), clock(r.FromS), r.FromWhy, secs(r.WindowS))
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "  %-4s  %-34s %s\n", verdictWord(c.Pass), c.Name, c.Detail)
	}
	fmt.Fprintf(&b, "soak: %s — results in %s (report.md, samples.csv, soak-*.svg)\n", verdictWord(r.Pass), r.Results)
	return b.String()
}
