package webhook_test

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/webhook"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

const (
	testApp    = "app1"
	testKey    = "app1-key"
	testSecret = "app1-secret"
	testLanes  = 4
)

// fast is the timing most tests use: short, so that they run quickly,
// and long enough for what they check to happen inside it.
var fast = webhook.Timing{BatchWindow: 20 * time.Millisecond, BatchMax: 100, Delay: 200 * time.Millisecond, RetryFor: 30 * time.Second, Timeout: 2 * time.Second}

// receiver is a real HTTP webhook receiver. It checks every request as
// Pusher's SDK validators do (key, signature of the raw body with the
// app secret) and keeps those it answered 2xx.
type receiver struct {
	t   *testing.T
	srv *httptest.Server
	// status answers the nth request (from 1); nil answers 200.
	status   func(n int) int
	mu       sync.Mutex
	requests int
	got      []accepted
}

type accepted struct {
	header http.Header
	raw    []byte
	body   protocol.WebhookBody
	at     time.Time
}

func newReceiver(t *testing.T, status func(n int) int) *receiver {
	rc := &receiver{t: t, status: status}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		rc.t.Errorf("reading a webhook: %v", err)
		return
	}
	if r.Method != http.MethodPost {
		rc.t.Errorf("webhook method %s, want POST", r.Method)
	}
	if got := r.Header.Get("X-Pusher-Key"); got != testKey {
		rc.t.Errorf("X-Pusher-Key %q, want %q", got, testKey)
	}
	if want := protocol.SignWebhook(testSecret, raw); !hmac.Equal([]byte(r.Header.Get("X-Pusher-Signature")), []byte(want)) {
		rc.t.Errorf("X-Pusher-Signature %q does not sign the body with the app secret (want %q)", r.Header.Get("X-Pusher-Signature"), want)
	}
	var body protocol.WebhookBody
	if err := json.Unmarshal(raw, &body); err != nil {
		rc.t.Errorf("webhook body %q: %v", raw, err)
	}
	rc.mu.Lock()
	rc.requests++
	status := http.StatusOK
	if rc.status != nil {
		status = rc.status(rc.requests)
	}
	if status >= 200 && status < 300 {
		rc.got = append(rc.got, accepted{header: r.Header.Clone(), raw: raw, body: body, at: time.Now()})
	}
	rc.mu.Unlock()
	w.WriteHeader(status)
}

// events lists the events of the requests answered 2xx, in order.
func (rc *receiver) events() []protocol.WebhookEvent {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []protocol.WebhookEvent
	for _, a := range rc.got {
		out = append(out, a.body.Events...)
	}
	return out
}

func (rc *receiver) accepted() []accepted {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

func (rc *receiver) requestCount() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.requests
}

// on keeps the events of one channel.
func on(channel string, evs []protocol.WebhookEvent) []protocol.WebhookEvent {
	var out []protocol.WebhookEvent
	for _, e := range evs {
		if e.Channel == channel {
			out = append(out, e)
		}
	}
	return out
}

type rig struct {
	t    *testing.T
	ns   *natsembed.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	apps *config.Apps
}

func newRig(t *testing.T, hooks ...config.Webhook) *rig {
	t.Helper()
	ns := natstest.Server(t, false)
	nc := natstest.Conn(t, ns, "webhook-test")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := webhook.EnsureStream(ctx, js, webhook.StreamOptions{MaxBytes: 64 << 20, RetryFor: time.Minute, Lanes: testLanes}); err != nil {
		t.Fatal(err)
	}
	apps, err := config.NewApps([]config.App{{ID: testApp, Key: testKey, Secret: testSecret, Webhooks: hooks}})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, ns: ns, nc: nc, js: js, apps: apps}
}

// hook is a webhook to rc taking every event.
func hook(rc *receiver) config.Webhook {
	return config.Webhook{URL: rc.srv.URL + "/pusher/webhook", EventTypes: protocol.WebhookNames[:]}
}

// shortConsumers makes the lanes' consumers with a short ack wait and
// pin, so that a lane left unacked moves on in a test's time.
func (r *rig) shortConsumers(ackWait, pinnedTTL time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k := range testLanes {
		_, err := r.js.CreateOrUpdateConsumer(ctx, webhook.StreamName, jetstream.ConsumerConfig{
			Durable: webhook.ConsumerName(k), FilterSubject: webhook.LaneFilter(k),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxAckPending: 10000,
			PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{webhook.PriorityGroup}, PinnedTTL: pinnedTTL,
		})
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

type running struct {
	*webhook.Sender
	stop func()
}

// start runs a sender with id; it takes the lanes live gives it (itself
// alone if nil).
func (r *rig) start(id string, timing webhook.Timing, live map[string]bool, edit ...func(*webhook.SenderOptions)) running {
	opts := webhook.SenderOptions{
		JetStream: r.js, Conn: r.nc, Apps: r.apps, ID: id, Lanes: testLanes, Timing: timing,
		Log: zerolog.New(zerolog.NewTestWriter(r.t)).Level(zerolog.InfoLevel).With().Str("sender", id).Logger(),
	}
	for _, f := range edit {
		f(&opts)
	}
	s := webhook.NewSender(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	if live == nil {
		live = map[string]bool{id: true}
	}
	s.Assign(live)
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("sender %s: %v", id, err)
		}
	})
	r.t.Cleanup(stop)
	return running{s, stop}
}

func (r *rig) publish(recs ...webhook.Record) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, rec := range recs {
		if rec.TimeMS == 0 {
			rec.TimeMS = time.Now().UnixMilli()
		}
		data, err := json.Marshal(rec)
		if err != nil {
			r.t.Fatal(err)
		}
		if _, err := r.js.Publish(ctx, webhook.Subject(testApp, rec.Event.Channel, testLanes), data); err != nil {
			r.t.Fatal(err)
		}
	}
}

// drained waits for every record to be acked (the stream is a work
// queue: acked records are gone).
func (r *rig) drained() {
	r.t.Helper()
	eventually(r.t, "every webhook record acked", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := r.js.Stream(ctx, webhook.StreamName)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func rec(name, channel string, rev uint64) webhook.Record {
	return webhook.Record{Rev: rev, Event: protocol.WebhookEvent{Name: name, Channel: channel}}
}

func member(name, channel, user string, rev uint64) webhook.Record {
	r := rec(name, channel, rev)
	r.Event.UserID = user
	return r
}

func clientEvent(channel string, n int) webhook.Record {
	return webhook.Record{Event: protocol.WebhookEvent{Name: protocol.WebhookClientEvent, Channel: channel, Event: "client-n", Data: strconv.Itoa(n), SocketID: "1.2"}}
}

func count(channel string, rev uint64, n int) webhook.Record {
	r := rec(protocol.WebhookSubscriptionCount, channel, rev)
	r.Event.SubscriptionCount = &n
	return r
}

// numbers are the client events' numbers, in order.
func numbers(evs []protocol.WebhookEvent) []int {
	var out []int
	for _, e := range evs {
		if e.Name == protocol.WebhookClientEvent {
			n, _ := strconv.Atoi(e.Data)
			out = append(out, n)
		}
	}
	return out
}

func names(evs []protocol.WebhookEvent) []string {
	var out []string
	for _, e := range evs {
		s := e.Name
		if e.UserID != "" {
			s += ":" + e.UserID
		}
		out = append(out, s)
	}
	return out
}

// A webhook is Pusher's: a POST of {"time_ms","events"} with X-Pusher-Key,
// X-Pusher-Signature (checked by the receiver) and Content-Type, then the
// webhook's own headers; the metrics and counters count it.
func TestSenderBodyAndHeaders(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, nil)
	h := hook(rc)
	h.URL += "?token=secret"
	h.Headers = map[string]string{"X-Team": "blue"}
	r := newRig(t, h)
	reg := prometheus.NewRegistry()
	var observed []wire.ConsoleEntry
	var obsMu sync.Mutex
	s := r.start("w1", fast, nil, func(o *webhook.SenderOptions) {
		o.Registerer = reg
		o.Observe = func(app string, e wire.ConsoleEntry) {
			if app != testApp {
				t.Errorf("observed app %q", app)
			}
			obsMu.Lock()
			observed = append(observed, e)
			obsMu.Unlock()
		}
	})
	before := time.Now().UnixMilli()
	r.publish(rec(protocol.WebhookChannelOccupied, "private-chat", 1))
	eventually(t, "the webhook", func() bool { return len(rc.accepted()) == 1 })
	a := rc.accepted()[0]
	if got := a.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	if got := a.header.Get("X-Team"); got != "blue" {
		t.Errorf("X-Team %q, want the webhook's header", got)
	}
	want := fmt.Sprintf(`{"time_ms":%d,"events":[{"name":"channel_occupied","channel":"private-chat"}]}`, a.body.TimeMS)
	if string(a.raw) != want {
		t.Errorf("body %s, want %s", a.raw, want)
	}
	if a.body.TimeMS < before || a.body.TimeMS > time.Now().UnixMilli() {
		t.Errorf("time_ms %d is not the time of sending", a.body.TimeMS)
	}
	r.drained()
	if c := s.AppCounters()[testApp]; c != (webhook.AppCounters{Sent: 1}) {
		t.Errorf("counters %+v, want one sent", c)
	}
	if n := counterOf(t, reg, "sent"); n != 1 {
		t.Errorf("resound_webhooks_total{result=sent} = %v", n)
	}
	if n := histogramCount(t, reg, "resound_webhook_latency_seconds"); n != 1 {
		t.Errorf("latency histogram: %d observations, want 1", n)
	}
	obsMu.Lock()
	defer obsMu.Unlock()
	if len(observed) != 1 || observed[0].Kind != "webhook" || observed[0].Process != "w1" || observed[0].Channel != "private-chat" ||
		observed[0].Event != protocol.WebhookChannelOccupied {
		t.Errorf("console entries %+v", observed)
	}
	for _, e := range observed {
		if strings.Contains(e.Detail, "secret") || !strings.Contains(e.Detail, "200") {
			t.Errorf("console detail %q: want the status, and no query string", e.Detail)
		}
	}
}

// counterOf reads resound_webhooks_total{result} from reg.
func counterOf(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "resound_webhooks_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.Counter.GetValue()
				}
			}
		}
	}
	t.Fatalf("no resound_webhooks_total{result=%q}", result)
	return 0
}

// histogramCount reads how many observations a histogram of reg has.
func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].Histogram.GetSampleCount()
		}
	}
	t.Fatalf("no histogram %s", name)
	return 0
}

// Events that come together go in one request, at most BatchMax each, in
// order.
func TestSenderBatches(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, nil)
	r := newRig(t, hook(rc))
	timing := fast
	timing.BatchMax, timing.BatchWindow = 3, 300*time.Millisecond
	r.start("w1", timing, nil)
	for i := range 7 {
		r.publish(clientEvent("private-chat", i))
	}
	eventually(t, "7 events", func() bool { return len(rc.events()) == 7 })
	if got := numbers(rc.events()); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6}) {
		t.Errorf("events %v, want 0..6 in order", got)
	}
	reqs := rc.accepted()
	several := false
	for _, a := range reqs {
		if len(a.body.Events) > 3 {
			t.Errorf("a request of %d events (max 3)", len(a.body.Events))
		}
		several = several || len(a.body.Events) > 1
	}
	if !several || len(reqs) >= 7 {
		t.Errorf("%d requests for 7 events: not batched", len(reqs))
	}
}

// channel_vacated and member_removed wait for the delay, and are dropped
// with the occupied or added (same user) that comes back meanwhile.
func TestSenderDelayAndCancel(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, nil)
	r := newRig(t, hook(rc))
	r.start("w1", fast, nil)

	// Vacated then occupied: nothing. The client event behind them on
	// the channel goes only after they are settled, so once it is in,
	// they would have been too.
	r.publish(rec(protocol.WebhookChannelVacated, "c1", 2), rec(protocol.WebhookChannelOccupied, "c1", 3), clientEvent("c1", 1))
	// Removed then added, same user: nothing; another user: both.
	r.publish(member(protocol.WebhookMemberRemoved, "presence-p", "u1", 5), member(protocol.WebhookMemberAdded, "presence-p", "u1", 6),
		member(protocol.WebhookMemberRemoved, "presence-p", "u2", 7), member(protocol.WebhookMemberAdded, "presence-p", "u3", 8),
		clientEvent("presence-p", 2))
	// Vacated alone: sent, after the delay (from the record's time, in
	// whole milliseconds).
	published := time.UnixMilli(time.Now().UnixMilli())
	r.publish(rec(protocol.WebhookChannelVacated, "c2", 4))

	eventually(t, "the events", func() bool {
		evs := rc.events()
		return len(on("c1", evs)) >= 1 && len(on("presence-p", evs)) >= 3 && len(on("c2", evs)) >= 1
	})
	r.drained()
	evs := rc.events()
	if got := names(on("c1", evs)); !slices.Equal(got, []string{"client_event"}) {
		t.Errorf("c1: %v, want the client event alone (vacated and occupied dropped)", got)
	}
	if got := names(on("presence-p", evs)); !slices.Equal(got, []string{"member_removed:u2", "member_added:u3", "client_event"}) {
		t.Errorf("presence-p: %v, want u1's pair dropped, u2 removed, u3 added, then the client event", got)
	}
	if got := names(on("c2", evs)); !slices.Equal(got, []string{"channel_vacated"}) {
		t.Errorf("c2: %v, want channel_vacated", got)
	}
	for _, a := range rc.accepted() {
		if len(on("c2", a.body.Events)) > 0 && a.at.Sub(published) < fast.Delay {
			t.Errorf("channel_vacated sent %v after it happened, before the %v delay", a.at.Sub(published), fast.Delay)
		}
	}
}

// Two gateways may publish a channel's records out of the order their
// compare-and-sets happened: within the batch window the sender puts
// them back in revision order.
func TestSenderOrdersByRevision(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, nil)
	r := newRig(t, hook(rc))
	timing := fast
	timing.BatchWindow, timing.Delay = 300*time.Millisecond, 50*time.Millisecond
	r.start("w1", timing, nil)
	r.publish(rec(protocol.WebhookChannelVacated, "c", 6), rec(protocol.WebhookChannelOccupied, "c", 5))
	r.publish(count("d", 9, 2), count("d", 8, 1))
	r.publish(member(protocol.WebhookMemberAdded, "presence-e", "u2", 12), member(protocol.WebhookMemberAdded, "presence-e", "u1", 11))
	eventually(t, "the events", func() bool { return len(rc.events()) == 6 })
	evs := rc.events()
	if got := names(on("c", evs)); !slices.Equal(got, []string{"channel_occupied", "channel_vacated"}) {
		t.Errorf("c: %v, want occupied (rev 5) then vacated (rev 6), neither dropped", got)
	}
	var counts []int
	for _, e := range on("d", evs) {
		counts = append(counts, *e.SubscriptionCount)
	}
	if !slices.Equal(counts, []int{1, 2}) {
		t.Errorf("d: counts %v, want 1 (rev 8) then 2 (rev 9)", counts)
	}
	if got := names(on("presence-e", evs)); !slices.Equal(got, []string{"member_added:u1", "member_added:u2"}) {
		t.Errorf("presence-e: %v, want u1 (rev 11) then u2 (rev 12)", got)
	}
}

// Each webhook gets the events its event_types and filter take, and the
// records no webhook wants are acked all the same.
func TestSenderFilters(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	a, b := newReceiver(t, nil), newReceiver(t, nil)
	ha := config.Webhook{URL: a.srv.URL, EventTypes: []string{protocol.WebhookChannelOccupied},
		Filter: config.WebhookFilter{ChannelNameStartsWith: "private-"}}
	hb := config.Webhook{URL: b.srv.URL, EventTypes: []string{protocol.WebhookClientEvent, protocol.WebhookChannelOccupied},
		Filter: config.WebhookFilter{ChannelNameEndsWith: "-room"}}
	r := newRig(t, ha, hb)
	r.start("w1", fast, nil)
	r.publish(rec(protocol.WebhookChannelOccupied, "private-a", 1), rec(protocol.WebhookChannelOccupied, "public-room", 2),
		rec(protocol.WebhookChannelOccupied, "private-x-room", 3), clientEvent("private-x-room", 1), clientEvent("foo", 2),
		rec(protocol.WebhookCacheMiss, "private-cache-room", 0))
	r.drained()
	key := func(evs []protocol.WebhookEvent) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.Name+"@"+e.Channel)
		}
		slices.Sort(out)
		return out
	}
	if got, want := key(a.events()), []string{"channel_occupied@private-a", "channel_occupied@private-x-room"}; !slices.Equal(got, want) {
		t.Errorf("receiver a: %v, want %v", got, want)
	}
	if got, want := key(b.events()), []string{"channel_occupied@private-x-room", "channel_occupied@public-room", "client_event@private-x-room"}; !slices.Equal(got, want) {
		t.Errorf("receiver b: %v, want %v", got, want)
	}
}

// A receiver that fails for a while, then recovers, gets every webhook
// once, in order.
func TestSenderReceiverRecovers(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, func(n int) int {
		if n <= 4 {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	})
	r := newRig(t, hook(rc))
	timing := fast
	timing.BatchMax = 2
	s := r.start("w1", timing, nil)
	want := make([]int, 10)
	for i := range want {
		want[i] = i
		r.publish(clientEvent("private-chat", i))
	}
	eventually(t, "every event", func() bool { return len(rc.events()) >= 10 })
	r.drained()
	if got := numbers(rc.events()); !slices.Equal(got, want) {
		t.Errorf("events %v, want each of 0..9 once, in order", got)
	}
	c := s.AppCounters()[testApp]
	if c.Failed != 4 || c.Sent != int64(len(rc.accepted())) || c.Dropped != 0 {
		t.Errorf("counters %+v, want 4 failed, %d sent", c, len(rc.accepted()))
	}
}

// A receiver that is down holds back nothing of another receiver's.
func TestSenderDownReceiverHoldsBackNoOther(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	down := newReceiver(t, func(int) int { return http.StatusInternalServerError })
	up := newReceiver(t, nil)
	r := newRig(t, hook(down), hook(up))
	r.start("w1", fast, nil)
	for i := range 5 {
		r.publish(clientEvent("private-chat", i))
		time.Sleep(30 * time.Millisecond) // several batches
	}
	eventually(t, "the up receiver's events", func() bool { return len(up.events()) == 5 })
	if got := numbers(up.events()); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Errorf("up receiver: %v", got)
	}
	if down.requestCount() == 0 || len(down.events()) != 0 {
		t.Errorf("down receiver: %d requests, %d accepted", down.requestCount(), len(down.events()))
	}
}

// A receiver that fails for longer than RetryFor has its webhooks
// dropped, counted, and their records acked.
func TestSenderGivesUp(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	down := newReceiver(t, func(int) int { return http.StatusBadGateway })
	r := newRig(t, hook(down))
	timing := fast
	timing.RetryFor, timing.BatchMax = 400*time.Millisecond, 1
	reg := prometheus.NewRegistry()
	s := r.start("w1", timing, nil, func(o *webhook.SenderOptions) { o.Registerer = reg })
	r.publish(clientEvent("private-chat", 1), clientEvent("private-chat", 2))
	r.drained()
	c := s.AppCounters()[testApp]
	if c.Dropped != 2 || c.Sent != 0 || c.Failed < 4 {
		t.Errorf("counters %+v, want 2 dropped after several failed attempts each", c)
	}
	if d := counterOf(t, reg, "dropped"); d != 2 {
		t.Errorf("resound_webhooks_total{result=dropped} = %v", d)
	}
	f, rt := counterOf(t, reg, "failed"), counterOf(t, reg, "retried")
	if f != float64(c.Failed) || rt != f-2 {
		t.Errorf("failed %v, retried %v: every failure but the last of each is retried", f, rt)
	}
}

// Two senders share the lanes as the workers share partitions; while the
// second joins and then the first leaves, no channel's webhooks go out
// of order or twice.
func TestSenderTwoWorkersInOrder(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, nil)
	r := newRig(t, hook(rc))
	timing := fast
	timing.BatchWindow = 5 * time.Millisecond
	a := r.start("worker-a", timing, nil)
	b := r.start("worker-b", timing, map[string]bool{"worker-a": true})
	const channels, rounds = 12, 60
	for round := range rounds {
		for c := range channels {
			r.publish(clientEvent("private-"+strconv.Itoa(c), round))
		}
		switch round {
		case 20:
			both := map[string]bool{"worker-a": true, "worker-b": true}
			a.Assign(both)
			b.Assign(both)
		case 40:
			a.Assign(map[string]bool{"worker-b": true})
			b.Assign(map[string]bool{"worker-b": true})
		}
		time.Sleep(5 * time.Millisecond)
	}
	eventually(t, "every event", func() bool { return len(rc.events()) >= channels*rounds })
	r.drained()
	evs := rc.events()
	for c := range channels {
		got := numbers(on("private-"+strconv.Itoa(c), evs))
		if len(got) != rounds || !slices.IsSorted(got) || got[0] != 0 || got[len(got)-1] != rounds-1 {
			t.Errorf("channel %d: %v, want 0..%d once each, in order", c, got, rounds-1)
		}
	}
	if a.AppCounters()[testApp].Sent == 0 || b.AppCounters()[testApp].Sent == 0 {
		t.Errorf("sent by a %+v, by b %+v: the lanes were not shared", a.AppCounters(), b.AppCounters())
	}
}

// A sender stopped while it retries a receiver hands its lanes over:
// the next one delivers everything, in order, once the receiver is back.
func TestSenderStoppedMidRetryHandsOver(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	var failing atomic.Bool
	failing.Store(true)
	rc := newReceiver(t, func(int) int {
		if failing.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	r := newRig(t, hook(rc))
	r.shortConsumers(time.Second, 2*time.Second)
	timing := fast
	timing.Timeout = 500 * time.Millisecond
	a := r.start("worker-a", timing, nil)
	for i := range 5 {
		r.publish(clientEvent("private-chat", i), clientEvent("private-other", i))
	}
	eventually(t, "a few failed attempts", func() bool { return a.AppCounters()[testApp].Failed >= 4 })
	a.stop()
	r.start("worker-b", timing, nil)
	failing.Store(false)
	for i := 5; i < 10; i++ {
		r.publish(clientEvent("private-chat", i), clientEvent("private-other", i))
	}
	eventually(t, "every event", func() bool { return len(rc.events()) >= 20 })
	r.drained()
	for _, ch := range []string{"private-chat", "private-other"} {
		if got := numbers(on(ch, rc.events())); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
			t.Errorf("%s: %v, want 0..9 once each, in order", ch, got)
		}
	}
}

// Records that cannot be sent (not JSON, an unknown app) are dropped
// without holding back the lane.
func TestSenderSkipsBadRecords(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	rc := newReceiver(t, nil)
	r := newRig(t, hook(rc))
	r.start("w1", fast, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subject := webhook.Subject(testApp, "private-chat", testLanes)
	if _, err := r.js.Publish(ctx, subject, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.js.Publish(ctx, webhook.Subject("gone-app", "private-chat", testLanes), []byte(`{"event":{"name":"client_event","channel":"c"}}`)); err != nil {
		t.Fatal(err)
	}
	r.publish(clientEvent("private-chat", 1))
	r.drained()
	if got := numbers(rc.events()); !slices.Equal(got, []int{1}) {
		t.Errorf("events %v", got)
	}
}

// A sender dies holding a channel's records unacked; another, already
// pulling the lane, takes it once the pin lapses. JetStream gives it the
// dead one's records rotated (nats-server re-appends the head of its
// redelivery queue each time it finds no one to send it to, see
// internal/ordered): they must still reach the receiver in stream order,
// before the records published after them. Without a batch window, the
// sender used to send them as they came: [2 3 … 8 1 9 10 11].
func TestSenderDeadSendersRecordsInOrder(t *testing.T) {
	t.Parallel() // mostly waits: a stopping sender waits out its last pull (PullExpiry)
	const ackWait, pinnedTTL = time.Second, 3 * time.Second
	rc := newReceiver(t, nil)
	r := newRig(t, hook(rc))
	r.shortConsumers(ackWait, pinnedTTL)
	const channel, held, later = "private-chat", 8, 3
	k := webhook.Lane(testApp, channel, testLanes)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The sender that dies: it takes the lane's records and acks none.
	dc := natstest.Conn(t, r.ns, "dead-sender")
	djs, err := jetstream.New(dc)
	if err != nil {
		t.Fatal(err)
	}
	dcons, err := djs.Consumer(ctx, webhook.StreamName, webhook.ConsumerName(k))
	if err != nil {
		t.Fatal(err)
	}
	var taken atomic.Int32
	if _, err := dcons.Consume(func(jetstream.Msg) { taken.Add(1) },
		jetstream.PullPriorityGroup(webhook.PriorityGroup), jetstream.PullExpiry(time.Second)); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= held; i++ {
		r.publish(clientEvent(channel, i))
	}
	eventually(t, "the records held by the dying sender", func() bool { return taken.Load() == held })

	// The next owner pulls the lane beside it, as it does once the
	// registry says the first is gone; no batch window to hide behind.
	timing := fast
	timing.BatchWindow = 0
	r.start("worker-next", timing, nil)
	eventually(t, "the next owner pulling", func() bool {
		info, err := dcons.Info(ctx)
		return err == nil && info.NumWaiting >= 2
	})
	dc.Close()
	// Published once the dead one's records are due again and the pin
	// not yet lapsed: each wakes the consumer. This wait proves nothing;
	// no assertion depends on its length.
	time.Sleep(ackWait + 500*time.Millisecond)
	for i := held + 1; i <= held+later; i++ {
		r.publish(clientEvent(channel, i))
	}
	eventually(t, "every event", func() bool { return len(rc.events()) >= held+later })
	r.drained()
	want := make([]int, held+later)
	for i := range want {
		want[i] = i + 1
	}
	if got := numbers(on(channel, rc.events())); !slices.Equal(got, want) {
		t.Errorf("the next owner sent %v, want %v", got, want)
	}
}
