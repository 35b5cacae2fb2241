// Package cache keeps the last event of every cache channel where every
// gateway and the HTTP API see it: one key per app and channel in the
// RESOUND_CACHE bucket (cluster.Key(app, channel)), written by the worker
// that delivers the event and read by a gateway when a client subscribes,
// and by the HTTP API's channel queries. The bucket's TTL ages the events
// out (RESOUND_CACHE_TTL); nothing is swept.
//
// A package of its own, as presence, users and counts are: cluster is the
// mechanism and knows nothing of what the values mean.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
)

// Event is a cache channel's last event.
type Event = cluster.CachedEvent

// Store is the cached events of every app.
type Store struct {
	kv  jetstream.KeyValue
	ttl time.Duration
}

// New returns a store on the cache bucket, whose TTL is ttl (for the time
// an event has left; 0 when unknown, as for a writer).
func New(kv jetstream.KeyValue, ttl time.Duration) *Store { return &Store{kv: kv, ttl: ttl} }

// Put stores an event as the channel's last. Pusher keeps it whether or
// not anyone is subscribed; Reverb loses it when the channel empties.
func (s *Store) Put(ctx context.Context, app, channel, event, data string) error {
	b, _ := json.Marshal(Event{Event: event, Data: data})
	_, err := s.kv.Put(ctx, cluster.Key(app, channel), b)
	return err
}

// Get returns the channel's last event, or nil when it has none. A value
// that does not parse reads as none: the next event overwrites it.
func (s *Store) Get(ctx context.Context, app, channel string) (*Event, error) {
	ev, _, err := s.CachedEvent(ctx, app, channel)
	return ev, err
}

// CachedEvent returns the channel's last event and how long it has left,
// or nil when it has none (httpapi.CacheReader).
func (s *Store) CachedEvent(ctx context.Context, app, channel string) (*Event, time.Duration, error) {
	e, err := s.kv.Get(ctx, cluster.Key(app, channel))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var ev Event
	if json.Unmarshal(e.Value(), &ev) != nil {
		return nil, 0, nil
	}
	return &ev, max(s.ttl-time.Since(e.Created()), 0), nil
}
