// Package ensure creates Resound's JetStream objects (streams, key-value
// buckets, consumers), or brings them up to the settings, from every
// process at start-up, however many start at once, on one NATS server or
// on a cluster whose JetStream is still settling.
//
// On a clustered NATS every such request is a proposal to the meta
// leader, answered later by the servers of the object's own Raft group,
// and nats.go's CreateOrUpdate sends each request once and waits for the
// whole context. Two things then fail that one server never shows:
//
//   - A reply can be lost for good. nats-server 2.15 answers a stream
//     update from the stream's leader, and every replica marks the update
//     answered as it applies it; an update applied while the stream has
//     no leader yet (a fresh R3 stream whose first election is still
//     going on) is answered by nobody, and the leader elected next finds
//     it answered already. The update replaces the stream's assignment,
//     so the create before it goes unanswered too. That is what several
//     gateways and workers started together on a fresh R3 cluster ran
//     into: nats.go's CreateOrUpdate is update-then-create, so the second
//     process's update lands right behind the first one's create, and
//     both waited out their 30 s start-up budget
//     ("context deadline exceeded").
//   - The cluster refuses for a while: no meta leader yet (10008), its
//     peers not yet known well enough to place three replicas (10005,
//     10023), JetStream not yet up on the server the client reached.
//
// So every call here is one idempotent attempt at a time, each with a
// bounded wait of its own, repeated with backoff while the failure is
// one that passes. Streams are created first and updated only when
// their settings differ: a create whose settings equal the stream's is
// answered by every replica, leader or not, so restarting on an existing
// cluster never depends on an election; and once an object exists, a
// repeat of a lost attempt is a create with equal settings.
package ensure

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Attempt timing. An attempt on a healthy cluster takes milliseconds; one
// whose reply was lost takes its whole timeout, so the first timeout is
// short, and grows for clusters (or machines) so slow that a reply takes
// longer. Retrying an attempt that was merely slow is harmless: it
// repeats an idempotent request.
const (
	firstAttemptTimeout = 3 * time.Second
	maxAttemptTimeout   = 10 * time.Second
	firstBackoff        = 100 * time.Millisecond
	maxBackoff          = 2 * time.Second
)

// Do runs op until it succeeds, fails for good (see Transient), or ctx
// ends. Each attempt gets a context of its own, bounded by an attempt
// timeout, so that a lost reply costs one attempt rather than all of ctx.
// When ctx ends first, the error says so and carries the last attempt's.
func Do(ctx context.Context, op func(ctx context.Context) error) error {
	timeout, backoff := firstAttemptTimeout, firstBackoff
	for {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		}
		if !Transient(err) {
			return err
		}
		// Full jitter: processes started together retry apart.
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-t.C:
		}
		timeout = min(2*timeout, maxAttemptTimeout)
		backoff = min(2*backoff, maxBackoff)
	}
}

// Transient reports whether a failed JetStream request may succeed when
// repeated: no reply in time (lost, or the meta layer busy), nobody
// answering yet (a stream with no leader yet does not acknowledge
// publishes), the connection reconnecting, or the cluster saying it
// cannot serve the request now. Whatever else the server answers (an
// invalid or forbidden configuration) stays as it is.
func Transient(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, jetstream.ErrNoStreamResponse):
		return true
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	// 503 is the server's own "temporarily unavailable": no meta leader
	// (10008), insufficient resources (10023: the meta leader does not
	// know its peers' capacity yet), JetStream not enabled (10076, 10039:
	// also what a server answers before its JetStream is up), incomplete
	// results (10004).
	if apiErr.Code == 503 {
		return true
	}
	switch apiErr.ErrorCode {
	case 10005, // no suitable peers for placement: peers not known yet
		10009, // JetStream cluster can not handle request: no leader
		10118, // stream is offline (its group has no quorum yet)
		10119: // consumer is offline
		return true
	}
	return false
}

// Stream creates the stream cfg names, or updates it to cfg. Any number
// of processes may run it at once, with the same settings or others (the
// last update wins).
func Stream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	var s jetstream.Stream
	err := Do(ctx, func(ctx context.Context) error {
		var err error
		// A create equal to the stream's settings succeeds (on a cluster,
		// answered by every replica); other settings get "name already
		// in use", and only then an update.
		s, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.UpdateStream(ctx, cfg)
		}
		return err
	})
	return s, err
}

// KeyValue creates the bucket cfg names, or updates it to cfg, as Stream
// does for streams.
func KeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := Do(ctx, func(ctx context.Context) error {
		var err error
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			kv, err = js.UpdateKeyValue(ctx, cfg)
		}
		return err
	})
	return kv, err
}

// Consumer creates the durable consumer cfg names on stream, or updates
// it to cfg.
func Consumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var c jetstream.Consumer
	err := Do(ctx, func(ctx context.Context) error {
		var err error
		c, err = js.CreateOrUpdateConsumer(ctx, stream, cfg)
		return err
	})
	return c, err
}

// DeleteConsumer removes the consumer name from stream, if it exists.
func DeleteConsumer(ctx context.Context, js jetstream.JetStream, stream, name string) error {
	return Do(ctx, func(ctx context.Context) error {
		err := js.DeleteConsumer(ctx, stream, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil
		}
		return err
	})
}

// RoundTimeout bounds one round of Setup: long enough for every object
// of a fresh cluster, short enough that a process stuck on a cluster that
// cannot serve it says so every so often.
const RoundTimeout = 30 * time.Second

// Setup runs a process's start-up set-up f, in rounds of RoundTimeout,
// until it succeeds, fails for good, or ctx ends. A round that fails
// transiently (the cluster not ready; see Transient) is logged as a
// warning and followed by another: a process started before its NATS
// cluster can serve it waits for it, saying why, rather than exiting.
func Setup(ctx context.Context, log zerolog.Logger, what string, f func(ctx context.Context) error) error {
	for round := 1; ; round++ {
		rctx, cancel := context.WithTimeout(ctx, RoundTimeout)
		err := f(rctx)
		cancel()
		if err == nil {
			if round > 1 {
				log.Info().Int("rounds", round).Msg(what + " done")
			}
			return nil
		}
		if ctx.Err() != nil || !Transient(err) {
			return err
		}
		log.Warn().Err(err).Int("round", round).Msg(what + ": NATS JetStream not ready; trying again")
	}
}
