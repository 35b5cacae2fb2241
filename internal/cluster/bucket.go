package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultMarkerTTL is how long a removed key's marker lasts by default:
// long enough that anyone watching the bucket live (an operator's `nats kv
// watch`) sees the removal, short enough that churn leaves a bounded tail,
// at most (removals per second × TTL) markers, each a header and no body.
const DefaultMarkerTTL = time.Minute

// Bucket is a key-value bucket of shared state whose keys come and go
// (presence channels, signed-in users, counts) and that has no TTL of its
// own to age out what they leave behind.
//
// Removing a key from a JetStream bucket writes a marker as the key's last
// message: the next create of the key checks its revision against it, and
// watchers learn of the removal from it. Plain Delete markers stay forever,
// so a bucket under churn would grow without bound with keys that are
// gone. A Bucket removes keys with Purge markers that carry a per-message
// TTL (Nats-TTL, NATS 2.11+): the server drops the marker when it expires,
// by its sequence, so a value written to the key meanwhile is never
// touched, and a create racing the drop is still a compare-and-set (see
// Mutate).
//
// Chosen over a periodic PurgeDeletes sweep: that lists the markers, then
// purges whole the subject of each one older than a threshold, so a key
// re-created between the listing and the purge loses its new value (a
// member or a slot vanishes without a trace); it also costs a request per
// marker, where the server drops expired ones for nothing.
//
// Delete and Purge both remove the key this way: with one revision of
// history a delete and a purge leave the same state, and only a purge
// marker may carry a TTL.
type Bucket struct {
	jetstream.KeyValue
	markerTTL time.Duration
}

// MarkerTTL is how long the marker of a removed key lasts.
func (b *Bucket) MarkerTTL() time.Duration { return b.markerTTL }

// Purge removes key, leaving a marker that expires after MarkerTTL. A
// PurgeTTL among opts overrides it.
func (b *Bucket) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return b.KeyValue.Purge(ctx, key, append([]jetstream.KVDeleteOpt{jetstream.PurgeTTL(b.markerTTL)}, opts...)...)
}

// Delete removes key as Purge does.
func (b *Bucket) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return b.Purge(ctx, key, opts...)
}

// maxSweepErrors bounds the errors a sweep reports one by one; past it
// they are counted, so that a sweep over a NATS that is away does not
// build an error the size of the bucket.
const maxSweepErrors = 8

// Sweep calls f on every key of the bucket, for the clean-ups after
// gateways that are gone. Every store's sweep follows its rule for errors:
// a key that fails does not stop the sweep (the other keys are as due for
// their clean-up as before, and the next sweep retries the one that
// failed); only the end of ctx does. Sweep returns what failed, joined:
// the first few errors with their keys, and how many more there were.
//
// The keys are listed first and the watcher closed before f runs, so that
// a slow sweep holds no consumer open on the server.
//
// On the way, Sweep turns every permanent Delete marker it finds into an
// expiring one. Those are left by releases before Bucket (in buckets made
// then and updated in place by Ensure) and by gateways of such a release
// still running during a rolling upgrade. The Purge is conditional on the
// marker's revision, so a key re-created since is left alone.
func (b *Bucket) Sweep(ctx context.Context, f func(ctx context.Context, key string) error) error {
	keys, legacy, err := b.scan(ctx)
	if err != nil {
		return err
	}
	var errs []error
	failed := 0
	fail := func(key string, err error) {
		failed++
		if len(errs) < maxSweepErrors {
			errs = append(errs, fmt.Errorf("key %s: %w", key, err))
		}
	}
	for _, m := range legacy {
		if ctx.Err() != nil {
			break
		}
		if err := b.Purge(ctx, m.key, jetstream.LastRevision(m.rev)); err != nil && !isConflict(err) {
			fail(m.key, err)
		}
	}
	for _, k := range keys {
		if ctx.Err() != nil {
			break
		}
		if err := f(ctx, k); err != nil {
			fail(k, err)
		}
	}
	if failed > len(errs) {
		errs = append(errs, fmt.Errorf("and %d more keys", failed-len(errs)))
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, fmt.Errorf("sweep cut short: %w", err))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("cluster: sweeping %s: %w", b.Bucket(), errors.Join(errs...))
}

type marker struct {
	key string
	rev uint64
}

// scan lists the bucket's keys, and its Delete markers apart.
func (b *Bucket) scan(ctx context.Context) (keys []string, legacy []marker, err error) {
	w, err := b.WatchAll(ctx, jetstream.MetaOnly())
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: listing %s: %w", b.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("cluster: listing %s: %w", b.Bucket(), ctx.Err())
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, nil, fmt.Errorf("cluster: listing %s: the watcher closed", b.Bucket())
			case e == nil: // the initial values are all in
				return keys, legacy, nil
			case e.Operation() == jetstream.KeyValuePut:
				keys = append(keys, e.Key())
			case e.Operation() == jetstream.KeyValueDelete:
				legacy = append(legacy, marker{e.Key(), e.Revision()})
			}
		}
	}
}
