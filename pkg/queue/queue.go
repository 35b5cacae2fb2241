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
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/resoundhq/resound/pkg/route"
	"github.com/resoundhq/resound/protocol"
)

// Names of the JetStream objects Resound owns.
const (
	StreamName    = "RESOUND_JOBS"
	SubjectPrefix = "resound.jobs."
	ConsumerName  = "resound-workers"
)

// Subject is where jobs for an app are published: resound.jobs.<app_id>,
// the id escaped as one subject token.
func Subject(appID string) string { return SubjectPrefix + route.EscapeToken(appID) }

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
}

// EnsureStream creates the job stream, or updates it to opts. Running it
// from every process at start-up, any number of times, is harmless.
//
// Work-queue retention removes a job once a worker acks it. DiscardNew
// makes a full stream refuse new jobs, so that the API answers 503 instead
// of silently dropping the oldest acknowledged ones.
func EnsureStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Resound broadcast jobs",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    opts.MaxBytes,
		MaxAge:      opts.MaxAge,
		Replicas:    opts.Replicas,
		Duplicates:  2 * time.Minute,
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", StreamName, err)
	}
	return s, nil
}

// EnsureConsumer creates or updates the durable consumer the workers share.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "Resound workers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 20000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("queue: consumer %s: %w", ConsumerName, err)
	}
	return c, nil
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

// Publish stores job and returns its stream sequence once JetStream has
// acknowledged it. It does not validate: callers validate first.
func (p *Publisher) Publish(ctx context.Context, job *Job) (uint64, error) {
	body, err := json.Marshal(job)
	if err != nil {
		return 0, err
	}
	ack, err := p.js.Publish(ctx, Subject(job.AppID), body, jetstream.WithExpectStream(StreamName))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return ack.Sequence, nil
}
