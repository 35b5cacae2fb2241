package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/tcpproxy"
	"github.com/resoundhq/resound/protocol"
)

const testLanes = 4

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// hookStream makes the webhook stream, of maxBytes (0: no bound).
func hookStream(t *testing.T, js jetstream.JetStream, maxBytes int64) jetstream.Stream {
	t.Helper()
	if maxBytes == 0 {
		maxBytes = -1
	}
	st, err := EnsureStream(testContext(t), js, StreamOptions{MaxBytes: maxBytes, RetryFor: time.Minute, Lanes: testLanes})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newTestRecorder(t *testing.T, nc *nats.Conn, tweak func(*RecorderOptions)) *Recorder {
	t.Helper()
	opts := RecorderOptions{Conn: nc, Lanes: testLanes, Source: "gw-test", Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	if tweak != nil {
		tweak(&opts)
	}
	r, err := NewRecorder(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run runs r until the test ends (or stop is called), and waits for it.
func run(t *testing.T, r *Recorder) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// stored waits until the stream holds want records, and reads them in
// stream order. By sequence, not with a consumer: the stream is a work
// queue, which takes only the lanes' own (explicitly acked) consumers,
// and reading must not take the records from the senders' lanes.
func stored(t *testing.T, js jetstream.JetStream, want int) []Record {
	t.Helper()
	ctx := testContext(t)
	st, err := js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, fmt.Sprintf("%d records stored", want), func() bool { return storedCount(t, st) >= uint64(want) })
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []Record
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("record %d: %v", seq, err)
		}
		var rec Record
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			t.Fatalf("record %s: %v", m.Data, err)
		}
		out = append(out, rec)
	}
	if len(out) != want {
		t.Fatalf("%d records stored, want %d", len(out), want)
	}
	return out
}

// storedCount is how many records the stream holds.
func storedCount(t *testing.T, st jetstream.Stream) uint64 {
	t.Helper()
	info, err := st.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// eventually waits until cond holds, failing after the deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func clientEvent(channel string, i int) Record {
	return Record{Event: protocol.WebhookEvent{
		Name: protocol.WebhookClientEvent, Channel: channel, Event: "client-n", Data: fmt.Sprint(i), SocketID: "1.1",
	}}
}

// checkOrder checks that each channel's records came in the order they
// were recorded (their Data is their index), each once.
func checkOrder(t *testing.T, recs []Record, channels []string, perChannel int) {
	t.Helper()
	next := map[string]int{}
	for _, r := range recs {
		if want := fmt.Sprint(next[r.Event.Channel]); r.Event.Data != want {
			t.Fatalf("on %s: record %s, want %s", r.Event.Channel, r.Event.Data, want)
		}
		next[r.Event.Channel]++
	}
	for _, ch := range channels {
		if next[ch] != perChannel {
			t.Fatalf("%s: %d records, want %d", ch, next[ch], perChannel)
		}
	}
}

// TestRecorderStoresInOrder: records of several channels, over several
// lanes, are all stored, each channel's in the order recorded, with the
// time and revision they were given.
func TestRecorderStoresInOrder(t *testing.T) {
	nc, js := natstest.JetStream(t, "recorder")
	hookStream(t, js, 0)
	reg := prometheus.NewRegistry()
	r := newTestRecorder(t, nc, func(o *RecorderOptions) { o.Registry = reg })
	run(t, r)
	channels := []string{"a", "b", "c", "d", "e", "f"}
	const per = 50
	for i := range per {
		for _, ch := range channels {
			if !r.Record("app", clientEvent(ch, i)) {
				t.Fatal("record refused")
			}
		}
	}
	rev := Record{TimeMS: 1234, Rev: 99, Event: protocol.WebhookEvent{Name: protocol.WebhookChannelOccupied, Channel: "z"}}
	r.Record("app", rev)
	recs := stored(t, js, len(channels)*per+1)
	var rest []Record
	for _, rec := range recs {
		switch {
		case rec.Event.Channel == "z":
			if rec != rev {
				t.Fatalf("stored %+v, want %+v", rec, rev)
			}
		case rec.TimeMS == 0:
			t.Fatalf("no time on %+v", rec)
		default:
			rest = append(rest, rec)
		}
	}
	checkOrder(t, rest, channels, per)
	eventually(t, "all counted stored", func() bool { return r.Stored() == uint64(len(recs)) && r.Queued() == 0 })
	if got := counterOf(t, reg, "stored"); got != float64(len(recs)) {
		t.Fatalf("resound_webhook_records_total{result=stored} = %v", got)
	}
}

// counterOf reads resound_webhook_records_total{result} from reg.
func counterOf(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "resound_webhook_records_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no resound_webhook_records_total{result=%q}", result)
	return 0
}

// TestRecorderRepublishIsStoredOnce: a record published again (its PubAck
// was lost, or came too late) carries the same Nats-Msg-Id, and the
// stream stores it once.
func TestRecorderRepublishIsStoredOnce(t *testing.T) {
	nc, js := natstest.JetStream(t, "recorder")
	st := hookStream(t, js, 0)
	r := newTestRecorder(t, nc, nil)
	r.Record("app", clientEvent("a", 0))
	heads := r.heads()
	if len(heads) != 1 {
		t.Fatalf("heads %v", heads)
	}
	for range 3 {
		f, err := r.publishOne(heads[0])
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	if n := storedCount(t, st); n != 1 {
		t.Fatalf("stored %d times", n)
	}
	// A record of another gateway with the same sequence is another record.
	other := newTestRecorder(t, nc, func(o *RecorderOptions) { o.Source = "gw-other" })
	other.Record("app", clientEvent("a", 0))
	run(t, other)
	eventually(t, "the other gateway's record stored", func() bool { return storedCount(t, st) == 2 })
}

// TestRecorderDropsWhenFull: past its bound, Record drops and counts at
// once, whatever NATS does; what it queued is stored once Run runs.
func TestRecorderDropsWhenFull(t *testing.T) {
	nc, js := natstest.JetStream(t, "recorder")
	hookStream(t, js, 0)
	r := newTestRecorder(t, nc, func(o *RecorderOptions) { o.MaxRecords = 5 })
	accepted := 0
	for i := range 12 {
		if r.Record("app", clientEvent("a", i)) {
			accepted++
		}
	}
	if accepted != 5 || r.Dropped() != 7 || r.Queued() != 5 {
		t.Fatalf("accepted %d, dropped %d, queued %d; want 5, 7, 5", accepted, r.Dropped(), r.Queued())
	}
	run(t, r)
	checkOrder(t, stored(t, js, 5), []string{"a"}, 5)

	// The byte bound: one large client event fits, the next does not.
	big := newTestRecorder(t, nc, func(o *RecorderOptions) { o.MaxBytes = 8 << 10 })
	rec := clientEvent("b", 0)
	rec.Event.Data = string(make([]byte, 5<<10))
	if !big.Record("app", rec) || big.Record("app", rec) || big.Dropped() != 1 {
		t.Fatalf("byte bound: queued %d, dropped %d", big.Queued(), big.Dropped())
	}
}

// TestRecorderDropsWhatAFullStreamRefuses: a full stream (DiscardNew)
// refuses records; they are dropped and counted rather than retried for
// ever, and the lanes go on.
func TestRecorderDropsWhatAFullStreamRefuses(t *testing.T) {
	nc, js := natstest.JetStream(t, "recorder")
	st := hookStream(t, js, 4<<10)
	r := newTestRecorder(t, nc, nil)
	run(t, r)
	const n = 200
	for i := range n {
		rec := clientEvent(fmt.Sprint("c", i%8), i)
		rec.Event.Data = string(make([]byte, 200))
		r.Record("app", rec)
	}
	eventually(t, "every record stored or dropped", func() bool { return r.Queued() == 0 && r.Stored()+r.Dropped() == n })
	if r.Stored() == 0 || r.Dropped() == 0 {
		t.Fatalf("stored %d, dropped %d: want some of each", r.Stored(), r.Dropped())
	}
	if got := storedCount(t, st); got != r.Stored() {
		t.Fatalf("stream holds %d, recorder stored %d", got, r.Stored())
	}
}

// TestRecorderNeverBlocksAndCatchesUpAfterNATSIsBack: with the link to
// NATS cut, Record still returns at once, the records wait, and once the
// link is back every one is stored, once, in order.
func TestRecorderNeverBlocksAndCatchesUpAfterNATSIsBack(t *testing.T) {
	srv := natstest.Server(t, true)
	js, err := jetstream.New(natstest.Conn(t, srv, "reader"))
	if err != nil {
		t.Fatal(err)
	}
	st := hookStream(t, js, 0)
	proxy, err := tcpproxy.Start("127.0.0.1:0", srv.ClientURL()[len("nats://"):])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	nc, err := nats.Connect("nats://"+proxy.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r := newTestRecorder(t, nc, nil)
	run(t, r)

	channels := []string{"a", "b", "c"}
	const before, during, after = 20, 300, 20
	i := 0
	record := func(n int) {
		for range n {
			for _, ch := range channels {
				r.Record("app", clientEvent(ch, i))
			}
			i++
		}
	}
	record(before)
	proxy.Cut()
	// Many records while NATS is away: Record returns every time (the
	// test would hang otherwise), and nothing is dropped within the
	// bound.
	done := make(chan struct{})
	go func() { record(during); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Record blocked while NATS was away")
	}
	if r.Dropped() != 0 {
		t.Fatalf("dropped %d", r.Dropped())
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	record(after)
	total := (before + during + after) * len(channels)
	eventually(t, "everything stored", func() bool { return r.Stored() == uint64(total) })
	if n := storedCount(t, st); n != uint64(total) {
		t.Fatalf("stream holds %d, want %d", n, total)
	}
	checkOrder(t, stored(t, js, total), channels, before+during+after)
}

// TestRecorderFlushesOnStop: records queued when Run is told to stop are
// still stored; after it returns, Record refuses and counts.
func TestRecorderFlushesOnStop(t *testing.T) {
	nc, js := natstest.JetStream(t, "recorder")
	st := hookStream(t, js, 0)
	r := newTestRecorder(t, nc, nil)
	for i := range 100 {
		r.Record("app", clientEvent(fmt.Sprint("c", i%5), i/5))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stopped before it starts: all it does is the flush
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if n := storedCount(t, st); n != 100 || r.Stored() != 100 {
		t.Fatalf("stored %d (stream %d), want 100", r.Stored(), n)
	}
	if r.Record("app", clientEvent("a", 0)) || r.Dropped() != 1 {
		t.Fatalf("a record after stop: dropped %d", r.Dropped())
	}
}
