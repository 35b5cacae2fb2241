package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// runner is one process's run: the pollers and, for fanout, the
// triggering lanes.
// maxCondPoll is how seldom, at most, the runner looks at a condition it
// waits for (Run's wait).
const maxCondPoll = 160 * time.Millisecond

type runner struct {
	cfg     *Config
	log     zerolog.Logger
	target  target   // the HTTP API
	targets []target // the WebSockets
	plan    plan
	names   []string
	pollers []*poller
	// issued is trigger.issued, by channel index; read by the pollers
	// when a connection subscribes.
	issued []atomic.Int64
	// resent is trigger.resent (nil in a shard that only receives).
	resent *resentSet
	// endSent is, per channel, the count an endEvent carried (-1: none
	// yet); a receive-only shard's counts.
	endSent []atomic.Int64
	// sent is the acknowledged events per channel. It is set before
	// sentFinal, which lets the pollers read it.
	sent      []int64
	sentFinal atomic.Bool

	// tlsConfig verifies https:// and wss:// targets (tls_linux.go).
	tlsConfig *tls.Config

	// allName is the all channel with -all, else "".
	allName string
	// ctl is the run's commands (Config.Control), or nil.
	ctl *control

	errMu  sync.Mutex
	errors []string
}

func (r *runner) fatal(msg string) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	r.errors = append(r.errors, msg)
}

// churnChannel is the channel a churning connection subscribes to: one of
// this process's channels, round-robin.
func (r *runner) churnChannel(idx int32) int32 {
	return int32(r.plan.channels[int(idx)%len(r.plan.channels)])
}

func (r *runner) sum(f func(p *poller) int64) int64 {
	var n int64
	for _, p := range r.pollers {
		n += f(p)
	}
	return n
}

// Run performs one run and returns its summary. It is bounded: connection
// set-up by ConnectTimeout, the main phase by Duration (and Events), the
// drain by Drain, and closing by CloseGrace. Cancelling ctx ends the run
// early; the summary then says interrupted.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, err := parseTarget(cfg.URL, cfg.Key, cfg.Protocol)
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: &cfg, log: log, target: t}
	if r.tlsConfig, err = clientTLS(cfg.CAFile); err != nil {
		return nil, err
	}
	for _, u := range cfg.wsURLs() {
		wt, err := parseTarget(u, cfg.Key, cfg.Protocol)
		if err != nil {
			return nil, err
		}
		r.targets = append(r.targets, wt)
	}
	r.plan = makePlan(&cfg)
	r.names = r.plan.names
	if len(r.plan.channels) == 0 && !r.plan.receiveOnly {
		return nil, fmt.Errorf("shard %d/%d owns none of the %d channels", cfg.Shard, cfg.Shards, cfg.Channels)
	}
	if cfg.All {
		r.allName = AllChannel(cfg.Run)
	}
	if cfg.Control != nil {
		r.ctl = newControl(cfg.Control, log)
	}
	r.issued = make([]atomic.Int64, len(r.names))
	r.resent = newResentSet()
	r.endSent = make([]atomic.Int64, len(r.names))
	for i := range r.endSent {
		r.endSent[i].Store(-1)
	}

	need := uint64(len(r.plan.conns) + cfg.Inflight + 64)
	if cfg.Mode == ModeChurn {
		need = uint64(cfg.MaxPending + 64)
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < need {
		lim.Cur = min(need, lim.Max)
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		if lim.Cur < need {
			return nil, fmt.Errorf("need %d open files but the limit is %d: lower -conns or run several processes", need, lim.Cur)
		}
	}

	s := &Summary{
		Mode: cfg.Mode, Run: cfg.Run, Processes: 1, Shards: []string{fmt.Sprintf("%d/%d", cfg.Shard, cfg.Shards)},
		Target: cfg.URL, Start: time.Now().UTC().Format(time.RFC3339Nano),
		Settings: Settings{
			Conns: len(r.plan.conns), Channels: cfg.Channels, DurationSec: cfg.Duration.Seconds(), Rate: cfg.Rate,
			Ramp: cfg.Ramp, Sources: len(cfg.Sources), Pollers: cfg.Pollers,
			WSURLs: len(cfg.WSURLs), Reconnect: cfg.Reconnect, ShardBy: cfg.ShardBy,
		},
	}
	if cfg.Mode == ModeFanout {
		s.Settings.Events, s.Settings.Batch, s.Settings.Inflight = cfg.Events, cfg.Batch, cfg.Inflight
		s.Settings.Payload = cfg.Payload
	}
	began := time.Now()

	var rssBefore int64
	if cfg.PID > 0 {
		if rssBefore, err = readRSS(strconv.Itoa(cfg.PID)); err != nil {
			return nil, fmt.Errorf("-pid: %v", err)
		}
	}

	// Pollers: connections dealt round-robin, each opening its share of the
	// ramp (or churn rate).
	np := cfg.Pollers
	for i := 0; i < np; i++ {
		p, err := newPoller(r, i)
		if err != nil {
			for _, q := range r.pollers {
				q.shutdown()
			}
			return nil, err
		}
		p.maxPending = max(1, cfg.MaxPending/np)
		r.pollers = append(r.pollers, p)
	}
	if cfg.Mode == ModeChurn {
		total := int(cfg.Rate * cfg.Duration.Seconds())
		if cfg.Conns > 0 {
			total = min(total, cfg.Conns)
		}
		s.Conns.Planned = int64(total)
		s.Settings.Conns = total
		for i, p := range r.pollers {
			p.rate = cfg.Rate / float64(np)
			p.churnCap = total / np
			if i < total%np {
				p.churnCap++
			}
		}
	} else {
		s.Conns.Planned = int64(len(r.plan.conns))
		for i, c := range r.plan.conns {
			p := r.pollers[i%np]
			p.specs = append(p.specs, c)
		}
		for _, p := range r.pollers {
			p.rate = cfg.Ramp / float64(np)
		}
	}
	var wg sync.WaitGroup
	churnStart := time.Now()
	for _, p := range r.pollers {
		p.churnEnd = churnStart.Add(cfg.Duration)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.loop()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	progress := time.NewTicker(cfg.ProgressInterval)
	defer progress.Stop()
	var trig *trigger
	logProgress := func(phase string) {
		e := r.log.Info().Str("phase", phase).
			Int64("attempted", r.sum(func(p *poller) int64 { return p.attempted.Load() })).
			Int64("established", r.sum(func(p *poller) int64 { return p.established.Load() })).
			Int64("subscribed", r.sum(func(p *poller) int64 { return p.subscribed.Load() })).
			Int64("failed", r.sum(func(p *poller) int64 { return p.failed.Load() })).
			Int64("dropped", r.sum(func(p *poller) int64 { return p.dropped.Load() })).
			Int64("reconnects", r.sum(func(p *poller) int64 { return p.reconnects.Load() })).
			Int64("deliveries", r.sum(func(p *poller) int64 { return p.delivered.Load() }))
		if r.allName != "" {
			e = e.Int64("all_deliveries", r.sum(func(p *poller) int64 { return p.allDelivered.Load() }))
		}
		if trig != nil {
			e = e.Int64("events_sent", trig.acked.Load()).Int64("request_failures", trig.failed.Load())
		}
		e.Msg("progress")
	}
	// wait waits for cond, up to d, logging progress; false if ctx ended.
	// It looks at cond every 10 ms at first, then less often while it
	// stays false, up to every maxCondPoll: a hold of minutes then wakes
	// the process a few times a second, not a hundred (each wake of an
	// idle Go process costs about 100 µs of CPU on this VM, and the
	// million-socket run has fifty of these processes).
	wait := func(phase string, d time.Duration, cond func() bool) bool {
		deadline := time.NewTimer(d)
		defer deadline.Stop()
		poll := 10 * time.Millisecond
		tick := time.NewTimer(poll)
		defer tick.Stop()
		for {
			if cond != nil && cond() {
				return true
			}
			select {
			case <-ctx.Done():
				return false
			case <-deadline.C:
				return true
			case <-done:
				return true
			case <-progress.C:
				logProgress(phase)
			case <-tick.C:
				poll = min(2*poll, maxCondPoll)
				tick.Reset(poll)
			}
		}
	}
	setupDone := func() bool {
		return r.sum(func(p *poller) int64 { return p.attempted.Load() }) >= s.Conns.Planned &&
			r.sum(func(p *poller) int64 { return p.setup.Load() }) == 0
	}
	rampBound := time.Duration(float64(len(r.plan.conns))/cfg.Ramp*float64(time.Second)) + cfg.ConnectTimeout + time.Second
	stopped := func() bool { return false }
	if r.ctl != nil {
		// Commanded: the connections may take as long as the whole
		// machine needs for every process's (Duration bounds it all).
		rampBound = max(rampBound, cfg.Duration)
		stopped = r.ctl.stopped
		ready := setupDone
		setupDone = func() bool { return ready() || stopped() }
	}

	var loadgenRSS int64
	var fanout *FanoutStats
	var lanes []*lane
	var sendSec float64
	var sendStart time.Time
	switch cfg.Mode {
	case ModeIdle:
		ok := wait("connect", rampBound, setupDone)
		logProgress("connected")
		held := time.Now()
		if ok {
			wait("hold", cfg.Duration, stopped)
		}
		s.Idle = &IdleStats{HeldSec: round3(time.Since(held).Seconds())}
		if cfg.PID > 0 {
			after, err := readRSS(strconv.Itoa(cfg.PID))
			if err != nil {
				r.fatal("-pid: " + err.Error())
			} else {
				s.Idle.TargetPID, s.Idle.TargetRSSBeforeKiB, s.Idle.TargetRSSAfterKiB = cfg.PID, rssBefore, after
			}
		}
		loadgenRSS, _ = readRSS("self")
	case ModeFanout:
		ok := wait("connect", rampBound, setupDone)
		logProgress("connected")
		trig = newTrigger(t, &cfg, r.names, r.issued, r.tlsConfig)
		trig.resent = r.resent // the pollers' (set before they started)
		fanout = &FanoutStats{Channels: int64(len(r.plan.channels))}
		caughtUp := func() bool {
			for _, p := range r.pollers {
				if !p.caughtUp.Load() {
					return false
				}
			}
			return true
		}
		if ok && r.plan.receiveOnly {
			// The triggering shard waits for every subscription before
			// it sends, then sends for Duration, then the end events.
			wait("receive", rampBound+cfg.Duration+cfg.Drain, func() bool {
				for i := range r.endSent {
					if r.endSent[i].Load() < 0 {
						return false
					}
				}
				return true
			})
			r.sent = make([]int64, len(r.names))
			missing := 0
			for i := range r.endSent {
				r.sent[i] = max(0, r.endSent[i].Load())
				if r.endSent[i].Load() < 0 {
					missing++
				}
			}
			if missing > 0 {
				r.fatal(fmt.Sprintf("no %s event on %d of %d channels: their counts are unknown", endEvent, missing, len(r.names)))
			}
			r.publishFinal()
			logProgress("received")
			wait("drain", cfg.Drain, caughtUp)
			logProgress("drained")
		}
		if ok && r.ctl != nil {
			// The sending starts on "send" (or not at all on "stop").
			wait("ready", cfg.Duration, func() bool { return r.ctl.sending() || stopped() })
			ok = !stopped() && ctx.Err() == nil
		}
		if ok && !r.plan.receiveOnly {
			if cfg.ShardBy == ShardConns && cfg.Shards > 1 {
				r.awaitSubscribers(ctx, trig, rampBound, wait)
			}
			// Lanes: each owns some channels and sends their events in order.
			nl := min(cfg.Inflight, len(r.plan.channels))
			lanes = make([]*lane, nl)
			for i := range lanes {
				lanes[i] = &lane{}
			}
			for i, ch := range r.plan.channels {
				l := lanes[i%nl]
				l.chans = append(l.chans, ch)
			}
			// This shard's share of the rate and of the events.
			owned := float64(len(r.plan.channels)) / float64(cfg.Channels)
			var limit int64
			if cfg.Events > 0 {
				limit = max(1, int64(float64(cfg.Events)*owned+0.5))
			}
			for i, l := range lanes {
				share := float64(len(l.chans)) / float64(len(r.plan.channels))
				l.rate = cfg.Rate * owned * share
				l.phase = float64(i) / float64(nl)
				if limit > 0 {
					l.limit = limit / int64(nl)
					if int64(i) < limit%int64(nl) {
						l.limit++
					}
					if l.limit == 0 {
						l.limit = -1 // nothing for this lane
					}
				}
			}
			end := time.Now().Add(cfg.Duration)
			if cfg.Duration <= 0 {
				end = time.Now().Add(24 * time.Hour)
			}
			sctx, cancel := context.WithCancel(ctx)
			if r.ctl != nil {
				go func() {
					select {
					case <-r.ctl.stop:
						cancel()
					case <-sctx.Done():
					}
				}()
			}
			var lw sync.WaitGroup
			sendStart = time.Now()
			for _, l := range lanes {
				lw.Add(1)
				go func() {
					defer lw.Done()
					l.run(sctx, trig, end, cancel)
				}()
			}
			sendDone := make(chan struct{})
			go func() { lw.Wait(); close(sendDone) }()
			wait("send", time.Until(end)+time.Second, func() bool {
				select {
				case <-sendDone:
					return true
				default:
					return false
				}
			})
			cancel()
			<-sendDone
			sendSec = time.Since(sendStart).Seconds()
			r.sent = make([]int64, len(r.names))
			for _, l := range lanes {
				for i, ch := range l.chans {
					r.sent[ch] = l.sent[i]
				}
			}
			r.publishFinal()
			logProgress("sent")
			if cfg.ShardBy == ShardConns {
				if err := trig.sendEnd(ctx, r.plan.channels, r.sent, time.Now().Add(cfg.Drain)); err != nil {
					r.fatal(err.Error())
				}
			}
			wait("drain", cfg.Drain, caughtUp)
			logProgress("drained")
		}
		loadgenRSS, _ = readRSS("self")
	case ModeChurn:
		wait("churn", cfg.Duration, nil)
		// Let the connections already started finish.
		wait("finish", cfg.ConnectTimeout+time.Second, func() bool {
			return r.sum(func(p *poller) int64 { return p.setup.Load() }) == 0
		})
		loadgenRSS, _ = readRSS("self")
	}
	if ctx.Err() != nil {
		s.Interrupted = true
	}
	if r.sent == nil && cfg.Mode == ModeFanout {
		r.sent = make([]int64, len(r.names))
	}
	for _, p := range r.pollers {
		p.closeAll.Store(true)
		p.wake()
	}
	// Each connection has CloseGrace for the server's answer from when
	// its close goes out; sending 18,000 closes and reading their answers
	// takes a process seconds of its own when a hundred others share the
	// cores (every load generator of the million-socket run closed at
	// once, and none finished within CloseGrace + 5 s), so the bound
	// grows with the connections: a millisecond each.
	closeBound := cfg.CloseGrace + 5*time.Second + time.Duration(len(r.plan.conns))*time.Millisecond
	select {
	case <-done:
	case <-time.After(closeBound):
		r.fatal("pollers did not finish closing")
	}
	for _, p := range r.pollers {
		p.shutdown()
	}
	if trig != nil {
		trig.client.CloseIdleConnections()
	}

	// Fold the pollers' results in.
	s.Hist.Connect, s.Hist.Subscribe = &Hist{}, &Hist{}
	s.Conns.Failures = map[string]int64{}
	var lastRecv int64
	for _, p := range r.pollers {
		c := &s.Conns
		c.Attempted += p.attempted.Load()
		c.Established += p.established.Load()
		c.Subscribed += p.subscribed.Load()
		c.Failed += p.failed.Load()
		c.Dropped += p.dropped.Load()
		c.Reconnects += p.st.reconnects
		c.ClosedClean += p.st.closedClean
		c.PingsAnswered += p.st.pings
		c.WSPingsAnswered += p.st.wsPings
		addMap(&c.Failures, p.st.failures)
		s.Hist.Connect.Merge(&p.st.connect)
		s.Hist.Subscribe.Merge(&p.st.subscribe)
		lastRecv = max(lastRecv, p.lastRecv.Load())
	}
	if r.allName != "" {
		s.All, s.Hist.All = &AllStats{Channel: r.allName}, &Hist{}
		for _, p := range r.pollers {
			s.All.add(&p.st)
			s.Hist.All.Merge(&p.st.allLatency)
		}
	}
	if r.ctl != nil {
		names := r.ctl.phaseNames()
		for _, p := range r.pollers {
			for i := range p.st.phaseLatency {
				if s.Hist.Phases == nil {
					s.Hist.Phases = map[string]*Hist{}
				}
				h := s.Hist.Phases[names[i]]
				mergeHist(&h, &p.st.phaseLatency[i])
				s.Hist.Phases[names[i]] = h
			}
		}
	}
	if cfg.Mode == ModeIdle && s.Idle.TargetPID != 0 && s.Conns.Established > 0 {
		s.Idle.KiBPerConn = round3(float64(s.Idle.TargetRSSAfterKiB-s.Idle.TargetRSSBeforeKiB) / float64(s.Conns.Established))
	}
	if cfg.Mode == ModeFanout {
		f := fanout
		s.Hist.Latency, s.Hist.Trigger = &Hist{}, &Hist{}
		var firstRecv int64
		for _, p := range r.pollers {
			f.Subscribers += p.st.subscribersAtEnd
			f.Expected += p.st.expected
			f.Deliveries += p.st.delivered
			f.Missing += p.st.missing
			f.Duplicates += p.st.duplicates
			f.DuplicatesResent += p.st.duplicatesResent
			f.DuplicatesAcrossReconnect += p.st.duplicatesAcross
			f.OutOfOrder += p.st.outOfOrder
			f.Unexpected += p.st.extra
			f.Malformed += p.st.malformed
			f.Gap += p.st.gap
			f.GapReceived += p.st.gapReceived
			s.Hist.Latency.Merge(&p.st.latency)
			if v := p.firstRecv.Load(); v > 0 && (firstRecv == 0 || v < firstRecv) {
				firstRecv = v
			}
		}
		for _, l := range lanes {
			f.EventsSent += l.events
			f.Requests += l.requests
			s.Hist.Trigger.Merge(&l.hist)
		}
		f.RequestFailures = trig.fails
		if trig.fatal != "" {
			r.fatal(trig.fatal)
		}
		f.SendSec = sendSec
		if sendSec > 0 {
			f.EventsPerSec = float64(f.EventsSent) / sendSec
		}
		// A receive-only shard sends nothing: its deliveries are timed
		// from its first receipt.
		start := firstRecv
		if !sendStart.IsZero() {
			start = sendStart.UnixNano()
		}
		if lastRecv > 0 && start > 0 {
			f.ReceiveSec = float64(lastRecv-start) / 1e9
			if f.ReceiveSec > 0 {
				f.DeliveriesPerSec = float64(f.Deliveries) / f.ReceiveSec
			}
		}
		s.Fanout = f
	}
	if cfg.Mode == ModeChurn {
		window := cfg.Duration.Seconds()
		var completed int64
		for _, p := range r.pollers {
			completed += p.st.completed
		}
		s.Churn = &ChurnStats{WindowSec: window, Completed: completed}
		if window > 0 {
			s.Churn.HandshakesPerSec = float64(s.Conns.Established) / window
			s.Churn.CompletedPerSec = float64(completed) / window
		}
	}
	s.LoadgenRSSKiB = loadgenRSS
	s.ElapsedSec = time.Since(began).Seconds()
	r.errMu.Lock()
	s.Errors = append(s.Errors, r.errors...)
	r.errMu.Unlock()
	s.finish()
	if len(s.Errors) > 0 {
		return s, errors.New(s.Errors[0])
	}
	return s, nil
}

// awaitSubscribers waits, before a triggering shard of ShardConns sends,
// until the server counts every planned connection of every shard as
// subscribed: the receiving shards count every event of a channel as
// expected, so their connections must be in place first. It gives up
// after bound (connections that never subscribe fail by then), noting it
// in the summary's errors.
func (r *runner) awaitSubscribers(ctx context.Context, trig *trigger, bound time.Duration,
	wait func(string, time.Duration, func() bool) bool) {
	want := make(map[string]int64, len(r.names))
	for k := 0; k < r.cfg.Conns; k++ {
		want[r.names[k%r.cfg.Channels]]++
	}
	prefix := "lg-" + r.cfg.Run + "-"
	var have map[string]int64
	var lastErr error
	next, all := time.Now(), false
	wait("await_subscribers", bound, func() bool {
		if time.Now().Before(next) {
			return false
		}
		next = time.Now().Add(200 * time.Millisecond)
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		have, lastErr = trig.subscriptionCounts(qctx, prefix)
		cancel()
		if lastErr != nil {
			return false
		}
		all = true
		for name, n := range want {
			all = all && have[name] >= n
		}
		return all
	})
	if all {
		return
	}
	var in, planned int64
	for name, n := range want {
		in += min(have[name], n)
		planned += n
	}
	msg := fmt.Sprintf("sending with %d of %d subscriptions in place on the server", in, planned)
	if lastErr != nil {
		msg += " (" + lastErr.Error() + ")"
	}
	r.fatal(msg)
}

// publishFinal lets the pollers read r.sent, and wakes them to check
// whether they have caught up with it (an idle poller sleeps until woken).
func (r *runner) publishFinal() {
	r.sentFinal.Store(true)
	for _, p := range r.pollers {
		p.wake()
	}
}
