package queue_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
)

// EnsureStream creates the dead-letter stream beside the job stream, with
// the job stream's replicas; running it again keeps what is stored.
func TestEnsureStreamCreatesDeadLetters(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	opts := queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour}
	if _, err := queue.EnsureStream(ctx, js, opts); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, queue.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if len(cfg.Subjects) != 1 || cfg.Subjects[0] != "resound.dead.>" || cfg.Retention != jetstream.LimitsPolicy ||
		cfg.Discard != jetstream.DiscardOld || cfg.MaxAge != 7*24*time.Hour || cfg.MaxBytes != 64<<20 ||
		cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 {
		t.Fatalf("dead-letter stream config %+v", cfg)
	}
	if _, err := queue.PublishDeadLetter(ctx, js, queue.DeadLetter{Subject: queue.Subject("app", "c") + ".0", Data: []byte("{}"), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureStream(ctx, js, opts); err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("dead-letter stream holds %d messages after EnsureStream again, want 1", info.State.Msgs)
	}
}

func TestDeadLetterSubject(t *testing.T) {
	for _, c := range []struct{ stored, want string }{
		// The partition goes: resound.dead. -> resound.jobs. is the
		// subject to replay on.
		{queue.Subject("my.app", "orders.42") + ".3", "resound.dead.my~2Eapp.orders~2E42"},
		{queue.Subject("a", "b") + ".17", "resound.dead.a.b"},
		// No partition (a stream without the transform): kept as it is.
		{queue.Subject("a", "b"), "resound.dead.a.b"},
		// Not a job subject: kept whole, as one token.
		{"elsewhere.x", "resound.dead.elsewhere~2Ex"},
	} {
		if got := queue.DeadLetterSubject(c.stored); got != c.want {
			t.Errorf("DeadLetterSubject(%q) = %q, want %q", c.stored, got, c.want)
		}
		if replay := "resound.jobs." + strings.TrimPrefix(c.want, queue.DeadLetterPrefix); strings.HasPrefix(c.stored, queue.SubjectPrefix) &&
			!strings.HasPrefix(c.stored, replay) {
			t.Errorf("replay subject %q is not the job's %q", replay, c.stored)
		}
	}
}

// A dead letter holds the job's bytes as they were and the four headers;
// storing the same job's dead letter again (a worker that could not
// terminate the job got it back) is a duplicate, dropped.
func TestPublishDeadLetter(t *testing.T) {
	js := startJetStream(t)
	ctx := testContext(t)
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 8 << 20, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	stored := time.Now()
	dl := queue.DeadLetter{
		Subject: queue.Subject("app", "chan") + ".5", Data: []byte("{\"app_id\":\"app\"\xff}"),
		Reason:    "line one\r\nline two " + strings.Repeat("x", 1000),
		StreamSeq: 42, Deliveries: 3, Stored: stored,
	}
	dup, err := queue.PublishDeadLetter(ctx, js, dl)
	if err != nil || dup {
		t.Fatalf("PublishDeadLetter: duplicate %v, %v", dup, err)
	}
	s, err := js.Stream(ctx, queue.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, "resound.dead.app.chan")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Data, dl.Data) {
		t.Errorf("body %q, want %q", m.Data, dl.Data)
	}
	reason := m.Header.Get(queue.HeaderReason)
	if !strings.HasPrefix(reason, "line one  line two x") || strings.ContainsAny(reason, "\r\n") || len(reason) > 600 {
		t.Errorf("reason %q: want it on one line, cut short", reason)
	}
	for h, want := range map[string]string{queue.HeaderSubject: dl.Subject, queue.HeaderStreamSeq: "42", queue.HeaderDeliveries: "3"} {
		if got := m.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}

	dup, err = queue.PublishDeadLetter(ctx, js, dl)
	if err != nil || !dup {
		t.Fatalf("second PublishDeadLetter: duplicate %v, %v; want a duplicate", dup, err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("dead-letter stream: %v, %v; want one message", info, err)
	}
}

// Without the dead-letter stream, setting a job aside fails: the worker
// must then leave the job for redelivery.
func TestPublishDeadLetterWithoutStream(t *testing.T) {
	_, js := natstest.JetStream(t, "no-streams")
	ctx := testContext(t)
	if _, err := queue.PublishDeadLetter(ctx, js, queue.DeadLetter{Subject: queue.Subject("a", "b") + ".0", Data: []byte("{}")}); err == nil {
		t.Fatal("PublishDeadLetter succeeded with no stream")
	}
}
