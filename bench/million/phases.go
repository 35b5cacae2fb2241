//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/presence"
)

// Phase names, as samples, the load generators' latency phases and the
// summary call them.
const (
	phaseBaseline  = "baseline"
	phaseConnect   = "connect"
	phaseHold      = "hold"
	phaseSteady    = "steady"
	phaseBroadcast = "broadcast"
	phaseDrain     = "drain"
	phaseAfter     = "after-drain"
	phaseStop      = "stop"
)

// PhaseSpan is when a phase ran, in seconds since the load generators
// started.
type PhaseSpan struct {
	Name  string  `json:"name"`
	Start float64 `json:"start_s"`
	End   float64 `json:"end_s"`
}

// sent is a broadcast as the run sent it.
type sent struct {
	seq    int64
	at     time.Time
	err    error
	doneIn time.Duration // until the progress lines counted every delivery (1 s steps); 0: never
}

// observed is what the phases learnt on the way, for the result.
type observed struct {
	baseline    Sample
	gatewayMem  *GatewayMemory
	connectEnd  time.Time
	connected   int64 // subscribed at the end of the connect phase
	broadcasts  []sent
	drain       drainRecord
	loadgen     *loadgen.Summary
	loadgenErrs []string
	presence    []PresenceCheck
}

// PresenceCheck compares the shared state's presence members with the
// connections: every presence channel must list each of its subscribers,
// no more, no fewer.
type PresenceCheck struct {
	When     string   `json:"when"`
	Channels int      `json:"channels"`
	Members  int      `json:"members"`
	Expected int      `json:"expected"`
	Wrong    int      `json:"wrong_channels"`
	Examples []string `json:"examples,omitempty"`
	Error    string   `json:"error,omitempty"`
	// Reads is how many times the members were read: the shared state
	// heals after a lapse (a gateway reasserts what it holds, retrying),
	// so a wrong read is read again, every presenceRecheck, up to
	// presenceSettle; SettledS is the time from the first read to the
	// last.
	Reads    int     `json:"reads"`
	SettledS float64 `json:"settled_s"`
}

// presenceSettle is how long a presence check waits for the shared state
// to heal, re-reading it every presenceRecheck.
const (
	presenceSettle  = 60 * time.Second
	presenceRecheck = 5 * time.Second
)

type drainRecord struct {
	Gateways []int `json:"gateways"`
	// Moved is the connections the drained gateways held when they were
	// told to stop.
	Moved int64 `json:"moved"`
	// BackS is the time from SIGTERM until as many reconnections as moved
	// connections were counted; ExitS until the last drained gateway had
	// exited.
	BackS float64 `json:"all_back_s"`
	ExitS float64 `json:"exit_s"`
}

func (r *millionRun) run(ctx context.Context) (*Result, error) {
	var ob observed
	for i := range 3 {
		if i > 0 && !pause(ctx, time.Second) {
			return nil, ctx.Err()
		}
		ob.baseline = r.take()
	}
	ob.baseline.Phase = phaseBaseline
	r.logf("baseline: gateways %.0f MiB, nats %.0f MiB, slab %.0f MiB", mib(ob.baseline.Procs[kindGateway].RSS),
		mib(ob.baseline.Procs[kindNATS].RSS), mib(ob.baseline.Kernel.Slab))

	r.mu.Lock()
	r.start = time.Now()
	r.mu.Unlock()
	ob.baseline.T = 0
	r.record(ob.baseline)
	sctx, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() { defer close(sampled); r.sampleEvery(sctx) }()
	finish := func(err error) (*Result, error) {
		r.setPhase("")
		stopSampling()
		<-sampled
		return r.result(&ob), err
	}

	// 1. Connect.
	r.setPhase(phaseConnect)
	if err := r.startLoadgens(); err != nil {
		return finish(err)
	}
	r.logf("connect: %d load generators opening %d sockets, %d handshakes in flight each", r.l.Loadgens, r.l.Sockets, r.l.InflightPer)
	err := waitUntil(ctx, r.o.connectTimeout, 250*time.Millisecond, "every socket subscribed (or failed)", func() bool {
		return r.sum("subscribed")+r.sum("failed") >= int64(r.l.Sockets)
	}, r.loadgens...)
	ob.connectEnd, ob.connected = time.Now(), r.sum("subscribed")
	if err != nil {
		return finish(err)
	}
	if f := r.sum("failed"); f > 0 {
		r.problem("%d of %d sockets failed to connect and subscribe (see the load generators' failures)", f, r.l.Sockets)
	}
	r.logf("connect: %d subscribed in %.1f s", ob.connected, ob.connectEnd.Sub(r.start).Seconds())

	// 2. Hold: nothing sent, pings only.
	r.setPhase(phaseHold)
	r.logf("hold: %v idle", r.o.hold)
	if !pause(ctx, r.o.hold) {
		return finish(ctx.Err())
	}
	ob.gatewayMem = r.gatewayMemory(ctx)
	ob.presence = append(ob.presence, r.checkPresence(ctx, "end of the hold"))
	// Where the first gateway's memory is, for a reader who wants to know
	// (the live heap as of its last collection; no collection is forced).
	if code, b, err := get("http://" + r.gateways[0].ops + "/debug/pprof/heap"); err == nil && code == 200 {
		_ = os.WriteFile(filepath.Join(r.dir, "heap-gateway-1-hold.pb.gz"), b, 0o644)
	}

	// 3. The steady fan-out, from now to the end.
	r.setPhase(phaseSteady)
	r.command("phase " + phaseSteady)
	r.command("send")
	r.logf("steady: fan-out at %.0f events/s over %d small channels for %v", r.o.fanoutRate, r.l.Channels, r.o.steady)
	if !pause(ctx, r.o.steady) {
		return finish(ctx.Err())
	}

	// 4. Broadcasts to everybody, one after the other.
	r.setPhase(phaseBroadcast)
	r.command("phase " + phaseBroadcast)
	b, err := r.broadcaster()
	if err != nil {
		return finish(err)
	}
	for range r.o.broadcasts {
		if err := r.broadcast(ctx, b, &ob); err != nil {
			return finish(err)
		}
	}

	// 5. Drain a tenth of the gateways, then one more broadcast.
	if len(r.l.Drained) > 0 {
		r.setPhase(phaseDrain)
		r.command("phase " + phaseDrain)
		if err := r.drain(ctx, &ob); err != nil {
			return finish(err)
		}
		r.setPhase(phaseAfter)
		r.command("phase " + phaseAfter)
		// Some fan-out with everyone back before the last broadcast.
		if !pause(ctx, 5*time.Second) {
			return finish(ctx.Err())
		}
		if err := r.broadcast(ctx, b, &ob); err != nil {
			return finish(err)
		}
		if !pause(ctx, 5*time.Second) {
			return finish(ctx.Err())
		}
	}

	ob.presence = append(ob.presence, r.checkPresence(ctx, "end of the run"))

	// 6. Stop: the load generators account for everything and report.
	r.setPhase(phaseStop)
	r.logf("stop: the load generators settle their counts (up to %v) and close", loadgenDrain)
	r.command("stop")
	for _, c := range r.loadgens {
		if !c.wait(ctx, loadgenDrain+2*time.Minute) {
			r.problem("%s did not end in time after stop", c.name)
		}
	}
	r.collect(&ob)
	return finish(nil)
}

// broadcast sends the next event to everybody and waits until every
// socket counted it, or the phase timeout.
func (r *millionRun) broadcast(ctx context.Context, b *loadgen.Broadcaster, ob *observed) error {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	at := time.Now()
	seq, err := b.Send(sctx)
	cancel()
	s := sent{seq: seq, at: at, err: err}
	if err != nil {
		// It may have been stored all the same: counted, not retried.
		r.problem("broadcast %d: %v", seq, err)
	}
	want := seq * r.sum("subscribed")
	werr := waitUntil(ctx, r.o.phaseTimeout, 100*time.Millisecond, fmt.Sprintf("broadcast %d everywhere", seq), func() bool {
		return r.sum("all_deliveries") >= want
	})
	if werr == nil {
		s.doneIn = time.Since(at)
		r.logf("broadcast %d: counted on all %d sockets within %.1f s", seq, want/seq, s.doneIn.Seconds())
	} else if ctx.Err() != nil {
		return ctx.Err()
	} else {
		r.problem("broadcast %d: %d of %d deliveries after %v", seq, r.sum("all_deliveries")-(seq-1)*r.sum("subscribed"), want/seq, r.o.phaseTimeout)
	}
	ob.broadcasts = append(ob.broadcasts, s)
	return nil
}

// drain SIGTERMs the drained gateways and waits until their clients are
// back on the others and they have exited.
func (r *millionRun) drain(ctx context.Context, ob *observed) error {
	ob.drain.Gateways = r.l.Drained
	for _, i := range r.l.Drained {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := scrapeConnections(sctx, r.gateways[i])
		cancel()
		if err != nil {
			r.problem("%s: reading its connections before the drain: %v", r.gateways[i].name, err)
		}
		ob.drain.Moved += int64(n)
	}
	before := r.sum("reconnects")
	at := time.Now()
	for _, i := range r.l.Drained {
		_ = r.gateways[i].cmd.Process.Signal(syscall.SIGTERM)
	}
	r.logf("drain: SIGTERM to %d gateways holding %d connections", len(r.l.Drained), ob.drain.Moved)
	err := waitUntil(ctx, r.o.phaseTimeout, 100*time.Millisecond, "the drained clients back", func() bool {
		return r.sum("reconnects")-before >= ob.drain.Moved
	})
	if err != nil && ctx.Err() != nil {
		return err
	}
	if err != nil {
		r.problem("drain: %d of %d clients back after %v", r.sum("reconnects")-before, ob.drain.Moved, r.o.phaseTimeout)
	} else {
		ob.drain.BackS = time.Since(at).Seconds()
		r.logf("drain: all %d back within %.1f s", ob.drain.Moved, ob.drain.BackS)
	}
	for _, i := range r.l.Drained {
		g := r.gateways[i]
		if !g.wait(ctx, r.o.phaseTimeout) {
			r.problem("%s still running %v after SIGTERM", g.name, r.o.phaseTimeout)
			continue
		}
		if code := g.cmd.ProcessState.ExitCode(); code != 0 {
			r.problem("%s exited %d after SIGTERM", g.name, code)
		}
	}
	ob.drain.ExitS = time.Since(at).Seconds()
	return nil
}

// gatewayMemory reads every gateway's Go memory statistics and RSS.
func (r *millionRun) gatewayMemory(ctx context.Context) *GatewayMemory {
	m := &GatewayMemory{}
	for _, g := range r.gateways {
		if _, rss, ok := procStat(g.pid()); ok {
			if m.RSSMin == 0 || rss < m.RSSMin {
				m.RSSMin = rss
			}
			m.RSSMax = max(m.RSSMax, rss)
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		mx, err := attack.Scrape(sctx, g.ops)
		cancel()
		if err != nil {
			r.problem("%s: /metrics: %v", g.name, err)
			continue
		}
		m.HeapInuse += mx.Sum("go_memstats_heap_inuse_bytes")
		m.HeapIdle += mx.Sum("go_memstats_heap_idle_bytes")
		m.HeapReleased += mx.Sum("go_memstats_heap_released_bytes")
		m.StackInuse += mx.Sum("go_memstats_stack_inuse_bytes")
		m.Sys += mx.Sum("go_memstats_sys_bytes")
		m.Goroutines += mx.Sum("go_goroutines")
		m.Connections += mx.Sum("resound_connections")
	}
	return m
}

// checkPresence reads every presence channel's members from the shared
// state and compares them with the subscribers the plan put there.
func (r *millionRun) checkPresence(ctx context.Context, when string) PresenceCheck {
	if r.l.PresenceEvery <= 0 {
		return PresenceCheck{When: when}
	}
	start := time.Now()
	for reads := 1; ; reads++ {
		pc := r.readPresence(ctx, when)
		pc.Reads, pc.SettledS = reads, time.Since(start).Seconds()
		if pc.Wrong == 0 || pc.Error != "" || time.Since(start)+presenceRecheck > presenceSettle {
			r.reportPresence(pc)
			return pc
		}
		r.logf("presence at the %s: %d of %d channels wrong (%d listed, %d subscribed); reading again in %v",
			when, pc.Wrong, pc.Channels, pc.Members, pc.Expected, presenceRecheck)
		select {
		case <-time.After(presenceRecheck):
		case <-ctx.Done():
			r.reportPresence(pc)
			return pc
		}
	}
}

// readPresence reads the members once.
func (r *millionRun) readPresence(ctx context.Context, when string) PresenceCheck {
	pc := PresenceCheck{When: when}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	got, err := presence.New(r.stores.Presence).Channels(ctx, appID)
	if err != nil {
		pc.Error = err.Error()
		return pc
	}
	for c, want := range r.l.presenceChannels() {
		name := "presence-" + loadgenChannel(c)
		n := got[name]
		pc.Channels++
		pc.Members += n
		pc.Expected += want
		if n != want {
			pc.Wrong++
			if len(pc.Examples) < 5 {
				pc.Examples = append(pc.Examples, fmt.Sprintf("%s: %d members, %d subscribers", name, n, want))
			}
		}
	}
	sort.Strings(pc.Examples)
	return pc
}

func (r *millionRun) reportPresence(pc PresenceCheck) {
	switch {
	case pc.Error != "":
		r.problem("presence check at the %s: %s", pc.When, pc.Error)
	case pc.Wrong > 0:
		r.problem("presence at the %s, after %d reads over %.0f s: %d of %d channels list the wrong members (%d listed, %d subscribed), e.g. %v",
			pc.When, pc.Reads, pc.SettledS, pc.Wrong, pc.Channels, pc.Members, pc.Expected, pc.Examples)
	default:
		r.logf("presence at the %s: all %d channels list their %d members (read %d times over %.0f s)",
			pc.When, pc.Channels, pc.Members, pc.Reads, pc.SettledS)
	}
}

// collect reads and merges the load generators' summaries.
func (r *millionRun) collect(ob *observed) {
	var all []*loadgen.Summary
	for _, c := range r.loadgens {
		s, err := loadgen.ReadSummaryFile(c.out)
		if err != nil {
			ob.loadgenErrs = append(ob.loadgenErrs, fmt.Sprintf("%s: %v", c.name, err))
			continue
		}
		if code := c.cmd.ProcessState.ExitCode(); code != 0 {
			ob.loadgenErrs = append(ob.loadgenErrs, fmt.Sprintf("%s exited %d: %v", c.name, code, s.Errors))
		}
		all = append(all, s)
	}
	sort.Strings(ob.loadgenErrs)
	for _, e := range ob.loadgenErrs {
		r.problem("%s", e)
	}
	if len(all) == 0 {
		return
	}
	m, err := loadgen.Merge(all)
	if err != nil {
		r.problem("merging the load generators' summaries: %v", err)
		return
	}
	ob.loadgen = m
	if err := writeJSON(filepath.Join(r.dir, "loadgen.json"), m); err != nil {
		r.problem("%v", err)
	}
}

// pause waits d or until ctx ends; false when ctx ended.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
