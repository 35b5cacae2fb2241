package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/worker"
	"github.com/resoundhq/resound/protocol"
)

const (
	appID = "app.1" // a dot, to exercise subject escaping
	// wait bounds every wait for a delivery. A delivery lost with the
	// link comes back an ack wait (5 s) later, and the lane then holds
	// what it has for the ack wait and a second more (internal/ordered), so a
	// recovery takes up to about 11 s.
	wait = 20 * time.Second
)

type env struct {
	ns     *natsembed.Server
	js     jetstream.JetStream
	stream jetstream.Stream
	pub    *queue.Publisher
	sub    *nats.Conn // a separate connection, as a gateway's would be
	pool   *worker.Pool
	reg    *metrics.Registry // the pool's metrics
}

// start runs an embedded JetStream, the job stream, and a worker pool that
// knows only appID. with, if any, change the pool's options.
func start(t *testing.T, workers int, with ...func(*worker.Options)) *env {
	t.Helper()
	ns := natstest.Server(t, false)
	e := &env{ns: ns}
	var err error

	nc := connect(t, ns, "producer")
	if e.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Deliveries are confirmed by the history stream.
	if _, err := history.Ensure(ctx, e.js, history.Options{MaxAge: time.Hour, MaxBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if e.stream, err = queue.EnsureStream(ctx, e.js, queue.StreamOptions{MaxBytes: 64 << 20, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	e.pub = queue.NewPublisher(e.js)
	e.sub = connect(t, ns, "subscriber")

	e.reg = metrics.NewRegistry()
	e.pool = worker.New(poolOptions(t, ns, "worker", append([]func(*worker.Options){func(o *worker.Options) {
		o.Workers, o.Metrics = workers, metrics.NewWorker(e.reg, func() float64 { return 0 })
	}}, with...)...))
	runPool(t, e.pool)
	return e
}

// runPool runs pool until the test ends, then checks that it stops.
func runPool(t *testing.T, pool *worker.Pool) {
	t.Helper()
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

func connect(t *testing.T, ns *natsembed.Server, name string) *nats.Conn {
	t.Helper()
	return natstest.Conn(t, ns, name)
}

// subscribe listens on subject with core NATS, as a gateway does.
func (e *env) subscribe(t *testing.T, subject string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 1024)
	sub, err := e.sub.ChanSubscribe(subject, ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.sub.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func (e *env) publish(t *testing.T, job *queue.Job) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	seq, err := e.pub.Publish(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// publishRaw puts bytes on an app's job subject, as any NATS client could.
func (e *env) publishRaw(t *testing.T, app string, data []byte) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ack, err := e.js.Publish(ctx, queue.Subject(app, "raw"), data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func receive(t *testing.T, ch chan *nats.Msg) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(wait):
		t.Fatalf("no delivery within %v", wait)
		return nil
	}
}

// eventually polls cond until it holds or the generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// streamJobs counts the jobs in the job stream, the anchor not counted.
func (e *env) streamJobs(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	n, err := queue.Jobs(ctx, e.stream)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type delivery struct {
	seq     uint64
	exclude string
	event   map[string]any
}

// decode checks that m is a delivery envelope around one complete,
// unmasked, final WebSocket text frame, and returns its parts.
func decode(t *testing.T, m *nats.Msg) delivery {
	t.Helper()
	env, err := route.ParseDelivery(m.Data)
	seq, exclude, frame := env.Seq, env.ExcludeSocketID, env.Frame
	if err != nil {
		t.Fatalf("ParseDelivery(% x): %v", m.Data, err)
	}
	r := bytes.NewReader(frame)
	h, err := ws.ReadHeader(r)
	if err != nil {
		t.Fatalf("frame % x: %v", frame, err)
	}
	if !h.Fin || h.OpCode != ws.OpText || h.Masked || h.Rsv != 0 {
		t.Fatalf("frame header %+v, want a final unmasked text frame", h)
	}
	payload, _ := io.ReadAll(r)
	if int64(len(payload)) != h.Length {
		t.Fatalf("frame declares %d payload bytes and carries %d", h.Length, len(payload))
	}
	var ev map[string]any
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&ev); err != nil {
		t.Fatalf("frame payload %q: %v", payload, err)
	}
	return delivery{seq: seq, exclude: string(exclude), event: ev}
}

func TestJobIsDeliveredAndAcked(t *testing.T) {
	e := start(t, 4)
	channel := "private-orders.42"
	ch := e.subscribe(t, route.Subject(appID, channel))
	// The data is the producer's string; it must come out byte for byte.
	data := `{"id":42,"note":"<b>&amp;\u00e9 \"quoted\"","nested":{"a":[1,2]}}`
	seq := e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{
		{Name: `App\Events\OrderShipped`, Data: data, Channels: []string{channel}, SocketID: "123.456"},
	}})

	m := receive(t, ch)
	if m.Subject != route.Subject(appID, channel) {
		t.Fatalf("delivered on %q", m.Subject)
	}
	d := decode(t, m)
	if d.seq != seq {
		t.Errorf("Seq = %d, want the job's stream sequence %d", d.seq, seq)
	}
	if d.exclude != "123.456" {
		t.Errorf("ExcludeSocketID = %q, want 123.456", d.exclude)
	}
	want := map[string]any{"event": `App\Events\OrderShipped`, "channel": channel, "data": data}
	if len(d.event) != len(want) {
		t.Errorf("event has keys %v, want exactly event, channel, data", d.event)
	}
	for k, v := range want {
		if d.event[k] != v {
			t.Errorf("%s = %#v, want %#v", k, d.event[k], v)
		}
	}
	eventually(t, "job acked and removed from the stream", func() bool { return e.streamJobs(t) == 0 })
	eventually(t, "Stats().Jobs == 1", func() bool { return e.pool.Stats().Jobs.Load() == 1 })
	if got := e.pool.Stats().Deliveries.Load(); got != 1 {
		t.Errorf("Stats().Deliveries = %d, want 1", got)
	}
	if got := e.pool.Stats().Rejected.Load(); got != 0 {
		t.Errorf("Stats().Rejected = %d, want 0", got)
	}
}

func TestNoExcludeWithoutSocketID(t *testing.T) {
	e := start(t, 1)
	ch := e.subscribe(t, route.Subject(appID, "c"))
	e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{{Name: "e", Data: "", Channels: []string{"c"}}}})
	d := decode(t, receive(t, ch))
	if d.exclude != "" || d.event["data"] != "" {
		t.Fatalf("got exclude %q, event %v", d.exclude, d.event)
	}
}

func TestJobWithManyChannelsAndEvents(t *testing.T) {
	e := start(t, 4)
	channels := []string{"a", "b.c", "presence-room", "d", "e", "f", "g", "h"}
	all := e.subscribe(t, route.DeliverPrefix+route.EscapeToken(appID)+".*")
	last := e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{
		{Name: "first", Data: "1", Channels: channels},
		{Name: "second", Data: "2", Channels: channels},
	}})
	// The job is stored as one part per channel, published together: the
	// parts take the sequences up to the last one's. Per channel: first
	// then second, each once, with that channel's part's sequence.
	got := map[string][]string{}
	seqOf := map[string]uint64{}
	for i := 0; i < 2*len(channels); i++ {
		m := receive(t, all)
		d := decode(t, m)
		if d.seq > last || d.seq <= last-uint64(len(channels)) {
			t.Fatalf("seq %d, want one of the batch's %d..%d", d.seq, last-uint64(len(channels))+1, last)
		}
		if prev, ok := seqOf[m.Subject]; ok && prev != d.seq {
			t.Fatalf("channel %s delivered from parts %d and %d", m.Subject, prev, d.seq)
		}
		seqOf[m.Subject] = d.seq
		name := d.event["channel"].(string)
		if m.Subject != route.Subject(appID, name) {
			t.Fatalf("channel %q delivered on %q", name, m.Subject)
		}
		got[name] = append(got[name], d.event["event"].(string))
	}
	for _, c := range channels {
		if fmt.Sprint(got[c]) != "[first second]" {
			t.Errorf("channel %q got %v, want [first second]", c, got[c])
		}
	}
	eventually(t, "every part acked once", func() bool {
		return e.pool.Stats().Jobs.Load() == uint64(len(channels)) && e.streamJobs(t) == 0
	})
}

func TestEventsOnOneChannelStayInOrder(t *testing.T) {
	e := start(t, 4)
	const total = 200
	ch := e.subscribe(t, route.Subject(appID, "seq"))
	// Noise on other channels, spread over the shards.
	seqs := make([]uint64, total)
	for i := 0; i < total; i++ {
		seqs[i] = e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{
			{Name: "tick", Data: fmt.Sprint(i), Channels: []string{"seq", fmt.Sprintf("other-%d", i%7)}},
		}})
	}
	// Each job is two parts ("seq" first, then the noise channel), so the
	// part on "seq" is the one before the last.
	for i := 0; i < total; i++ {
		d := decode(t, receive(t, ch))
		if d.event["data"] != fmt.Sprint(i) || d.seq != seqs[i]-1 {
			t.Fatalf("delivery %d carried data %v seq %d, want %d seq %d", i, d.event["data"], d.seq, i, seqs[i]-1)
		}
	}
	eventually(t, "all parts acked", func() bool { return e.pool.Stats().Jobs.Load() == 2*total && e.streamJobs(t) == 0 })
}

// Invalid jobs are never delivered: each is set aside in the dead-letter
// stream, untried, and terminated.
func TestInvalidJobsAreDeadLettered(t *testing.T) {
	e := start(t, 4)
	all := e.subscribe(t, route.DeliverPrefix+">")
	valid := func(data string) *queue.Job {
		return &queue.Job{AppID: appID, Events: []protocol.Trigger{{Name: "ok", Data: data, Channels: []string{"c"}}}}
	}
	bad := []struct {
		name string
		pub  func() uint64
	}{
		{"unknown app", func() uint64 {
			return e.publish(t, &queue.Job{AppID: "nobody", Events: []protocol.Trigger{{Name: "e", Data: "d", Channels: []string{"c"}}}})
		}},
		{"invalid JSON", func() uint64 { return e.publishRaw(t, appID, []byte(`{"app_id":`)) }},
		{"pusher: event name", func() uint64 {
			return e.publish(t, &queue.Job{AppID: appID, Events: []protocol.Trigger{{Name: "pusher:subscribe", Data: "d", Channels: []string{"c"}}}})
		}},
		{"app_id of the subject, not in the body", func() uint64 {
			return e.publishRaw(t, appID, []byte(`{"events":[{"name":"e","data":"d","channels":["c"]}]}`))
		}},
		{"no events", func() uint64 { return e.publishRaw(t, appID, []byte(`{"app_id":"`+appID+`","events":[]}`)) }},
		{"JSON that is not an object", func() uint64 { return e.publishRaw(t, appID, []byte(`[1,2]`)) }},
	}
	for i, b := range bad {
		b.pub()
		// Jobs on different subjects may sit in different partitions and be
		// worked in parallel, so wait for the rejection itself. A valid job
		// after it still gets through, and the first delivery seen is that
		// job's: nothing was published for the invalid one.
		eventually(t, fmt.Sprintf("%q rejected", b.name), func() bool { return e.pool.Stats().Rejected.Load() == uint64(i+1) })
		want := fmt.Sprint(i)
		seq := e.publish(t, valid(want))
		d := decode(t, receive(t, all))
		if d.event["data"] != want || d.seq != seq {
			t.Fatalf("after %q: got data %v seq %d, want %s seq %d", b.name, d.event["data"], d.seq, want, seq)
		}
	}
	eventually(t, "every job removed from the stream", func() bool { return e.streamJobs(t) == 0 })
	eventually(t, "valid jobs acked", func() bool { return e.pool.Stats().Jobs.Load() == uint64(len(bad)) })
	select {
	case m := <-all:
		t.Fatalf("unexpected delivery %q on %s", m.Data, m.Subject)
	default:
	}
	if got := e.pool.Stats().Deliveries.Load(); got != uint64(len(bad)) {
		t.Fatalf("Stats().Deliveries = %d, want %d", got, len(bad))
	}
	dls := deadLetters(t, e.js)
	if len(dls) != len(bad) {
		t.Fatalf("%d dead letters, want %d", len(dls), len(bad))
	}
	for i, dl := range dls {
		if dl.Header.Get(queue.HeaderReason) == "" || dl.Header.Get(queue.HeaderDeliveries) != "1" {
			t.Errorf("dead letter of %q: headers %v", bad[i].name, dl.Header)
		}
	}
	if got := counter(t, e.reg, "resound_jobs_total", "rejected"); got != float64(len(bad)) {
		t.Errorf("resound_jobs_total{result=rejected} = %v, want %d", got, len(bad))
	}
	if got := counter(t, e.reg, "resound_jobs_total", "dead_lettered"); got != float64(len(bad)) {
		t.Errorf("resound_jobs_total{result=dead_lettered} = %v, want %d", got, len(bad))
	}
}

// startStream runs an embedded JetStream with the job stream and no
// worker, and connects to it as name.
func startStream(t *testing.T, name string) (*natsembed.Server, *nats.Conn, jetstream.JetStream, context.Context) {
	t.Helper()
	ns := natstest.Server(t, false)
	nc := connect(t, ns, name)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	// Deliveries are confirmed by the history stream.
	if _, err := history.Ensure(ctx, js, history.Options{MaxAge: time.Hour, MaxBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	return ns, nc, js, ctx
}

// A job that waited in the stream while no worker ran is delivered once
// one starts.
func TestJobQueuedBeforeWorkersStart(t *testing.T) {
	_, nc, js, ctx := startStream(t, "all")
	ch := make(chan *nats.Msg, 4)
	if _, err := nc.ChanSubscribe(route.Subject(appID, "late"), ch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	seq, err := queue.NewPublisher(js).Publish(ctx, &queue.Job{AppID: appID, Events: []protocol.Trigger{{Name: "e", Data: "waited", Channels: []string{"late"}}}})
	if err != nil {
		t.Fatal(err)
	}
	pool := worker.New(worker.Options{Conn: nc, JetStream: js, Apps: func(id string) bool { return id == appID }, Limits: protocol.DefaultLimits})
	runPool(t, pool)
	d := decode(t, receive(t, ch))
	if d.seq != seq || d.event["data"] != "waited" {
		t.Fatalf("got seq %d %v", d.seq, d.event)
	}
}

// After the worker reconnects to NATS, a job waits for every gateway the
// registry lists to answer that it is back: published earlier, its
// delivery would miss a gateway that has not resubscribed yet, and be
// acked all the same.
func TestJobsWaitForGatewaysAfterReconnect(t *testing.T) {
	ns, _, js, ctx := startStream(t, "producer")
	stores, err := cluster.Ensure(ctx, js, cluster.Options{GatewayTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// A gateway the registry lists, but whose connection is not back yet.
	if _, err := stores.Gateways.Put(ctx, "gw-late", []byte("x")); err != nil {
		t.Fatal(err)
	}
	wc := connect(t, ns, "worker")
	wjs, err := jetstream.New(wc)
	if err != nil {
		t.Fatal(err)
	}
	reconnected := make(chan struct{}, 1)
	wc.SetReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })
	pool := worker.New(worker.Options{Conn: wc, JetStream: wjs, Stores: stores, Apps: func(id string) bool { return id == appID },
		Limits: protocol.DefaultLimits, ReconnectHold: time.Minute}) // far longer than the test waits: only the answer ends it
	runPool(t, pool)

	// Run installs its handler around ours; wait until it has, then cut
	// the worker off.
	eventually(t, "worker registered", func() bool {
		ks, _ := stores.Workers.Keys(ctx)
		return len(ks) == 1
	})
	if err := ns.Disconnect(wc); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reconnected:
	case <-time.After(wait):
		t.Fatal("worker did not reconnect")
	}
	seq, err := queue.NewPublisher(js).Publish(ctx, &queue.Job{AppID: appID, Events: []protocol.Trigger{{Name: "e", Data: "held", Channels: []string{"late"}}}})
	if err != nil {
		t.Fatal(err)
	}
	// The worker has the job and holds it, unacked.
	eventually(t, "job delivered to the worker and held", func() bool { return ackPending(ctx, js) == 1 })
	// Only now does the gateway come back: subscriptions first, as nats.go
	// resends them on reconnect, then its answer.
	gw := connect(t, ns, "gw-late")
	ch := make(chan *nats.Msg, 4)
	if _, err := gw.ChanSubscribe(route.Subject(appID, "late"), ch); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.Subscribe(cluster.ReadySubject, func(m *nats.Msg) { _ = m.Respond([]byte("gw-late")) }); err != nil {
		t.Fatal(err)
	}
	if err := gw.Flush(); err != nil {
		t.Fatal(err)
	}
	d := decode(t, receive(t, ch))
	if d.seq != seq || d.event["data"] != "held" {
		t.Fatalf("got seq %d %v", d.seq, d.event)
	}
}

// ackPending is how many jobs the workers hold unacked, over every
// partition; -1 if it cannot be read.
func ackPending(ctx context.Context, js jetstream.JetStream) int {
	var held int
	for k := 0; k < queue.DefaultPartitions; k++ {
		c, err := js.Consumer(ctx, queue.StreamName, queue.ConsumerName(k))
		if err != nil {
			return -1
		}
		info, err := c.Info(ctx)
		if err != nil {
			return -1
		}
		held += info.NumAckPending
	}
	return held
}

// deadLetters returns every message in the dead-letter stream, in order.
func deadLetters(t *testing.T, js jetstream.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := js.Stream(ctx, queue.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// counter reads the counter name{label=value} (the metric's one label)
// from reg.
func counter(t *testing.T, reg *metrics.Registry, name, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if ls := m.GetLabel(); len(ls) == 1 && ls[0].GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{%q}", name, value)
	return 0
}
