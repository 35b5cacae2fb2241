// Package producer lets Go programs broadcast through Resound without the
// HTTP hop: it validates events with the same rules as the Pusher HTTP API
// and stores them as jobs in the JetStream queue, returning once JetStream
// has acknowledged them. Workers then deliver them exactly as they deliver
// events triggered over HTTP.
//
// The stream must exist: Resound's gateways and workers create it at
// start-up. The message format is documented in docs/jobs.md, for
// producers in other languages. Give the JetStream context an async publish
// timeout (jetstream.WithPublishAsyncTimeout): a trigger on several
// channels waits for its acks asynchronously.
package producer

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/protocol"
)

// Event is one event to broadcast.
type Event struct {
	// Channels receive the event; at most 100.
	Channels []string
	// Name is the event name clients bind to, e.g. "App\\Events\\OrderShipped"
	// or a broadcastAs() name. It may not start with "pusher".
	Name string
	// Data is delivered to clients as is; usually JSON.
	Data string
	// ExceptSocketID, when set, is the connection that must not receive the
	// event (Laravel's toOthers()).
	ExceptSocketID string
}

// Producer enqueues events. It is safe for concurrent use.
type Producer struct {
	pub    *queue.Publisher
	limits protocol.Limits
}

// New returns a producer publishing through js, with Pusher's limits.
func New(js jetstream.JetStream) *Producer {
	return &Producer{pub: queue.NewPublisher(js), limits: protocol.DefaultLimits}
}

// WithLimits returns a producer that enforces lim instead of Pusher's
// defaults; they should match the workers' RESOUND_MAX_EVENT_SIZE.
func (p *Producer) WithLimits(lim protocol.Limits) *Producer {
	return &Producer{pub: p.pub, limits: lim}
}

// Trigger enqueues one event for the app and returns the job's stream
// sequence. An error means the event was not stored and will not be
// delivered; a *protocol.RequestError means it was invalid.
func (p *Producer) Trigger(ctx context.Context, appID string, ev Event) (uint64, error) {
	return p.TriggerBatch(ctx, appID, []Event{ev})
}

// TriggerJSON is Trigger with data marshalled from v.
func (p *Producer) TriggerJSON(ctx context.Context, appID string, channels []string, name string, v any) (uint64, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	return p.Trigger(ctx, appID, Event{Channels: channels, Name: name, Data: string(data)})
}

// TriggerBatch enqueues up to 10 events, one job per channel, and returns
// once JetStream has acknowledged every job. Events on one channel are
// delivered in order. On an error some channels' jobs may still have been
// stored (and will be delivered); retrying repeats the events there.
func (p *Producer) TriggerBatch(ctx context.Context, appID string, events []Event) (uint64, error) {
	job := &queue.Job{AppID: appID, Events: make([]protocol.Trigger, len(events))}
	for i, ev := range events {
		job.Events[i] = protocol.Trigger{Name: ev.Name, Data: ev.Data, Channels: ev.Channels, SocketID: ev.ExceptSocketID}
	}
	if err := job.Validate(p.limits); err != nil {
		return 0, err
	}
	return p.pub.Publish(ctx, job)
}
