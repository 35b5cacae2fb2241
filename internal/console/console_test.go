package console

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/wire"
)

// clock is a test's time, moved by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// running starts a console on a real NATS server and returns it with a
// second connection, for the dashboard's side.
func running(t *testing.T, opts Options, stats ...StatsSource) (*Console, *nats.Conn) {
	t.Helper()
	srv := natstest.Server(t, false)
	opts.Conn = natstest.Conn(t, srv, "console")
	opts.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	c := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, stats...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return c, natstest.Conn(t, srv, "dashboard")
}

// watch leases the app to the console and waits until it holds.
func watch(t *testing.T, nc *nats.Conn, c *Console, app string, until time.Time) {
	t.Helper()
	b, _ := json.Marshal(wire.ConsoleWatchRequest{App: app, UntilMS: until.UnixMilli()})
	if err := nc.Publish(wire.ConsoleWatch, b); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !c.Watching(app) {
		if time.Now().After(deadline) {
			t.Fatal("the lease was not taken")
		}
		time.Sleep(time.Millisecond)
	}
}

func next(t *testing.T, sub *nats.Subscription) wire.ConsoleEntry {
	t.Helper()
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var e wire.ConsoleEntry
	if err := json.Unmarshal(m.Data, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestNothingPublishedUnwatched(t *testing.T) {
	c, nc := running(t, Options{Process: "gw1", Apps: []string{"a", "b"}, Rate: 100})
	sub, err := nc.SubscribeSync(wire.ConsolePrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleSubscribed, Channel: "before"})
	}
	// Watching b does not open a.
	watch(t, nc, c, "b", time.Now().Add(time.Minute))
	c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleSubscribed, Channel: "a-while-b-watched"})
	c.Record("b", wire.ConsoleEntry{Kind: wire.ConsoleSubscribed, Channel: "marker"})
	// One publisher, one subscriber: NATS keeps the order, so the first
	// entry seen is the first one sent.
	e := next(t, sub)
	if e.Channel != "marker" || e.Process != "gw1" || e.TimeMS == 0 || e.Dropped != 0 {
		t.Fatalf("first entry published: %+v", e)
	}
	if m, err := sub.NextMsg(0); err == nil {
		t.Fatalf("more was published: %s", m.Data)
	}
}

func TestRateCapDropsAndSays(t *testing.T) {
	clk := &clock{t: time.Now()}
	reg := metrics.NewRegistry()
	c, nc := running(t, Options{Process: "gw1", Apps: []string{"a"}, Rate: 5, Now: clk.now, Registry: reg})
	sub, _ := nc.SubscribeSync(Subject("a"))
	_ = nc.Flush()
	watch(t, nc, c, "a", clk.now().Add(time.Minute))
	for i := range 12 {
		c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleClientEvent, Event: "client-" + string(rune('a'+i))})
	}
	clk.add(time.Second)
	c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleClientEvent, Event: "client-next"})
	for i := range 5 {
		if e := next(t, sub); e.Event != "client-"+string(rune('a'+i)) || e.Dropped != 0 {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
	if e := next(t, sub); e.Event != "client-next" || e.Dropped != 7 {
		t.Fatalf("the entry after the cap: %+v, want Dropped 7", e)
	}
	results := metricsOf(t, reg)
	if results[metrics.ConsoleOverRate] != 7 || results[metrics.ConsoleSent] != 6 {
		t.Fatalf("resound_console_entries_total: %v", results)
	}
}

func metricsOf(t *testing.T, reg *metrics.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "resound_console_entries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// A full queue drops and counts, and the next entry that fits says so.
// The console is not running here: nothing drains the queue.
func TestQueueFullDrops(t *testing.T) {
	reg := metrics.NewRegistry()
	c := New(Options{Process: "gw1", Apps: []string{"a"}, Rate: 100, Queue: 2, Registry: reg})
	c.onWatch(&nats.Msg{Data: []byte(`{"app":"a","until_ms":` + itoa(time.Now().Add(time.Minute).UnixMilli()) + `}`)})
	if !c.Watching("a") {
		t.Fatal("not watching")
	}
	for range 5 {
		c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleConnection})
	}
	if got := metricsOf(t, reg)[metrics.ConsoleQueueFull]; got != 3 {
		t.Fatalf("queue_full = %v, want 3", got)
	}
	<-c.queue
	c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleConnection, SocketID: "1.2"})
	<-c.queue
	if q := <-c.queue; q.e.SocketID != "1.2" || q.e.Dropped != 3 {
		t.Fatalf("after the drops: %+v", q.e)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestLeaseLapses(t *testing.T) {
	clk := &clock{t: time.Now()}
	c := New(Options{Apps: []string{"a"}, Now: clk.now})
	watchFor := func(d time.Duration) {
		b, _ := json.Marshal(wire.ConsoleWatchRequest{App: "a", UntilMS: clk.now().Add(d).UnixMilli()})
		c.onWatch(&nats.Msg{Data: b})
	}
	watchFor(10 * time.Second)
	clk.add(5 * time.Second)
	watchFor(10 * time.Second) // renewed
	clk.add(9 * time.Second)
	c.expire()
	if !c.Watching("a") {
		t.Fatal("a renewed lease lapsed early")
	}
	clk.add(2 * time.Second)
	c.expire()
	if c.Watching("a") {
		t.Fatal("the lease did not lapse")
	}
	// A lease far ahead is held MaxLease at most.
	watchFor(24 * time.Hour)
	clk.add(MaxLease + time.Second)
	c.expire()
	if c.Watching("a") {
		t.Fatal("a lease held past MaxLease")
	}
	// Leases of unknown apps are ignored.
	b, _ := json.Marshal(wire.ConsoleWatchRequest{App: "nope", UntilMS: clk.now().Add(time.Minute).UnixMilli()})
	c.onWatch(&nats.Msg{Data: b})
	if c.watched.Load() != 0 || c.Watching("nope") {
		t.Fatal("an unknown app is watched")
	}
}

func TestRecentErrorsKeptUnwatched(t *testing.T) {
	c := New(Options{Process: "gw1", Apps: []string{"a"}})
	for i := range RecentErrors + 5 {
		c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleError, Detail: "4009 no " + itoa(int64(i))})
		c.Record("a", wire.ConsoleEntry{Kind: wire.ConsoleConnection})
	}
	got := c.Recent("a")
	if len(got) != RecentErrors || got[0].Detail != "4009 no 5" || got[len(got)-1].Detail != "4009 no 54" || got[0].Process != "gw1" {
		t.Fatalf("recent: %d entries, first %+v", len(got), got[0])
	}
	if len(c.queue) != 0 {
		t.Fatal("an unwatched error was queued")
	}
	if c.Recent("b") != nil {
		t.Fatal("recent errors of an unknown app")
	}
}

func TestStatsAnswered(t *testing.T) {
	gw := func(app string) map[string]wire.AppStats {
		return map[string]wire.AppStats{"a": {Connections: 3, MessagesIn: 7}}
	}
	hooks := func(app string) wire.AppStats { return wire.AppStats{WebhooksSent: 2} }
	_, nc := running(t, Options{Apps: []string{"a", "b"}},
		StatsSource{Kind: KindGateway, Process: "gw1", Stats: gw},
		StatsSource{Kind: KindWorker, Process: "w1", Stats: WorkerStats([]string{"a", "b"}, hooks)})
	inbox := nc.NewRespInbox()
	sub, _ := nc.SubscribeSync(inbox)
	b, _ := json.Marshal(wire.StatsRequest{App: "b"})
	// The console subscribes as it starts: ask until it answers.
	var replies []wire.StatsReply
	deadline := time.Now().Add(5 * time.Second)
	for len(replies) < 2 && time.Now().Before(deadline) {
		if len(replies) == 0 {
			_ = nc.PublishRequest(wire.Stats, inbox, b)
		}
		m, err := sub.NextMsg(100 * time.Millisecond)
		if err != nil {
			continue
		}
		var r wire.StatsReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		replies = append(replies, r)
	}
	if len(replies) != 2 {
		t.Fatalf("replies: %+v", replies)
	}
	for _, r := range replies {
		switch r.Kind {
		case KindWorker:
			if r.Process != "w1" || len(r.Apps) != 1 || r.Apps["b"].WebhooksSent != 2 {
				t.Fatalf("worker's reply: %+v", r)
			}
		case KindGateway:
			if r.Process != "gw1" || r.Apps["a"].Connections != 3 {
				t.Fatalf("gateway's reply: %+v", r)
			}
		default:
			t.Fatalf("reply: %+v", r)
		}
	}
}

// Unwatched, Record and Watching cost an atomic load: nothing is built or
// allocated.
func TestUnwatchedAllocatesNothing(t *testing.T) {
	c := New(Options{Apps: []string{"a"}})
	e := wire.ConsoleEntry{Kind: wire.ConsoleSubscribed, SocketID: "1.1", Channel: "chat"}
	if n := testing.AllocsPerRun(1000, func() {
		if c.Watching("a") {
			t.Fatal("watching")
		}
		c.Record("a", e)
	}); n != 0 {
		t.Fatalf("%v allocations per unwatched entry", n)
	}
	var nilConsole *Console
	nilConsole.Record("a", e) // a process without a console
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	got := Truncate(long, MaxDetail)
	if len(got) > MaxDetail || !strings.HasSuffix(got, "…") || !json.Valid([]byte(`"`+got+`"`)) {
		t.Fatalf("Truncate: %d bytes %q", len(got), got)
	}
	if Truncate("short", MaxDetail) != "short" {
		t.Fatal("cut a short string")
	}
}
