package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/protocol"
)

func startJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, js := natstest.JetStream(t, "queue-test")
	return js
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Processes started together on a fresh NATS all create the stream at
// once, some with other settings; none of them may fail for it.
func TestEnsureStreamConcurrently(t *testing.T) {
	srv := natstest.Server(t, false)
	const procs = 6
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		js, err := jetstream.New(natstest.Conn(t, srv, fmt.Sprintf("proc-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = queue.EnsureStream(testContext(t), js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Duration(1+i%2) * time.Hour})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(natstest.Conn(t, srv, "check"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(testContext(t), queue.DeadLetterStream); err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
}

func TestEnsureStreamTwiceIsHarmless(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	opts := queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour}
	first, err := queue.EnsureStream(ctx, js, opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg := first.CachedInfo().Config
	if cfg.Name != queue.StreamName || cfg.Retention != jetstream.WorkQueuePolicy || cfg.Discard != jetstream.DiscardNew ||
		cfg.Storage != jetstream.FileStorage || cfg.MaxBytes != opts.MaxBytes || cfg.MaxAge != opts.MaxAge ||
		cfg.Replicas != 1 || !slices.Equal(cfg.Subjects, []string{queue.SubjectPrefix + "*.*", queue.AnchorSubject}) ||
		!cfg.AllowAtomicPublish || cfg.SubjectTransform == nil {
		t.Fatalf("stream config %+v", cfg)
	}

	// A job stored before the second call survives it.
	seq, err := queue.NewPublisher(js).Publish(ctx, &queue.Job{AppID: "app", Events: []protocol.Trigger{{Name: "e", Data: "d", Channels: []string{"c"}}}})
	if err != nil {
		t.Fatal(err)
	}

	second, err := queue.EnsureStream(ctx, js, opts)
	if err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	info, err := second.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxBytes != cfg.MaxBytes || info.Config.MaxAge != cfg.MaxAge || info.Config.Retention != cfg.Retention ||
		info.Config.Discard != cfg.Discard || info.Config.Duplicates != cfg.Duplicates {
		t.Fatalf("config changed: %+v, was %+v", info.Config, cfg)
	}
	if info.State.Msgs != 1 || info.State.LastSeq != seq {
		t.Fatalf("stream holds %d messages (last %d), want the job at %d", info.State.Msgs, info.State.LastSeq, seq)
	}

	// Other settings update the stream in place.
	third, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 16 << 20, MaxAge: 2 * time.Hour})
	if err != nil {
		t.Fatalf("EnsureStream with new limits: %v", err)
	}
	info, err = third.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxBytes != 16<<20 || info.Config.MaxAge != 2*time.Hour || info.State.Msgs != 1 {
		t.Fatalf("after update: %+v, %d messages", info.Config, info.State.Msgs)
	}
}

func TestEnsureConsumersTwiceIsHarmless(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour, Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		cs, err := queue.EnsureConsumers(ctx, js, 4)
		if err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
		if len(cs) != 4 {
			t.Fatalf("%d consumers, want 4", len(cs))
		}
		for k, c := range cs {
			cfg := c.CachedInfo().Config
			if cfg.Durable != queue.ConsumerName(k) || cfg.AckPolicy != jetstream.AckExplicitPolicy ||
				cfg.FilterSubject != queue.PartitionFilter(k) || cfg.PriorityPolicy != jetstream.PriorityPolicyPinned {
				t.Fatalf("consumer %d config %+v", k, cfg)
			}
		}
	}
}

// A channel's jobs always land in one partition, in order; a multi-channel
// job is split per channel and stored all at once.
func TestPartitionsKeepAChannelTogether(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	stream, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour, Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	pub := queue.NewPublisher(js)
	for i := 0; i < 5; i++ {
		job := &queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Data: fmt.Sprint(i), Channels: []string{"one", "two", "three"}}}}
		if _, err := pub.Publish(ctx, job); err != nil {
			t.Fatal(err)
		}
	}
	info, _ := stream.Info(ctx)
	if info.State.Msgs != 15 {
		t.Fatalf("%d jobs stored, want 15", info.State.Msgs)
	}
	partition := map[string]string{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var job queue.Job
		_ = json.Unmarshal(m.Data, &job)
		ch := job.Events[0].Channels[0]
		p := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		if prev, ok := partition[ch]; ok && prev != p {
			t.Fatalf("channel %s in partitions %s and %s", ch, prev, p)
		}
		partition[ch] = p
	}
}

func TestPublishStoresTheJob(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	stream, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	job := &queue.Job{AppID: "my.app", Events: []protocol.Trigger{
		{Name: "one", Data: `{"a":"<b>"}`, Channels: []string{"x.y", "z"}, SocketID: "1.2"},
		{Name: "two", Data: "", Channels: []string{"w"}},
	}}
	pub := queue.NewPublisher(js)
	var last uint64
	for i := 0; i < 3; i++ {
		seq, err := pub.Publish(ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		if seq <= last {
			t.Fatalf("sequence %d after %d", seq, last)
		}
		last = seq
	}
	msg, err := stream.GetMsg(ctx, last)
	if err != nil {
		t.Fatal(err)
	}
	// The job was split per channel: x.y, z and w, the last one stored
	// last.
	if !strings.HasPrefix(msg.Subject, "resound.jobs.my~2Eapp.w.") {
		t.Fatalf("published on %q", msg.Subject)
	}
	var got queue.Job
	if err := json.Unmarshal(msg.Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.AppID != job.AppID || len(got.Events) != 1 || got.Events[0].Name != "two" || strings.Join(got.Events[0].Channels, ",") != "w" {
		t.Fatalf("stored %+v", got)
	}
	first, err := stream.GetMsg(ctx, last-2)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(first.Data, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Events) != 1 || got.Events[0].Data != job.Events[0].Data || got.Events[0].SocketID != "1.2" ||
		strings.Join(got.Events[0].Channels, ",") != "x.y" {
		t.Fatalf("first part %+v", got)
	}
}

func TestPublishWithoutStreamIsUnavailable(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	_, err := queue.NewPublisher(js).Publish(ctx, &queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Channels: []string{"c"}}}})
	if !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Publish with no stream = %v, want ErrUnavailable", err)
	}
}

func TestPublishToFullStreamIsUnavailable(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 1 << 20, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	pub := queue.NewPublisher(js)
	big := &queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Data: strings.Repeat("x", 100<<10), Channels: []string{"c"}}}}
	var err error
	for i := 0; i < 20 && err == nil; i++ {
		_, err = pub.Publish(ctx, big)
	}
	if !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("publishing 2 MiB into a 1 MiB stream ended with %v, want ErrUnavailable (DiscardNew)", err)
	}
}

func TestSubject(t *testing.T) {
	cases := map[[2]string]string{
		{"123456", "orders"}:  "resound.jobs.123456.orders",
		{"my.app", "a.b"}:     "resound.jobs.my~2Eapp.a~2Eb",
		{"a*b", "c>"}:         "resound.jobs.a~2Ab.c~3E",
		{"with sp", "#x-1"}:   "resound.jobs.with~20sp.#x-1",
		{"~", "presence-p;q"}: "resound.jobs.~7E.presence-p;q",
	}
	for in, want := range cases {
		got := queue.Subject(in[0], in[1])
		if got != want {
			t.Errorf("Subject(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
		if app, ok := queue.AppOfSubject(got + ".3"); !ok || app != in[0] {
			t.Errorf("AppOfSubject(%q) = %q, %v", got, app, ok)
		}
	}
	if queue.Subject("a.b", "c") == queue.Subject("a~2Eb", "c") {
		t.Error("two app ids share a subject")
	}
}

func TestJobValidate(t *testing.T) {
	ok := protocol.Trigger{Name: "e", Data: "d", Channels: []string{"c"}}
	events := func(n int) []protocol.Trigger {
		out := make([]protocol.Trigger, n)
		for i := range out {
			out[i] = ok
		}
		return out
	}
	cases := []struct {
		name string
		job  queue.Job
		want string // "" means valid
	}{
		{"valid", queue.Job{AppID: "a", Events: events(1)}, ""},
		{"ten events", queue.Job{AppID: "a", Events: events(10)}, ""},
		{"no app_id", queue.Job{Events: events(1)}, "app_id"},
		{"no events", queue.Job{AppID: "a"}, "at least one event"},
		{"empty events", queue.Job{AppID: "a", Events: []protocol.Trigger{}}, "at least one event"},
		{"eleven events", queue.Job{AppID: "a", Events: events(11)}, "at most 10"},
		{"reserved name", queue.Job{AppID: "a", Events: []protocol.Trigger{ok, {Name: "pusher:x", Data: "d", Channels: []string{"c"}}}}, "events[1]"},
		{"no name", queue.Job{AppID: "a", Events: []protocol.Trigger{{Data: "d", Channels: []string{"c"}}}}, "events[0]"},
		{"no channels", queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Data: "d"}}}, "events[0]"},
		{"bad channel", queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Channels: []string{"a b"}}}}, "events[0]"},
		{"data too large", queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Data: strings.Repeat("x", 10241), Channels: []string{"c"}}}}, "events[0]"},
		{"bad socket id", queue.Job{AppID: "a", Events: []protocol.Trigger{{Name: "e", Channels: []string{"c"}, SocketID: "x"}}}, "events[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.job.Validate(protocol.DefaultLimits)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// docs/jobs.md: a second job with the same Nats-Msg-Id within two minutes
// is dropped as a duplicate.
func TestMsgIDDeduplicates(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	stream, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"app_id":"a","events":[{"name":"e","data":"d","channels":["c"]}]}`)
	first, err := js.Publish(ctx, queue.Subject("a", "c"), body, jetstream.WithMsgID("broadcast-1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := js.Publish(ctx, queue.Subject("a", "c"), body, jetstream.WithMsgID("broadcast-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("second publish = %+v, want a duplicate of %d", again, first.Sequence)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d jobs, want 1", info.State.Msgs)
	}
}

// BenchmarkPublishTenChannels stores a trigger on ten channels, from many
// goroutines at once, as the API does under load.
func BenchmarkPublishTenChannels(b *testing.B) {
	_, js := natstest.JetStream(b, "bench")
	ctx := context.Background()
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 1 << 30, MaxAge: time.Hour}); err != nil {
		b.Fatal(err)
	}
	pub := queue.NewPublisher(js)
	chans := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"}
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			job := &queue.Job{AppID: "app", Events: []protocol.Trigger{{Name: "e", Data: "{}", Channels: chans}}}
			if _, err := pub.Publish(ctx, job); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
