package queue_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/protocol"
)

// blockFiles lists the job stream's message block files in a server's
// store.
func blockFiles(t *testing.T, storeDir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(storeDir, "jetstream", "$G", "streams", queue.StreamName, "msgs", "*.blk"))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	slices.Sort(files)
	return files
}

// Acking the jobs of a stream that keeps up empties its last block, and
// nats-server then replaces the block's file (create, tombstone, delete)
// for every job. With the anchor in place the file stays. If nats-server
// stops replacing the file, the first half fails, and the anchor is no
// longer needed.
func TestAnchorKeepsTheLastBlockFile(t *testing.T) {
	for _, anchored := range []bool{false, true} {
		ctx := testContext(t)
		dir := t.TempDir()
		srv, err := natsembed.Start(natsembed.Options{StoreDir: dir, Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Shutdown)
		js, err := jetstream.New(natstest.Conn(t, srv, "anchor-test"))
		if err != nil {
			t.Fatal(err)
		}
		stream, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cons, err := js.CreateConsumer(ctx, queue.StreamName, jetstream.ConsumerConfig{
			Durable: "all", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: queue.SubjectPrefix + "*.*.*"})
		if err != nil {
			t.Fatal(err)
		}
		if anchored {
			keep, stop := context.WithCancel(ctx)
			go queue.KeepAnchor(keep, js, time.Hour, zerolog.Nop())
			t.Cleanup(stop)
			eventually(t, "the anchor stored", func() bool {
				info, err := stream.Info(ctx)
				return err == nil && info.State.Msgs == 1
			})
		}
		pub := queue.NewPublisher(js)
		var before []string
		for i := range 3 {
			if _, err := pub.Publish(ctx, &queue.Job{AppID: "app", Events: []protocol.Trigger{{Name: "e", Data: "d", Channels: []string{"c"}}}}); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				before = blockFiles(t, dir)
			}
			batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for m := range batch.Messages() {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		after := blockFiles(t, dir)
		jobs, err := queue.Jobs(ctx, stream)
		if err != nil || jobs != 0 {
			t.Fatalf("anchored=%v: %d jobs left (%v), want none", anchored, jobs, err)
		}
		if same := slices.Equal(before, after); same != anchored {
			t.Errorf("anchored=%v: block files %v before the acks, %v after", anchored, before, after)
		}
	}
}

// However often it is published, one anchor stays, and Jobs does not
// count it.
func TestKeepAnchorKeepsOne(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	stream, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.NewPublisher(js).Publish(ctx, &queue.Job{AppID: "app", Events: []protocol.Trigger{{Name: "e", Data: "d", Channels: []string{"c"}}}}); err != nil {
		t.Fatal(err)
	}
	keep, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); queue.KeepAnchor(keep, js, 5*time.Millisecond, zerolog.Nop()) }()
	eventually(t, "five anchors published", func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.LastSeq >= 6
	})
	stop()
	<-done
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(queue.AnchorSubject))
	if err != nil {
		t.Fatal(err)
	}
	// The last round may have ended between its publish and its purge.
	if n := info.State.Subjects[queue.AnchorSubject]; n < 1 || n > 2 {
		t.Fatalf("%d anchors after %d publishes, want 1 (2 if stopped before the last purge)", n, info.State.LastSeq-1)
	}
	if jobs, err := queue.Jobs(ctx, stream); err != nil || jobs != 1 {
		t.Fatalf("Jobs = %d, %v; want the one job", jobs, err)
	}
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not so within 10 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
