package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/worker"
	"github.com/resoundhq/resound/protocol"
)

var errInjected = errors.New("injected delivery failure")

// retrying makes a pool try each job at most attempts times, with
// millisecond backoffs so that a test runs them all in well under a
// second. deliver, if set, wraps the pool's publish: the fault injection.
func retrying(attempts int, deliver func(publish func(string, []byte) error) func(string, []byte) error) func(*worker.Options) {
	return func(o *worker.Options) {
		o.MaxAttempts = attempts
		o.RetryBackoff = 5 * time.Millisecond
		o.RetryBackoffMax = 20 * time.Millisecond
		if deliver != nil {
			o.Deliver = deliver(o.Conn.Publish)
		}
	}
}

// poolOptions connects a worker to ns as name, and returns the options of
// a pool that knows only appID and logs only errors; with change them.
func poolOptions(t *testing.T, ns *natsembed.Server, name string, with ...func(*worker.Options)) worker.Options {
	t.Helper()
	wc := connect(t, ns, name)
	wjs, err := jetstream.New(wc)
	if err != nil {
		t.Fatal(err)
	}
	opts := worker.Options{Conn: wc, JetStream: wjs, Apps: func(id string) bool { return id == appID }, Limits: protocol.DefaultLimits,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)}
	for _, w := range with {
		w(&opts)
	}
	return opts
}

func oneEvent(channel, data string) *queue.Job {
	return &queue.Job{AppID: appID, Events: []protocol.Trigger{{Name: "e", Data: data, Channels: []string{channel}}}}
}

// nothingMore fails if ch holds a delivery.
func nothingMore(t *testing.T, ch chan *nats.Msg) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected delivery %q on %s", m.Data, m.Subject)
	default:
	}
}

// A job whose deliveries fail a few times is retried where it is, and
// delivered once it goes through; a later job on its channel, which the
// worker already holds, waits behind it and is delivered after it.
func TestFailedJobIsRetriedInPlace(t *testing.T) {
	const failures = 3
	flaky := route.Subject(appID, "flaky")
	var calls atomic.Int32
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	e := start(t, 4, retrying(5, func(publish func(string, []byte) error) func(string, []byte) error {
		return func(subject string, envelope []byte) error {
			if subject == flaky {
				switch n := calls.Add(1); {
				case n == 1:
					// Hold the first attempt until the next job is in.
					close(held)
					<-release
					return errInjected
				case n <= failures:
					return errInjected
				}
			}
			return publish(subject, envelope)
		}
	}))
	ch := e.subscribe(t, flaky)
	first := e.publish(t, oneEvent("flaky", "first"))
	select {
	case <-held:
	case <-time.After(wait):
		t.Fatal("the first job was not tried")
	}
	second := e.publish(t, oneEvent("flaky", "second"))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	eventually(t, "both jobs held by the worker", func() bool { return ackPending(ctx, e.js) == 2 })
	once.Do(func() { close(release) })

	for _, want := range []struct {
		seq  uint64
		data string
	}{{first, "first"}, {second, "second"}} {
		d := decode(t, receive(t, ch))
		if d.seq != want.seq || d.event["data"] != want.data {
			t.Fatalf("got seq %d data %v, want seq %d data %s", d.seq, d.event["data"], want.seq, want.data)
		}
	}
	eventually(t, "both jobs acked", func() bool { return e.pool.Stats().Jobs.Load() == 2 && e.streamJobs(t) == 0 })
	nothingMore(t, ch)
	if got := calls.Load(); got != failures+2 {
		t.Errorf("%d delivery calls on the channel, want %d failed and 2 good", got, failures)
	}
	st := e.pool.Stats()
	if st.Failed.Load() != failures || st.Retried.Load() != failures || st.DeadLettered.Load() != 0 {
		t.Errorf("failed %d, retried %d, dead-lettered %d; want %d, %d, 0", st.Failed.Load(), st.Retried.Load(), st.DeadLettered.Load(), failures, failures)
	}
	if got := counter(t, e.reg, "resound_jobs_total", metrics.JobRetried); got != failures {
		t.Errorf("resound_jobs_total{result=retried} = %v, want %d", got, failures)
	}
	if got := counter(t, e.reg, "resound_jobs_total", metrics.JobOK); got != 2 {
		t.Errorf("resound_jobs_total{result=ok} = %v, want 2", got)
	}
	if dls := deadLetters(t, e.js); len(dls) != 0 {
		t.Errorf("%d dead letters, want none", len(dls))
	}
}

// A job that fails every attempt is set aside in the dead-letter stream,
// with its body and headers, and terminated; only then does the next job
// on its channel go out.
func TestJobThatAlwaysFailsIsDeadLettered(t *testing.T) {
	const attempts = 3
	var poisoned atomic.Int32
	e := start(t, 4, retrying(attempts, func(publish func(string, []byte) error) func(string, []byte) error {
		return func(subject string, envelope []byte) error {
			if bytes.Contains(envelope, []byte("poison")) {
				poisoned.Add(1)
				return errInjected
			}
			return publish(subject, envelope)
		}
	}))
	ch := e.subscribe(t, route.Subject(appID, "doomed"))
	job := oneEvent("doomed", "poison")
	seq := e.publish(t, job)
	next := e.publish(t, oneEvent("doomed", "after"))

	d := decode(t, receive(t, ch))
	if d.seq != next || d.event["data"] != "after" {
		t.Fatalf("got seq %d data %v, want the next job, seq %d", d.seq, d.event["data"], next)
	}
	// The shard stored the dead letter before it went on to the next job.
	dls := deadLetters(t, e.js)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	dl := dls[0]
	if want := queue.DeadLetterPrefix + route.EscapeToken(appID) + ".doomed"; dl.Subject != want {
		t.Errorf("dead letter on %q, want %q", dl.Subject, want)
	}
	body, _ := json.Marshal(job)
	if !bytes.Equal(dl.Data, body) {
		t.Errorf("dead letter body %s, want the job %s", dl.Data, body)
	}
	if r := dl.Header.Get(queue.HeaderReason); !strings.Contains(r, "3 attempts") || !strings.Contains(r, errInjected.Error()) {
		t.Errorf("%s = %q", queue.HeaderReason, r)
	}
	if s := dl.Header.Get(queue.HeaderSubject); !strings.HasPrefix(s, queue.Subject(appID, "doomed")+".") {
		t.Errorf("%s = %q, want the stored subject, partition included", queue.HeaderSubject, s)
	}
	if s := dl.Header.Get(queue.HeaderStreamSeq); s != strconv.FormatUint(seq, 10) {
		t.Errorf("%s = %q, want %d", queue.HeaderStreamSeq, s, seq)
	}
	if s := dl.Header.Get(queue.HeaderDeliveries); s != "1" {
		t.Errorf("%s = %q, want 1", queue.HeaderDeliveries, s)
	}
	eventually(t, "the job stream empty", func() bool { return e.streamJobs(t) == 0 && e.pool.Stats().Jobs.Load() == 1 })
	nothingMore(t, ch)
	if got := poisoned.Load(); got != attempts {
		t.Errorf("the poison job was tried %d times, want %d", got, attempts)
	}
	for result, want := range map[string]float64{metrics.JobDeadLettered: 1, metrics.JobFailed: attempts, metrics.JobRetried: attempts - 1,
		metrics.JobOK: 1, metrics.JobRejected: 0} {
		if got := counter(t, e.reg, "resound_jobs_total", result); got != want {
			t.Errorf("resound_jobs_total{result=%s} = %v, want %v", result, got, want)
		}
	}
}

// A body that is not UTF-8, and one that is not JSON, are set aside at
// once: never tried.
func TestUndecodableJobsAreDeadLetteredAtOnce(t *testing.T) {
	var calls atomic.Int32
	e := start(t, 2, retrying(5, func(publish func(string, []byte) error) func(string, []byte) error {
		return func(subject string, envelope []byte) error {
			calls.Add(1)
			return publish(subject, envelope)
		}
	}))
	ch := e.subscribe(t, route.Subject(appID, "raw"))
	bad := []struct {
		body   []byte
		reason string
	}{
		// A valid job but for two bytes: decoded, they would become
		// U+FFFD and the job would go out, changed.
		{[]byte(`{"app_id":"` + appID + `","events":[{"name":"e","data":"a` + "\xff\xfe" + `","channels":["raw"]}]}`), "invalid UTF-8"},
		{[]byte(`{"app_id":"` + appID + `","events":[`), "invalid JSON"},
	}
	for _, b := range bad {
		e.publishRaw(t, appID, b.body)
	}
	// The same channel's next job is the first delivery.
	next := e.publish(t, oneEvent("raw", "good"))
	if d := decode(t, receive(t, ch)); d.seq != next || d.event["data"] != "good" {
		t.Fatalf("got seq %d data %v, want seq %d", d.seq, d.event["data"], next)
	}
	dls := deadLetters(t, e.js)
	if len(dls) != len(bad) {
		t.Fatalf("%d dead letters, want %d", len(dls), len(bad))
	}
	for i, dl := range dls {
		if !bytes.Equal(dl.Data, bad[i].body) {
			t.Errorf("dead letter %d body %q, want %q byte for byte", i, dl.Data, bad[i].body)
		}
		if r := dl.Header.Get(queue.HeaderReason); !strings.HasPrefix(r, bad[i].reason) {
			t.Errorf("dead letter %d: reason %q, want %q", i, r, bad[i].reason)
		}
		if d := dl.Header.Get(queue.HeaderDeliveries); d != "1" {
			t.Errorf("dead letter %d: deliveries %q, want 1", i, d)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("%d delivery calls, want 1 (the good job)", got)
	}
	st := e.pool.Stats()
	if st.Rejected.Load() != 2 || st.DeadLettered.Load() != 2 || st.Failed.Load() != 0 {
		t.Errorf("rejected %d, dead-lettered %d, failed %d; want 2, 2, 0", st.Rejected.Load(), st.DeadLettered.Load(), st.Failed.Load())
	}
	eventually(t, "the job stream empty", func() bool { return e.streamJobs(t) == 0 })
}

// A job JetStream has delivered more than MaxAttempts times (each time a
// worker died or stalled on it) is set aside without being tried again.
func TestOverDeliveredJobIsDeadLetteredUntried(t *testing.T) {
	const attempts = 3
	ns, _, js, ctx := startStream(t, "producer")
	consumers, err := queue.EnsureConsumers(ctx, js, queue.DefaultPartitions)
	if err != nil {
		t.Fatal(err)
	}
	seq, err := queue.NewPublisher(js).Publish(ctx, oneEvent("again", "x"))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, queue.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	k, err := strconv.Atoi(stored.Subject[strings.LastIndexByte(stored.Subject, '.')+1:])
	if err != nil {
		t.Fatalf("stored subject %q: %v", stored.Subject, err)
	}
	// Play the workers that took the job and never acked it: here each
	// hands it back at once, which counts as a delivery all the same.
	for i := 0; i < attempts; i++ {
		batch, err := consumers[k].Fetch(1, jetstream.FetchPriorityGroup(queue.PriorityGroup), jetstream.FetchMaxWait(wait))
		if err != nil {
			t.Fatal(err)
		}
		var got int
		for m := range batch.Messages() {
			got++
			if err := m.Nak(); err != nil {
				t.Fatal(err)
			}
		}
		if got != 1 {
			t.Fatalf("fetch %d got %d jobs (%v)", i, got, batch.Error())
		}
	}
	if err := stream.UnpinConsumer(ctx, queue.ConsumerName(k), queue.PriorityGroup); err != nil {
		t.Fatal(err)
	}

	var calls atomic.Int32
	pool := worker.New(poolOptions(t, ns, "worker", retrying(attempts, func(func(string, []byte) error) func(string, []byte) error {
		return func(string, []byte) error { calls.Add(1); return nil }
	})))
	runPool(t, pool)

	eventually(t, "the job set aside", func() bool { return pool.Stats().DeadLettered.Load() == 1 })
	dls := deadLetters(t, js)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	if d := dls[0].Header.Get(queue.HeaderDeliveries); d != strconv.Itoa(attempts+1) {
		t.Errorf("%s = %q, want %d", queue.HeaderDeliveries, d, attempts+1)
	}
	if r := dls[0].Header.Get(queue.HeaderReason); !strings.Contains(r, "delivered 4 times") {
		t.Errorf("%s = %q", queue.HeaderReason, r)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the job was tried (%d delivery calls)", n)
	}
	eventually(t, "the job terminated", func() bool {
		n, err := queue.Jobs(ctx, stream)
		return err == nil && n == 0
	})
}

// When the pool stops, a job being retried is neither retried on nor set
// aside: it is left unacked, for JetStream to deliver again to whoever
// owns its partition next.
func TestRetriesStopWhenThePoolStops(t *testing.T) {
	ns, _, js, ctx := startStream(t, "producer")
	pool := worker.New(poolOptions(t, ns, "worker", retrying(1000, func(func(string, []byte) error) func(string, []byte) error {
		return func(string, []byte) error { return errInjected }
	})))
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pool.Run(runCtx) }()
	defer stop()

	if _, err := queue.NewPublisher(js).Publish(ctx, oneEvent("stuck", "x")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the job retried", func() bool { return pool.Stats().Retried.Load() >= 2 })
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := pool.Stats().DeadLettered.Load(); n != 0 {
		t.Fatalf("%d jobs set aside while stopping", n)
	}
	if dls := deadLetters(t, js); len(dls) != 0 {
		t.Fatalf("%d dead letters", len(dls))
	}
	s, err := js.Stream(ctx, queue.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := queue.Jobs(ctx, s); err != nil || n != 1 {
		t.Fatalf("job stream holds %d jobs, %v; want the job still in it", n, err)
	}
}

// A worker joins while another retries jobs: the partitions it wins stay
// with the old owner until the retries end (the pin keeps their later
// jobs from it meanwhile), then move. Every channel gets its events once
// each and in order, whoever delivers them.
func TestWorkerJoiningDuringRetriesKeepsOrder(t *testing.T) {
	ns, _, js, ctx := startStream(t, "producer")
	stores, err := cluster.Ensure(ctx, js, cluster.Options{GatewayTTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	newPool := func(name string, deliver func(publish func(string, []byte) error) func(string, []byte) error) *worker.Pool {
		p := worker.New(poolOptions(t, ns, name, retrying(1000, deliver), func(o *worker.Options) {
			o.Stores, o.Workers = stores, 4
		}))
		runPool(t, p)
		return p
	}
	// The first worker fails every delivery until told otherwise.
	var healed atomic.Bool
	first := newPool("worker-a", func(publish func(string, []byte) error) func(string, []byte) error {
		return func(subject string, envelope []byte) error {
			if !healed.Load() {
				return errInjected
			}
			return publish(subject, envelope)
		}
	})
	sub := connect(t, ns, "subscriber")
	all := make(chan *nats.Msg, 1024)
	if _, err := sub.ChanSubscribe(route.DeliverPrefix+">", all); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	const channels = 16 // over most partitions
	pub := queue.NewPublisher(js)
	publishRound := func(round int) {
		t.Helper()
		for c := 0; c < channels; c++ {
			if _, err := pub.Publish(ctx, oneEvent("h"+strconv.Itoa(c), strconv.Itoa(round))); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := map[string][]string{}
	receiveRound := func(round int) {
		t.Helper()
		for i := 0; i < channels; i++ {
			d := decode(t, receive(t, all))
			ch, data := d.event["channel"].(string), d.event["data"].(string)
			if want := strconv.Itoa(len(got[ch]) + 1); data != want {
				t.Fatalf("round %d: channel %s got event %s after %v, want %s", round, ch, data, got[ch], want)
			}
			got[ch] = append(got[ch], data)
		}
	}

	publishRound(1)
	publishRound(2)
	eventually(t, "the first worker retrying", func() bool { return first.Stats().Retried.Load() > 0 })
	second := newPool("worker-b", nil)
	// The second worker pulls the partitions it won, beside the first.
	eventually(t, "the second worker pulling", func() bool {
		for k := 0; k < queue.DefaultPartitions; k++ {
			c, err := js.Consumer(ctx, queue.StreamName, queue.ConsumerName(k))
			if err != nil {
				return false
			}
			if info, err := c.Info(ctx); err == nil && info.NumWaiting >= 2 {
				return true
			}
		}
		return false
	})
	// Then the first notices it, and gives up the partitions it lost,
	// all but those with jobs stuck behind its retries.
	for deadline := time.Now().Add(wait); first.Stats().Partitions.Load() == queue.DefaultPartitions; {
		if time.Now().After(deadline) {
			t.Skip("rendezvous hashing gave the second worker no partition")
		}
		time.Sleep(10 * time.Millisecond)
	}
	publishRound(3)
	// Keep failing past the drain bound (5 s), after which a worker that
	// had stopped pulling those partitions would have unpinned them, and
	// the second worker would deliver round 3 before rounds 1 and 2. This
	// wait proves nothing happens; no assertion depends on its length.
	time.Sleep(6 * time.Second)
	healed.Store(true)
	for round := 1; round <= 3; round++ {
		receiveRound(round)
	}
	// Then the partitions it won are the second worker's: more rounds
	// until it has delivered some, each still in order.
	round := 3
	for deadline := time.Now().Add(wait); second.Stats().Jobs.Load() == 0; {
		if time.Now().After(deadline) {
			t.Skip("no partition moved to the second worker (rendezvous hashing gave it none)")
		}
		round++
		publishRound(round)
		receiveRound(round)
	}
	eventually(t, "every job acked", func() bool {
		s, err := js.Stream(ctx, queue.StreamName)
		if err != nil {
			return false
		}
		n, err := queue.Jobs(ctx, s)
		return err == nil && n == 0
	})
	nothingMore(t, all)
	t.Logf("%d rounds; first worker %d jobs, second %d", round, first.Stats().Jobs.Load(), second.Stats().Jobs.Load())
}
