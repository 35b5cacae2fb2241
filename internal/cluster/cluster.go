// Package cluster holds the state every gateway must see the same way:
// presence members, signed-in users, connection counts and cached events,
// each in a NATS JetStream key-value bucket, plus the registry of live
// gateways that lets the survivors clean up after one that died.
//
// Every change is a compare-and-set on one key, so concurrent gateways
// never lose each other's updates, and whoever makes a transition (a
// user's first connection, a user's last) is the one gateway that
// announces it.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/route"
)

// Bucket names.
const (
	BucketGateways = "RESOUND_GATEWAYS"
	BucketWorkers  = "RESOUND_WORKERS"
	BucketPresence = "RESOUND_PRESENCE"
	BucketUsers    = "RESOUND_USERS"
	BucketCounts   = "RESOUND_COUNTS"
	BucketCache    = "RESOUND_CACHE"
)

// Options size the buckets.
type Options struct {
	// CacheTTL is how long a cache channel keeps its last event.
	CacheTTL time.Duration
	// GatewayTTL is how long a gateway that stopped heartbeating is still
	// considered alive.
	GatewayTTL time.Duration
	// MarkerTTL is how long the marker a removed key leaves in the
	// presence, users and counts buckets lasts (DefaultMarkerTTL when 0;
	// at least a second, the server's unit).
	MarkerTTL time.Duration
	Replicas  int
}

// Stores are the buckets.
type Stores struct {
	Gateways jetstream.KeyValue
	Workers  jetstream.KeyValue
	Presence *Bucket
	Users    *Bucket
	Counts   *Bucket
	Cache    jetstream.KeyValue
	opts     Options
	// js reads the heartbeat buckets' streams (liveIn).
	js jetstream.JetStream
}

// DefaultGatewayTTL bounds how long a dead gateway's members linger: it
// stops heartbeating, its key expires within this, and the next sweep of
// any live gateway removes what it held.
const DefaultGatewayTTL = 15 * time.Second

// Ensure creates the buckets, or brings them up to opts. Every gateway runs
// it at start-up; running it again is harmless.
func Ensure(ctx context.Context, js jetstream.JetStream, opts Options) (*Stores, error) {
	if opts.GatewayTTL <= 0 {
		opts.GatewayTTL = DefaultGatewayTTL
	}
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = 30 * time.Minute
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.MarkerTTL <= 0 {
		opts.MarkerTTL = DefaultMarkerTTL
	}
	// Nats-TTL is whole seconds; the server refuses less than one.
	opts.MarkerTTL = max(opts.MarkerTTL.Truncate(time.Second), time.Second)
	s := &Stores{opts: opts, js: js}
	var presenceKV, usersKV, countsKV jetstream.KeyValue
	// The buckets whose keys come and go with no TTL of their own let
	// their removal markers expire (see Bucket). Setting LimitMarkerTTL is
	// what turns on per-message TTLs (AllowMsgTTL); its own meaning, the
	// TTL of markers the server leaves when MaxAge removes a key, does not
	// arise in buckets without MaxAge. An existing bucket made by an
	// earlier release is updated in place, its data kept: the server lets
	// a stream turn AllowMsgTTL on, though never off again, so an earlier
	// release can no longer start against it (its Ensure fails with
	// "message TTL status can not be disabled"): rolling back means
	// removing these three buckets, which the gateways fill again as
	// clients reconnect. On that first update the server scans the stream
	// once to build its TTL index (it logs "TTL state is outdated"). The
	// Delete markers the earlier release left are made to expire by the
	// sweeps (Bucket.Sweep).
	markers := opts.MarkerTTL
	var err error
	for _, b := range []struct {
		kv  *jetstream.KeyValue
		cfg jetstream.KeyValueConfig
	}{
		// Heartbeats need no disk: after a NATS restart every live gateway
		// writes its key again within one heartbeat.
		{&s.Gateways, jetstream.KeyValueConfig{Bucket: BucketGateways, Description: "live Resound gateways", TTL: opts.GatewayTTL, Storage: jetstream.MemoryStorage}},
		{&s.Workers, jetstream.KeyValueConfig{Bucket: BucketWorkers, Description: "live Resound worker processes", TTL: min(opts.GatewayTTL, WorkerTTL), Storage: jetstream.MemoryStorage}},
		{&presenceKV, jetstream.KeyValueConfig{Bucket: BucketPresence, Description: "presence channel members", Storage: jetstream.FileStorage, LimitMarkerTTL: markers}},
		{&usersKV, jetstream.KeyValueConfig{Bucket: BucketUsers, Description: "signed-in users", Storage: jetstream.FileStorage, LimitMarkerTTL: markers}},
		{&countsKV, jetstream.KeyValueConfig{Bucket: BucketCounts, Description: "connection and subscription counts", Storage: jetstream.FileStorage, LimitMarkerTTL: markers}},
		{&s.Cache, jetstream.KeyValueConfig{Bucket: BucketCache, Description: "last event of cache channels", TTL: opts.CacheTTL, Storage: jetstream.FileStorage}},
	} {
		b.cfg.History = 1
		b.cfg.Replicas = opts.Replicas
		// Any number of processes do this at once, on a NATS cluster
		// that may still be settling: see package ensure.
		*b.kv, err = ensure.KeyValue(ctx, js, b.cfg)
		if err != nil {
			return nil, fmt.Errorf("cluster: bucket %s: %w", b.cfg.Bucket, err)
		}
	}
	s.Presence = &Bucket{KeyValue: presenceKV, markerTTL: markers}
	s.Users = &Bucket{KeyValue: usersKV, markerTTL: markers}
	s.Counts = &Bucket{KeyValue: countsKV, markerTTL: markers}
	return s, nil
}

// CachedEvent is what the cache bucket holds for a cache channel: the last
// event triggered on it, under cluster.Key(app, channel).
type CachedEvent struct {
	Event string `json:"event"`
	Data  string `json:"data"`
}

// CacheTTL is the cache bucket's time to live.
func (s *Stores) CacheTTL() time.Duration { return s.opts.CacheTTL }

// Key joins parts into a key-value key, each part escaped with Token.
func Key(parts ...string) string {
	toks := make([]string, len(parts))
	for i, p := range parts {
		toks[i] = Token(p)
	}
	return strings.Join(toks, ".")
}

// Token escapes s for use as one part of a key. Keys allow only
// [-/_=.a-zA-Z0-9]; '.' separates parts and '=' escapes. Any other byte
// becomes =XX (hex), so the mapping is reversible and distinct names never
// collide.
func Token(s string) string { return route.Escape(s, kvSafe, '=') }

// ParseToken reverses Token.
func ParseToken(t string) (string, error) { return route.Unescape(t, '=') }

func kvSafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// maxCASAttempts bounds the retries of one compare-and-set under
// contention; reaching it means something is badly wrong.
const maxCASAttempts = 64

// ErrContention is returned when a key changed under us too many times.
var ErrContention = errors.New("cluster: too much contention on a key")

// Mutate applies f to the current value of key (nil when absent) and
// stores the result with a compare-and-set, retrying when another gateway
// changed the key in between. f returns the new value, or nil to delete the
// key; returning the old value unchanged (same slice) writes nothing. f
// may run several times and must be pure.
//
// Removing a key leaves a marker as the key's last message; on a Bucket the
// marker expires. Either way a later create is still a compare-and-set:
// against the marker while it lasts, against an empty key once it is
// gone, and a create that read the marker just before it expired loses its
// revision check and is retried like any other conflict.
func Mutate(ctx context.Context, kv jetstream.KeyValue, key string, f func(old []byte) ([]byte, error)) error {
	_, err := MutateRev(ctx, kv, key, f)
	return err
}

// MutateRev is Mutate, also returning the key's revision after the change:
// the revision written, the one read when nothing changed, or 0 when the
// key was deleted or never existed.
func MutateRev(ctx context.Context, kv jetstream.KeyValue, key string, f func(old []byte) ([]byte, error)) (uint64, error) {
	r, err := MutateRevs(ctx, kv, key, f)
	return r.Written, err
}

// Revs is what a compare-and-set did to a key's revision.
type Revs struct {
	// Read is the revision the change was made from; 0 when the key was
	// absent.
	Read uint64
	// Written is the key's revision after the change, as MutateRev
	// returns it: the revision written, Read when nothing changed, 0 when
	// the key was removed or never existed.
	Written uint64
}

// Order places the change among all the changes of its key, removals
// included, which Written cannot (it is 0 for every removal): the
// revision written, or Read+1 for a removal. A removal's marker is
// stored after Read, so its own revision is at least Read+1, and any
// later write to the key gets a higher one still. Webhook records carry
// it, so that a receiver's batch of one channel's transitions, recorded
// by several gateways, can be put back in the order the key saw them.
// 0 when the key neither existed nor was written.
func (r Revs) Order() uint64 {
	switch {
	case r.Written != 0:
		return r.Written
	case r.Read != 0:
		return r.Read + 1
	}
	return 0
}

// MutateRevs is Mutate, also returning the revisions the change was made
// from and to.
func MutateRevs(ctx context.Context, kv jetstream.KeyValue, key string, f func(old []byte) ([]byte, error)) (Revs, error) {
	for attempt := 0; attempt < maxCASAttempts; attempt++ {
		var old []byte
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case err == nil:
			old, rev = e.Value(), e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return Revs{}, err
		}
		next, err := f(old)
		if err != nil {
			return Revs{}, err
		}
		if len(next) > 0 && len(old) > 0 && &next[0] == &old[0] && len(next) == len(old) {
			return Revs{Read: rev, Written: rev}, nil // unchanged
		}
		var newRev uint64
		switch {
		case next == nil && old == nil:
			return Revs{Read: rev}, nil
		case next == nil:
			// A Bucket's Purge leaves a marker that expires; see Bucket.
			err = kv.Purge(ctx, key, jetstream.LastRevision(rev))
		case old == nil:
			newRev, err = kv.Create(ctx, key, next)
		default:
			newRev, err = kv.Update(ctx, key, next, rev)
		}
		if err == nil {
			return Revs{Read: rev, Written: newRev}, nil
		}
		if !isConflict(err) {
			return Revs{}, err
		}
		if err := casBackoff(ctx, attempt); err != nil {
			return Revs{}, err
		}
	}
	return Revs{}, ErrContention
}

// casBackoff waits before retrying a lost compare-and-set. Writers that
// keep retrying at once keep colliding (sixteen connects at once on one
// app's connection count lost 64 times in a row without it), so after
// the first retry each waits a random time up to a bound that doubles,
// and the collisions thin out ("full jitter").
func casBackoff(ctx context.Context, attempt int) error {
	if attempt == 0 {
		return nil
	}
	limit := min(time.Duration(100<<min(attempt, 10))*time.Microsecond, 20*time.Millisecond)
	t := time.NewTimer(rand.N(limit) + 1)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isConflict reports whether a write lost a compare-and-set: the key
// changed (or appeared, or its marker expired) since it was read. Create
// over a removal marker makes its second attempt, the update against the
// marker's revision, without mapping the server's error to
// ErrKeyRevisionMismatch or ErrKeyExists, and a replicated stream answers
// with 10164 rather than 10071; both codes mean the same conflict.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
