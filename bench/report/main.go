//go:build linux

// Command report runs the side-by-side benchmark of issue 4 and writes its
// section of docs/benchmarks.md, with SVG plots in docs/img.
//
// For each repeat, each workload and each target, it starts a fresh server
// with bench/targets/<target>.sh, waits until it is ready, runs loadgen
// against it, and stops it. Every run's raw loadgen summary and the logs go
// to bench/results/<date>/; index.json there lists them, and the report is
// made from that directory alone:
//
//	go run ./bench/report                      # everything; what `go tool task bench` runs
//	go run ./bench/report -quick               # small workloads, one run: a one-minute smoke test
//	go run ./bench/report -targets resound,baseline -repeats 5
//	go run ./bench/report -from bench/results/20260101-120000   # redo the report only
//
// A target whose script is missing, or that does not start, is left out
// of the runs and the report says why. Quick mode writes its report into
// the results directory rather than docs/, so a smoke test never replaces
// real numbers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/logging"
	"github.com/resoundhq/resound/internal/machine"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// envBool reads BENCH_QUICK-style switches: set and not 0/false.
func envBool(name string) bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv(name)))
	return v != "" && v != "0" && v != "false" && v != "no"
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(strings.TrimSpace(os.Getenv(name))); err == nil {
		return n
	}
	return def
}

type options struct {
	quick        bool
	repeats      int
	targets      string
	workloads    string
	resultsRoot  string
	from         string
	docs         string
	loadgen      string
	port         int
	settle       time.Duration
	readyTimeout time.Duration
}

func run(args []string, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.quick, "quick", envBool("BENCH_QUICK"), "small workloads, one run each, report in the results directory (env BENCH_QUICK)")
	fs.IntVar(&o.repeats, "repeats", envInt("BENCH_REPEATS", 0), "runs of each workload on each target (env BENCH_REPEATS; default 3, or 1 with -quick)")
	fs.StringVar(&o.targets, "targets", os.Getenv("BENCH_TARGETS"), "comma-separated targets to run (env BENCH_TARGETS; default all)")
	fs.StringVar(&o.workloads, "workloads", os.Getenv("BENCH_WORKLOADS"), "comma-separated workload ids or kinds (idle, fanout, latency, churn) to run (env BENCH_WORKLOADS; default all)")
	fs.StringVar(&o.resultsRoot, "results", "bench/results", "directory that gets one results directory per run")
	fs.StringVar(&o.from, "from", "", "make the report from this results directory without running anything")
	fs.StringVar(&o.docs, "docs", "docs/benchmarks.md", "markdown file whose generated section is replaced (its images go to img/ beside it)")
	writeDocs := fs.String("write-docs", "auto", "write the report into -docs (true), or beside the results (false); auto: true unless quick")
	fs.StringVar(&o.loadgen, "loadgen", "bench/.bin/loadgen", "loadgen binary (go tool task bench:build makes it)")
	fs.IntVar(&o.port, "port", 18100, "first port to give servers; each server gets the next free one")
	fs.DurationVar(&o.settle, "settle", 0, "pause between runs (default 2s, or 1s with -quick)")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 60*time.Second, "how long a server may take to get ready")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "report: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05", NoColor: !logging.IsTerminal(stderr)}).With().Timestamp().Logger()

	switch *writeDocs {
	case "auto", "true", "false":
	default:
		fmt.Fprintf(stderr, "report: -write-docs %q: want auto, true or false\n", *writeDocs)
		return 2
	}
	root, err := repoRoot()
	if err != nil {
		log.Error().Err(err).Msg("report")
		return 1
	}
	// Every other path is taken from the repository root.
	if o.from != "" {
		if o.from, err = filepath.Abs(o.from); err != nil {
			log.Error().Err(err).Msg("report")
			return 1
		}
	}
	if err := os.Chdir(root); err != nil {
		log.Error().Err(err).Msg("report")
		return 1
	}

	var dir string
	var idx *Index
	if o.from != "" {
		dir = o.from
		if idx, err = loadIndex(dir); err != nil {
			log.Error().Err(err).Msg("reading the results")
			return 1
		}
	} else {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if dir, idx, err = bench(ctx, o, root, log); err != nil {
			log.Error().Err(err).Msg("benchmark")
			if idx == nil {
				return 1
			}
		}
		if idx.Interrupted {
			log.Warn().Str("results", dir).Msg("interrupted: no report written; make it with -from")
			return 1
		}
	}

	write := !idx.Quick
	switch *writeDocs {
	case "true":
		write = true
	case "false":
		write = false
	}
	out := filepath.Join(dir, "benchmarks.md")
	if write {
		out = o.docs
	}
	shown := dir
	if rel, err := filepath.Rel(root, dir); err == nil && !strings.HasPrefix(rel, "..") {
		shown = rel
	}
	if err := writeReport(dir, shown, idx, o.docs, out); err != nil {
		log.Error().Err(err).Msg("writing the report")
		return 1
	}
	log.Info().Str("report", out).Str("images", filepath.Join(filepath.Dir(out), "img")).Str("results", dir).Msg("done")
	return 0
}

// repoRoot is the nearest directory up from here with a go.mod.
func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		up := filepath.Dir(d)
		if up == d {
			return "", errors.New("not inside the repository (no go.mod found)")
		}
		d = up
	}
}

// pick keeps the items whose name (or kind) is listed; an empty list keeps
// all. It fails on a name that matches nothing, to catch typos.
func pick[T any](all []T, list string, names func(T) []string) ([]T, error) {
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	var out []T
	for want := range strings.SplitSeq(list, ",") {
		want = strings.TrimSpace(want)
		found := false
		for _, x := range all {
			if slices.Contains(names(x), want) {
				found = true
				if !slices.ContainsFunc(out, func(y T) bool { return names(y)[0] == names(x)[0] }) {
					out = append(out, x)
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("%q matches nothing", want)
		}
	}
	return out, nil
}

// bench runs everything and returns the results directory and its index.
func bench(ctx context.Context, o options, root string, log zerolog.Logger) (string, *Index, error) {
	if o.repeats <= 0 {
		o.repeats = 3
		if o.quick {
			o.repeats = 1
		}
	}
	if o.settle <= 0 {
		o.settle = 2 * time.Second
		if o.quick {
			o.settle = time.Second
		}
	}
	targets, err := pick(Targets(), o.targets, func(t Target) []string { return []string{t.Name} })
	if err != nil {
		return "", nil, fmt.Errorf("-targets: %v", err)
	}
	workloads, err := pick(Workloads(o.quick), o.workloads, func(w Workload) []string { return []string{w.ID, string(w.Kind)} })
	if err != nil {
		return "", nil, fmt.Errorf("-workloads: %v", err)
	}
	lg, err := filepath.Abs(o.loadgen)
	if err != nil {
		return "", nil, err
	}
	if _, err := os.Stat(lg); err != nil {
		return "", nil, fmt.Errorf("%s is missing: go tool task bench:build makes it", o.loadgen)
	}
	openFiles := raiseOpenFiles(log)

	started := time.Now().UTC()
	name := started.Format("20060102-150405")
	if o.quick {
		name += "-quick"
	}
	dir := filepath.Join(o.resultsRoot, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, err
	}
	idx := &Index{Started: started.Format(time.RFC3339), Quick: o.quick, Repeats: o.repeats, Machine: machine.Read(), Workloads: workloads}
	idx.Machine.OpenFiles = openFiles
	r := &runner{root: root, dir: absDir, loadgen: lg, nextPort: o.port, firstPort: o.port, settle: o.settle, readyTimeout: o.readyTimeout}

	var ran []Target
	for _, t := range targets {
		st := TargetStatus{Target: t}
		if reason := r.probe(ctx, t); reason != "" {
			st.Reason = reason
			log.Warn().Str("target", t.Name).Str("why", reason).Msg("not run")
		} else {
			st.Ran = true
			ran = append(ran, t)
			log.Info().Str("target", t.Name).Msg("starts and gets ready")
		}
		idx.Targets = append(idx.Targets, st)
		if ctx.Err() != nil {
			idx.Interrupted = true
			return dir, idx, idx.save(dir)
		}
	}
	if err := idx.save(dir); err != nil {
		return dir, idx, err
	}

	total := o.repeats * len(workloads) * len(ran)
	n := 0
	for rep := 1; rep <= o.repeats; rep++ {
		for _, w := range workloads {
			for _, t := range ran {
				n++
				log.Info().Msgf("run %d/%d: %s on %s, repeat %d", n, total, w.ID, t.Name, rep)
				rec, err := r.runOnce(ctx, t, w, rep)
				idx.Runs = append(idx.Runs, rec)
				if rec.Error != "" {
					log.Warn().Str("target", t.Name).Str("workload", w.ID).Msg(rec.Error)
				}
				if serr := idx.save(dir); serr != nil {
					return dir, idx, serr
				}
				if err != nil {
					idx.Interrupted = true
					return dir, idx, idx.save(dir)
				}
				select {
				case <-ctx.Done():
				case <-time.After(r.settle):
				}
			}
		}
	}
	idx.Finished = time.Now().UTC().Format(time.RFC3339)
	idx.Machine.LoadEnd = machine.LoadAvg()
	return dir, idx, idx.save(dir)
}

// raiseOpenFiles lifts the soft open-files limit to the hard one. Servers
// inherit it, so each can hold the 19k connections of the largest idle
// workload whatever its runtime does about limits. It returns the limit
// they get.
func raiseOpenFiles(log zerolog.Logger) string {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return "unknown"
	}
	if l.Cur < l.Max {
		want := l
		want.Cur = want.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			log.Warn().Err(err).Msg("could not raise the open-files limit")
		} else {
			l = want
		}
	}
	return strconv.FormatUint(l.Cur, 10)
}

// writeReport renders dir (named shown in the text) and writes the markdown to out, which starts as
// a copy of doc (the hand-written parts), and the plots to img/ beside it.
func writeReport(dir, shown string, idx *Index, doc, out string) error {
	src, err := os.ReadFile(doc)
	if err != nil {
		return err
	}
	rep, err := Render(dir, idx, filepath.ToSlash(shown), "img")
	if err != nil {
		return err
	}
	md, err := ReplaceGenerated(string(src), rep.Markdown)
	if err != nil {
		return fmt.Errorf("%s: %v", doc, err)
	}
	img := filepath.Join(filepath.Dir(out), "img")
	if err := os.MkdirAll(img, 0o755); err != nil {
		return err
	}
	for name, svg := range rep.Images {
		if err := os.WriteFile(filepath.Join(img, name), svg, 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(out, []byte(md), 0o644)
}
