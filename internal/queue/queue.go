// Package queue is the durable job queue between producers and workers: a
// JetStream stream of broadcast jobs. Producers (the HTTP API, the Go
// producer package, any NATS client) publish jobs; workers consume them.
// The message format is documented in docs/jobs.md.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

// Names of the JetStream objects Resound owns.
const (
	StreamName    = "RESOUND_JOBS"
	SubjectPrefix = wire.JobsPrefix
	// ConsumerPrefix starts the name of each partition's consumer:
	// resound-workers-0, resound-workers-1, ...
	ConsumerPrefix = "resound-workers-"
	// LegacyConsumer is the single shared consumer of earlier versions;
	// EnsureConsumers removes it, since work-queue consumers may not
	// overlap.
	LegacyConsumer = "resound-workers"
	// PriorityGroup is the pinned priority group every partition consumer
	// has: JetStream delivers a partition to one worker at a time.
	PriorityGroup = "workers"
	// DefaultPartitions is how many ordered lanes the stream has.
	DefaultPartitions = 8
)

// Subject is where a job whose events share the routing key key (a
// channel name) is published: resound.jobs.<app_id>.<key>, each part
// escaped as one subject token. The stream hashes the two tokens into a
// partition, and each partition is worked by one worker at a time, in
// order: so jobs with one key are delivered in the order they were stored.
func Subject(appID, key string) string {
	return SubjectPrefix + route.EscapeToken(appID) + "." + route.EscapeToken(key)
}

// PartitionFilter is the stored-subject filter of partition k.
func PartitionFilter(k int) string { return SubjectPrefix + "*.*." + strconv.Itoa(k) }

// ConsumerName is the name of partition k's consumer.
func ConsumerName(k int) string { return ConsumerPrefix + strconv.Itoa(k) }

// AppOfSubject returns the app id a stored job subject names.
func AppOfSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix)
	if !ok {
		return "", false
	}
	tok, _, _ := strings.Cut(rest, ".")
	app, err := route.UnescapeToken(tok)
	return app, err == nil
}

// Job is one broadcast request: one or more events of one app, delivered in
// order. A batch_events call is one job, so that it is queued all or
// nothing.
type Job struct {
	AppID  string             `json:"app_id"`
	Events []protocol.Trigger `json:"events"`
}

// Validate checks a job against the Pusher limits, as the HTTP API does, so
// that a job published straight to NATS gets the same rules.
func (j *Job) Validate(lim protocol.Limits) error {
	if j.AppID == "" {
		return errors.New("app_id is required")
	}
	if len(j.Events) == 0 {
		return errors.New("events must hold at least one event")
	}
	if len(j.Events) > lim.MaxBatch {
		return fmt.Errorf("at most %d events per job", lim.MaxBatch)
	}
	for i, ev := range j.Events {
		if err := ev.Validate(lim); err != nil {
			return fmt.Errorf("events[%d]: %w", i, err)
		}
	}
	return nil
}

// StreamOptions size the job stream.
type StreamOptions struct {
	MaxBytes int64
	MaxAge   time.Duration
	Replicas int
	// Partitions is the number of ordered lanes; every process must use
	// the same number.
	Partitions int
}

func (o *StreamOptions) defaults() {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Partitions <= 0 {
		o.Partitions = DefaultPartitions
	}
}

// EnsureStream creates the job stream, or updates it to opts. Running it
// from every process at start-up, any number of times, is harmless.
//
//   - Work-queue retention removes a job once a worker acks it.
//   - DiscardNew makes a full stream refuse new jobs, so that the API
//     answers 503 instead of silently dropping acknowledged ones.
//   - A subject transform appends the partition, a hash of the app and
//     routing-key tokens, to every stored subject.
//   - AnchorSubject, one token where jobs have two, takes the anchor
//     (see there).
//   - Atomic batches are allowed, for producers that want a trigger on
//     many channels stored all or none; Publish does without them (see
//     there why).
//
// It creates the dead-letter stream beside it, with the same replicas.
func EnsureStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	opts.defaults()
	cfg := jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Resound broadcast jobs",
		Subjects:    []string{SubjectPrefix + "*.*", AnchorSubject},
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      SubjectPrefix + "*.*",
			Destination: SubjectPrefix + "{{wildcard(1)}}.{{wildcard(2)}}.{{partition(" + strconv.Itoa(opts.Partitions) + ",1,2)}}",
		},
		Retention:          jetstream.WorkQueuePolicy,
		Storage:            jetstream.FileStorage,
		Discard:            jetstream.DiscardNew,
		MaxBytes:           opts.MaxBytes,
		MaxAge:             opts.MaxAge,
		Replicas:           opts.Replicas,
		Duplicates:         2 * time.Minute,
		AllowAtomicPublish: true,
	}
	s, err := CreateOrUpdate(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	if err := ensureDeadLetters(ctx, js, opts.Replicas); err != nil {
		return nil, err
	}
	return s, nil
}

// Consumer timing. A job's ack is due within AckWait; a partition whose
// worker stopped pulling is handed to another after PinnedTTL. PinnedTTL is
// well past AckWait, so by the time another worker takes a partition, the
// jobs the dead one held are due again, and JetStream hands out
// redeliveries before new jobs. (A margin of one second was not enough on
// a loaded machine: the new owner was handed later jobs first, and the
// dead one's, delivered again as repeats, were dropped by the gateways.)
// Workers that stop cleanly unpin their partitions, so only a worker's
// death waits this long.
//
// The pin lapses PinnedTTL after the pinned worker's last pull request,
// not after the last job it received, and a pull request lasts until it
// is half served or expires (after 30 s by default): a worker that died
// after a quiet spell lost its pin before its jobs were due again, and
// the next owner got later jobs first. So workers pull at least every
// PullExpiry: a live worker keeps its pin, and a dead one's lapses at
// least PinnedTTL-PullExpiry after its death, past AckWait.
//
// The pin does not keep the redeliveries in order among themselves: while
// it names a worker that no longer pulls, JetStream rotates its queue of
// redeliveries each time something wakes the consumer (see
// internal/ordered), so the worker sorts them again.
const (
	AckWait    = 5 * time.Second
	PinnedTTL  = 10 * time.Second
	PullExpiry = 2 * time.Second
)

// MaxAckPending bounds the jobs of a partition delivered and not yet
// acked: JetStream delivers nothing more of it until some are.
const MaxAckPending = 10000

// EnsureConsumers creates or updates one durable consumer per partition,
// each in the pinned priority group, and removes the legacy shared one.
func EnsureConsumers(ctx context.Context, js jetstream.JetStream, partitions int) ([]jetstream.Consumer, error) {
	if partitions <= 0 {
		partitions = DefaultPartitions
	}
	if err := ensure.DeleteConsumer(ctx, js, StreamName, LegacyConsumer); err != nil {
		return nil, fmt.Errorf("queue: removing consumer %s: %w", LegacyConsumer, err)
	}
	out := make([]jetstream.Consumer, partitions)
	for k := range out {
		c, err := ensure.Consumer(ctx, js, StreamName, jetstream.ConsumerConfig{
			Durable:        ConsumerName(k),
			Description:    "Resound workers, partition " + strconv.Itoa(k),
			FilterSubject:  PartitionFilter(k),
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        AckWait,
			MaxAckPending:  MaxAckPending,
			DeliverPolicy:  jetstream.DeliverAllPolicy,
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{PriorityGroup},
			PinnedTTL:      PinnedTTL,
		})
		if err != nil {
			return nil, fmt.Errorf("queue: consumer %s: %w", ConsumerName(k), err)
		}
		out[k] = c
	}
	return out, nil
}

// publishAttempt bounds one attempt to store a job. While a stream's
// leader is being elected (a NATS node died), an attempt gets no answer;
// the next one, with the same Nats-Msg-Id, reaches the new leader.
const publishAttempt = time.Second

// publishOne stores one job, trying again with the same Nats-Msg-Id until
// ctx ends. An attempt that times out may have been stored all the same;
// answering 503 then makes the producer send the event again, and it would
// be stored twice (found by the node-kill test under load: 9 to 24
// duplicate deliveries in some runs). Trying again within the request's
// own time, under the same id, stores it once and answers 200.
func (p *Publisher) publishOne(ctx context.Context, m *nats.Msg, id string) (uint64, error) {
	m.Header.Set(jetstream.MsgIDHeader, id)
	wait := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, publishAttempt)
		ack, err := p.js.PublishMsg(actx, m, jetstream.WithExpectStream(StreamName))
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) || ctx.Err() != nil {
			// Only an attempt that got no answer is tried again: an
			// answer that refuses (a full stream), no stream at all, or
			// the request's time being up is final.
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// Publisher enqueues jobs and waits for JetStream to store them.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a Publisher on js.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

// ErrUnavailable wraps every failure to get a job stored: the caller must
// not report success.
var ErrUnavailable = errors.New("queue: job not stored")

// Split divides a job into one job per channel, each event keeping its
// place: the unit that is ordered, since one partition holds all of a
// channel's jobs.
func Split(job *Job) []*Job {
	if len(job.Events) == 1 && len(job.Events[0].Channels) == 1 {
		return []*Job{job}
	}
	var order []string
	byChannel := map[string]*Job{}
	for _, ev := range job.Events {
		for _, ch := range ev.Channels {
			j := byChannel[ch]
			if j == nil {
				j = &Job{AppID: job.AppID}
				byChannel[ch] = j
				order = append(order, ch)
			}
			one := ev
			one.Channels = []string{ch}
			j.Events = append(j.Events, one)
		}
	}
	out := make([]*Job, len(order))
	for i, ch := range order {
		out[i] = byChannel[ch]
	}
	return out
}

// Publish stores job, split per channel, and returns the stream sequence
// of its last part once JetStream has acknowledged every part.
//
// The parts of a trigger on several channels are published together and
// their acks awaited together, one round trip whatever the number of
// channels. They are not one atomic batch: on a single-replica file-store
// stream, nats-server 2.15 stages every atomic batch in a file store of its
// own, synced on commit, and a trigger on ten channels took 13.6 ms, about
// 70 such triggers/s from 32 goroutines (BenchmarkPublishTenChannels).
// The price: if JetStream refuses a part (a full stream, NATS going away
// mid-call), the caller gets an error, the API answers 503, and the parts
// already stored are still delivered, so a producer's retry repeats the
// event on those channels. Nothing accepted is lost. Every part carries a
// Nats-Msg-Id, so a publish nats.go retries is never stored twice.
//
// It does not validate: callers validate first.
func (p *Publisher) Publish(ctx context.Context, job *Job) (uint64, error) {
	parts := Split(job)
	msgs := make([]*nats.Msg, len(parts))
	for i, part := range parts {
		body, err := json.Marshal(part)
		if err != nil {
			return 0, err
		}
		msgs[i] = &nats.Msg{Subject: Subject(part.AppID, part.Events[0].Channels[0]), Data: body, Header: nats.Header{}}
	}
	id := nuid.Next()
	if len(msgs) == 1 {
		return p.publishOne(ctx, msgs[0], id)
	}
	acks := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		m.Header.Set(jetstream.MsgIDHeader, id+"-"+strconv.Itoa(i))
		f, err := p.js.PublishMsgAsync(m, jetstream.WithExpectStream(StreamName))
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		acks[i] = f
	}
	var seq uint64
	for _, f := range acks {
		select {
		case ack := <-f.Ok():
			seq = max(seq, ack.Sequence)
		case err := <-f.Err():
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		}
	}
	return seq, nil
}
