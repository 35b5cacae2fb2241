// Package streams makes the JetStream objects every Resound process needs
// (the job stream, the shared-state buckets, the history and, for
// workers, the partitions' consumers), sized from the settings. Gateways
// and workers both run it at start-up; making an object that exists is a
// quick repeat, so either may start first.
//
// It sits apart from internal/node so that the worker process links only what
// it uses: internal/node puts a gateway together, with the embedded NATS
// server, the gateway and the HTTP API.
package streams

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/webhook"
)

// Objects are the handles a process keeps from the set-up.
type Objects struct {
	Stores  *cluster.Stores
	History *history.History
}

// Ensure makes every object, or brings it up to the settings, waiting for
// a NATS cluster that does not serve JetStream yet (see ensure.Setup).
// withConsumers also makes the partitions' consumers: a worker that says
// it started then has them (its pool ensures them again as it runs).
func Ensure(ctx context.Context, log zerolog.Logger, js jetstream.JetStream, s *config.Settings, withConsumers bool) (Objects, error) {
	var o Objects
	err := ensure.Setup(ctx, log, "JetStream set-up", func(ctx context.Context) (err error) {
		if _, err = queue.EnsureStream(ctx, js, Queue(s)); err != nil {
			return err
		}
		if o.Stores, err = cluster.Ensure(ctx, js, Cluster(s)); err != nil {
			return err
		}
		if _, err = webhook.EnsureStream(ctx, js, Webhooks(s)); err != nil {
			return err
		}
		if withConsumers {
			if _, err = queue.EnsureConsumers(ctx, js, s.Partitions); err != nil {
				return err
			}
			if _, err = webhook.EnsureConsumers(ctx, js, s.Partitions); err != nil {
				return err
			}
		}
		// Gateways read the history and workers write it; both make it,
		// so that nothing delivered before the other started goes unkept.
		o.History, err = history.Ensure(ctx, js, History(s))
		return err
	})
	return o, err
}

// Queue sizes the job stream.
func Queue(s *config.Settings) queue.StreamOptions {
	return queue.StreamOptions{MaxBytes: s.QueueMaxBytes, MaxAge: s.QueueMaxAge.Duration(), Replicas: s.Replicas, Partitions: s.Partitions}
}

// Cluster sizes the shared-state buckets.
func Cluster(s *config.Settings) cluster.Options {
	return cluster.Options{CacheTTL: s.CacheTTL.Duration(), GatewayTTL: s.GatewayTTL.Duration(), Replicas: s.Replicas}
}

// History sizes the history's window.
func History(s *config.Settings) history.Options {
	return history.Options{MaxAge: s.HistoryTTL.Duration(), MaxBytes: s.HistoryMaxBytes, Replicas: s.Replicas}
}

// Webhooks sizes the webhook stream; its lanes are the job stream's
// partitions, so one setting says how work is shared out.
func Webhooks(s *config.Settings) webhook.StreamOptions {
	return webhook.StreamOptions{MaxBytes: s.WebhookMaxBytes, RetryFor: s.WebhookRetryFor.Duration(), Replicas: s.Replicas, Lanes: s.Partitions}
}
