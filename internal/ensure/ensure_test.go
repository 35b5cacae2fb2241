package ensure_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
)

// startCluster runs a 3-node NATS cluster with JetStream in this process,
// each node listening on loopback, and returns their client URLs once a
// meta leader is elected. tests/multiprocess runs real nats-server
// processes; this is the quick version for the package's own tests.
func startCluster(t *testing.T) []string {
	t.Helper()
	const size = 3
	ports := make([]int, size)
	var routes []string
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(ports[i]))
	}
	servers := make([]*server.Server, size)
	urls := make([]string, size)
	for i := range servers {
		opts := &server.Options{
			ServerName: "n" + strconv.Itoa(i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: "ensure-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(joinExcept(routes, i)),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("server %d not ready", i)
		}
		servers[i], urls[i] = s, s.ClientURL()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		leaders := 0
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leaders++
			}
		}
		if leaders == 1 {
			return urls
		}
		if time.Now().After(deadline) {
			t.Fatal("no meta leader within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func joinExcept(all []string, skip int) string {
	out := ""
	for i, s := range all {
		if i != skip {
			if out != "" {
				out += ","
			}
			out += s
		}
	}
	return out
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	return natstest.Dial(t, url, nats.MaxReconnects(-1))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Processes started together on a fresh 3-node cluster each create the
// same R3 streams, buckets and consumers at once. With nats.go's
// CreateOrUpdate (update, then create) the replies of some were lost, and
// they waited until their deadline; here every one succeeds.
func TestManyAtOnceOnAFreshR3Cluster(t *testing.T) {
	urls := startCluster(t)
	if err := allAtOnce(t, urls); err != nil {
		t.Fatal(err)
	}
	// And again, all at once, on what they made.
	if err := allAtOnce(t, urls); err != nil {
		t.Fatalf("again: %v", err)
	}
}

// allAtOnce runs setUp from six connections at once, spread over the
// servers.
func allAtOnce(t *testing.T, urls []string) error {
	const procs = 6
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		js := connect(t, urls[i%len(urls)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = setUp(testCtx(t), js)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// setUp makes what a Resound process makes, in the same order: streams,
// buckets, then consumers.
func setUp(ctx context.Context, js jetstream.JetStream) error {
	for _, name := range []string{"JOBS", "DEAD"} {
		if _, err := ensure.Stream(ctx, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Replicas: 3, Storage: jetstream.FileStorage}); err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
	}
	if _, err := ensure.Stream(ctx, js, jetstream.StreamConfig{Name: "HISTORY", Subjects: []string{"deliver.>"}, Replicas: 3, Storage: jetstream.MemoryStorage, MaxAge: time.Minute}); err != nil {
		return fmt.Errorf("stream HISTORY: %w", err)
	}
	for _, b := range []string{"GATEWAYS", "WORKERS", "PRESENCE", "CACHE"} {
		if _, err := ensure.KeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: b, Replicas: 3, TTL: time.Minute}); err != nil {
			return fmt.Errorf("bucket %s: %w", b, err)
		}
	}
	for k := range 4 {
		name := "workers-" + strconv.Itoa(k)
		if _, err := ensure.Consumer(ctx, js, "JOBS", jetstream.ConsumerConfig{Durable: name, FilterSubject: "JOBS." + strconv.Itoa(k), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			return fmt.Errorf("consumer %s: %w", name, err)
		}
	}
	return ensure.DeleteConsumer(ctx, js, "JOBS", "legacy")
}

// Settings that differ from the stream's are applied, by whoever comes
// last; settings the server refuses fail at once, without waiting out the
// context.
func TestStreamUpdatesAndFailsForGood(t *testing.T) {
	_, js := natstest.JetStream(t, "ensure-test")
	ctx := testCtx(t)
	cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, MaxAge: time.Hour}
	if _, err := ensure.Stream(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.MaxAge = 2 * time.Hour
	s, err := ensure.Stream(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != 2*time.Hour {
		t.Fatalf("max age %v after the update, want 2h", got)
	}
	// Storage cannot change: the server refuses, for good.
	cfg.Storage = jetstream.MemoryStorage
	start := time.Now()
	if _, err := ensure.Stream(ctx, js, cfg); err == nil || ensure.Transient(err) {
		t.Fatalf("changing the storage: %v, want a permanent error", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the refusal waited out the context (%v)", time.Since(start))
	}
}

func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{fmt.Errorf("queue: stream X: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{nats.ErrNoResponders, true},
		{jetstream.ErrNoStreamResponse, true},
		{jetstream.ErrJetStreamNotEnabled, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement"}, true},
		{&jetstream.APIError{Code: 500, ErrorCode: 10118, Description: "stream is offline"}, true},
		{context.Canceled, false},
		{nats.ErrConnectionClosed, false},
		{&jetstream.APIError{Code: 500, ErrorCode: 10052, Description: "stream configuration invalid"}, false},
		{jetstream.ErrStreamNameAlreadyInUse, false},
		{errors.New("other"), false},
	} {
		if got := ensure.Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Do gives every attempt a bounded context, so that a request whose reply
// never comes is made again, and stops on a permanent error at once.
func TestDoRetriesLostReplies(t *testing.T) {
	ctx := testCtx(t)
	attempts := 0
	err := ensure.Do(ctx, func(actx context.Context) error {
		attempts++
		if _, ok := actx.Deadline(); !ok {
			t.Fatal("an attempt without a deadline")
		}
		if attempts < 3 {
			return context.DeadlineExceeded // as if the reply were lost
		}
		return nil
	})
	if err != nil || attempts != 3 {
		t.Fatalf("Do: %v after %d attempts, want success on the 3rd", err, attempts)
	}
	attempts = 0
	bad := errors.New("refused")
	if err := ensure.Do(ctx, func(context.Context) error { attempts++; return bad }); !errors.Is(err, bad) || attempts != 1 {
		t.Fatalf("Do: %v after %d attempts, want the permanent error after 1", err, attempts)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = ensure.Do(short, func(context.Context) error { return nats.ErrNoResponders })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do past its context: %v, want the deadline", err)
	}
}
