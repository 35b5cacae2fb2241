package webhook

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/wire"
)

// StreamOptions size the webhook stream.
type StreamOptions struct {
	MaxBytes int64
	// RetryFor is how long a receiver's failures are retried; records are
	// kept well past it.
	RetryFor time.Duration
	Replicas int
	// Lanes is the number of ordered lanes (RESOUND_PARTITIONS); every
	// process must use the same number.
	Lanes int
}

// Consumer timing, as the job stream's (queue.AckWait, queue.PinnedTTL,
// queue.PullExpiry): a lane whose worker died is handed on once what it
// held is due again, so the lane stays in order. A worker keeps a record
// it is still retrying with InProgress. The pin lapses PinnedTTL after
// the pinned worker's last pull request, and a pull request lasts until it
// expires, so senders pull at least every PullExpiry: a dead sender's pin
// then lapses at least PinnedTTL-PullExpiry after its death, past
// AckWait.
const (
	AckWait       = 30 * time.Second
	PinnedTTL     = 40 * time.Second
	PullExpiry    = 5 * time.Second
	PriorityGroup = "resound-webhooks"
)

// EnsureStream creates the webhook stream, or updates it to opts. Every
// process runs it at start-up; running it again is harmless.
//
//   - Work-queue retention drops a record once its lane's worker acks it.
//   - DiscardNew: a full stream refuses new records (the gateway counts
//     them dropped) rather than losing old ones a receiver is owed.
//   - Nats-Msg-Id deduplicates a record a gateway publishes twice.
func EnsureStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	return ensure.Stream(ctx, js, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Resound webhook records, waiting for their receivers",
		Subjects:    []string{wire.HooksPrefix + "*.*"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    opts.MaxBytes,
		MaxAge:      max(opts.RetryFor*4, time.Hour),
		Replicas:    opts.Replicas,
		Duplicates:  2 * time.Minute,
	})
}

// EnsureConsumers makes one durable consumer per lane, pinned to one
// worker at a time, as the job partitions are.
func EnsureConsumers(ctx context.Context, js jetstream.JetStream, lanes int) ([]jetstream.Consumer, error) {
	out := make([]jetstream.Consumer, lanes)
	for k := range out {
		c, err := ensure.Consumer(ctx, js, StreamName, jetstream.ConsumerConfig{
			Durable:        ConsumerName(k),
			Description:    fmt.Sprintf("Resound webhook senders, lane %d", k),
			FilterSubject:  LaneFilter(k),
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        AckWait,
			MaxAckPending:  10000,
			DeliverPolicy:  jetstream.DeliverAllPolicy,
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{PriorityGroup},
			PinnedTTL:      PinnedTTL,
		})
		if err != nil {
			return nil, fmt.Errorf("webhook: consumer %s: %w", ConsumerName(k), err)
		}
		out[k] = c
	}
	return out, nil
}
