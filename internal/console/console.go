// Package console is every process's side of the dashboard (issue 11):
// the debug console's entries and the figures the dashboard sums.
//
//   - Record takes an entry of an app (a connection, a subscription, an
//     API message, a webhook...) and, only while a dashboard watches the
//     app, publishes it on resound.console.<app> (core NATS, never
//     stored). A dashboard says it watches with a lease on
//     resound.ctl.console.watch, renewed while its console is open.
//   - Run answers resound.ctl.stats with the process's figures per app.
//
// The console may lose entries; it must never slow what it watches. So
// Record never waits: unwatched, it is one atomic load (the callers check
// Watching first, so that they do not even build the entry); watched, it
// is capped at RESOUND_CONSOLE_RATE entries per second per app and
// queued for one publishing goroutine, and an entry that does not fit is
// dropped and counted. The next entry sent carries the count (Dropped),
// so the dashboard can say what it did not see.
package console

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/wire"
)

// Defaults and bounds.
const (
	// DefaultQueue is how many entries may wait for the publishing
	// goroutine, over all apps.
	DefaultQueue = 1024
	// MaxLease bounds how far ahead a watch request may hold a lease: a
	// dashboard renews it every few seconds, and a request from a clock
	// far ahead must not keep a process publishing for long after the
	// dashboard closed.
	MaxLease = time.Minute
	// RecentErrors is how many of an app's last error entries each
	// process keeps, watched or not, for the dashboard's "recent errors".
	RecentErrors = 50
	// MaxDetail bounds an entry's Detail, in bytes: a payload's first
	// bytes are enough to recognise it.
	MaxDetail = 200
	// maxField bounds the other free-text fields (channel lists, events).
	maxField = 1024
)

// Options configure a Console.
type Options struct {
	// Conn publishes the entries and carries the watch and stats
	// subscriptions.
	Conn *nats.Conn
	// Process names this process in its entries (a gateway's id).
	Process string
	// Apps are the app ids the process serves; entries of others are
	// ignored.
	Apps []string
	// Rate caps the entries sent per second per app (RESOUND_CONSOLE_RATE).
	Rate int
	// Queue bounds the entries waiting to be published (DefaultQueue if
	// zero).
	Queue int
	// Registry, when set, gets resound_console_entries_total.
	Registry *metrics.Registry
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	Log zerolog.Logger
}

// Console is a process's debug console and stats responder.
type Console struct {
	opts Options
	// apps is built by New and only read after: no lock to find an app.
	apps map[string]*appConsole
	// watched counts the apps under a lease: while it is 0, Watching is
	// one atomic load.
	watched atomic.Int32
	queue   chan queued
	// resound_console_entries_total, by result.
	sent, overRate, queueFull, failed prometheus.Counter
}

// appConsole is one app's console state in this process.
type appConsole struct {
	subject  string
	watching atomic.Bool

	mu sync.Mutex
	// untilMS is when the lease ends (unix ms).
	untilMS int64
	// The rate cap: the second being counted, the entries sent in it, and
	// the entries left out since the last one sent.
	second  int64
	sent    int
	dropped int
	// recent is a ring of the last error entries; next is where the next
	// one goes, count how many it holds.
	recent [RecentErrors]wire.ConsoleEntry
	next   int
	count  int
}

type queued struct {
	app *appConsole
	e   wire.ConsoleEntry
}

// New builds a console; Run serves it.
func New(opts Options) *Console {
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.Rate <= 0 {
		opts.Rate = 200
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Console{opts: opts, apps: make(map[string]*appConsole, len(opts.Apps)), queue: make(chan queued, opts.Queue)}
	for _, id := range opts.Apps {
		c.apps[id] = &appConsole{subject: Subject(id)}
	}
	reg := opts.Registry
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	results := metrics.NewConsole(reg)
	c.sent = results.WithLabelValues(metrics.ConsoleSent)
	c.overRate = results.WithLabelValues(metrics.ConsoleOverRate)
	c.queueFull = results.WithLabelValues(metrics.ConsoleQueueFull)
	c.failed = results.WithLabelValues(metrics.ConsoleFailed)
	return c
}

// Subject is where an app's entries are published.
func Subject(app string) string { return wire.ConsolePrefix + route.EscapeToken(app) }

// Watching reports whether a dashboard watches the app: callers check it
// before building an entry, so that an unwatched app costs them nothing
// but this. It never allocates.
func (c *Console) Watching(app string) bool {
	if c == nil || c.watched.Load() == 0 {
		return false
	}
	a := c.apps[app]
	return a != nil && a.watching.Load()
}

// Record takes an entry of an app. It never waits: while nobody watches
// the app the entry is dropped (an error is still kept for Recent), and
// while somebody does it is sent unless the app is over its rate or the
// queue is full. TimeMS and Process are filled in when unset; Detail is
// cut to MaxDetail bytes.
func (c *Console) Record(app string, e wire.ConsoleEntry) {
	if c == nil {
		return
	}
	isError := e.Kind == wire.ConsoleError
	if !isError && c.watched.Load() == 0 {
		return
	}
	a := c.apps[app]
	if a == nil || !isError && !a.watching.Load() {
		return
	}
	now := c.opts.Now()
	if e.TimeMS == 0 {
		e.TimeMS = now.UnixMilli()
	}
	if e.Process == "" {
		e.Process = c.opts.Process
	}
	e.Detail = Truncate(e.Detail, MaxDetail)
	e.Channel = Truncate(e.Channel, maxField)
	e.Event = Truncate(e.Event, maxField)
	a.mu.Lock()
	defer a.mu.Unlock()
	if isError {
		a.recent[a.next] = e
		a.next = (a.next + 1) % RecentErrors
		a.count = min(a.count+1, RecentErrors)
		if !a.watching.Load() {
			return
		}
	}
	if sec := now.Unix(); sec != a.second {
		a.second, a.sent = sec, 0
	}
	if a.sent >= c.opts.Rate {
		a.dropped++
		c.overRate.Inc()
		return
	}
	e.Dropped = a.dropped
	select {
	case c.queue <- queued{app: a, e: e}:
		a.sent++
		a.dropped = 0
	default:
		a.dropped++
		c.queueFull.Inc()
	}
}

// Recent is the app's last error entries this process recorded, oldest
// first.
func (c *Console) Recent(app string) []wire.ConsoleEntry {
	a := c.apps[app]
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]wire.ConsoleEntry, 0, a.count)
	for i := range a.count {
		out = append(out, a.recent[(a.next-a.count+i+RecentErrors)%RecentErrors])
	}
	return out
}

// StatsSource is one set of figures a process answers wire.Stats with:
// a gateway's, or a worker's. The all-in-one process has both.
type StatsSource struct {
	Kind    string // "gateway" or "worker"
	Process string // unique in the cluster
	// Stats returns the figures of one app, or of every app when app is
	// "". It is called on a NATS goroutine: it must be quick.
	Stats func(app string) map[string]wire.AppStats
}

// Stats kinds.
const (
	KindGateway = "gateway"
	KindWorker  = "worker"
)

// Run subscribes to the watch requests and, with stats, to the stats
// requests, and publishes the entries until ctx ends.
func (c *Console) Run(ctx context.Context, stats ...StatsSource) error {
	nc := c.opts.Conn
	watch, err := nc.Subscribe(wire.ConsoleWatch, c.onWatch)
	if err != nil {
		return err
	}
	defer func() { _ = watch.Unsubscribe() }()
	if len(stats) > 0 {
		sub, err := nc.Subscribe(wire.Stats, func(m *nats.Msg) { c.onStats(m, stats) })
		if err != nil {
			return err
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	expire := time.NewTicker(250 * time.Millisecond)
	defer expire.Stop()
	for {
		select {
		case q := <-c.queue:
			b, _ := json.Marshal(q.e)
			if err := nc.Publish(q.app.subject, b); err != nil {
				c.failed.Inc()
				continue
			}
			c.sent.Inc()
		case <-expire.C:
			c.expire()
		case <-ctx.Done():
			return nil
		}
	}
}

// onWatch takes or extends an app's lease.
func (c *Console) onWatch(m *nats.Msg) {
	defer c.recover()
	var req wire.ConsoleWatchRequest
	if json.Unmarshal(m.Data, &req) != nil {
		return
	}
	a := c.apps[req.App]
	if a == nil {
		return
	}
	now := c.opts.Now().UnixMilli()
	until := min(req.UntilMS, now+MaxLease.Milliseconds())
	if until <= now {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.untilMS = max(a.untilMS, until)
	if !a.watching.Load() {
		a.watching.Store(true)
		c.watched.Add(1)
		c.opts.Log.Debug().Str("app_id", req.App).Msg("debug console watched")
	}
}

// expire ends the leases that ran out.
func (c *Console) expire() {
	if c.watched.Load() == 0 {
		return
	}
	now := c.opts.Now().UnixMilli()
	for id, a := range c.apps {
		if !a.watching.Load() {
			continue
		}
		a.mu.Lock()
		if a.untilMS <= now {
			a.watching.Store(false)
			a.untilMS = 0
			c.watched.Add(-1)
			c.opts.Log.Debug().Str("app_id", id).Msg("debug console no longer watched")
		}
		a.mu.Unlock()
	}
}

// onStats answers a stats request once per source.
func (c *Console) onStats(m *nats.Msg, sources []StatsSource) {
	defer c.recover()
	var req wire.StatsRequest
	if m.Reply == "" || json.Unmarshal(m.Data, &req) != nil {
		return
	}
	if req.App != "" && c.apps[req.App] == nil {
		return
	}
	for _, src := range sources {
		b, _ := json.Marshal(wire.StatsReply{Process: src.Process, Kind: src.Kind, Apps: src.Stats(req.App)})
		_ = m.Respond(b)
	}
}

// recover, deferred in a NATS handler, keeps a panic there from killing
// the connection's delivery goroutine.
func (c *Console) recover() {
	if r := recover(); r != nil {
		c.opts.Log.Error().Interface("panic", r).Msg("console: recovered from a panic")
	}
}

// Truncate cuts s to at most n bytes, on a character boundary, marking
// the cut with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// WorkerStats makes a worker's StatsSource figures: every app, with the
// webhook counters that counters gives (nil: none yet, all 0).
func WorkerStats(apps []string, counters func(app string) wire.AppStats) func(app string) map[string]wire.AppStats {
	return func(app string) map[string]wire.AppStats {
		out := make(map[string]wire.AppStats, len(apps))
		for _, id := range apps {
			if app != "" && id != app {
				continue
			}
			var st wire.AppStats
			if counters != nil {
				st = counters(id)
			}
			out[id] = st
		}
		return out
	}
}
