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
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/pkg/route"
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
	Replicas   int
}

// Stores are the buckets.
type Stores struct {
	Gateways jetstream.KeyValue
	Workers  jetstream.KeyValue
	Presence jetstream.KeyValue
	Users    jetstream.KeyValue
	Counts   jetstream.KeyValue
	Cache    jetstream.KeyValue
	opts     Options
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
	s := &Stores{opts: opts}
	var err error
	for _, b := range []struct {
		kv  *jetstream.KeyValue
		cfg jetstream.KeyValueConfig
	}{
		// Heartbeats need no disk: after a NATS restart every live gateway
		// writes its key again within one heartbeat.
		{&s.Gateways, jetstream.KeyValueConfig{Bucket: BucketGateways, Description: "live Resound gateways", TTL: opts.GatewayTTL, Storage: jetstream.MemoryStorage}},
		{&s.Workers, jetstream.KeyValueConfig{Bucket: BucketWorkers, Description: "live Resound worker processes", TTL: min(opts.GatewayTTL, WorkerTTL), Storage: jetstream.MemoryStorage}},
		{&s.Presence, jetstream.KeyValueConfig{Bucket: BucketPresence, Description: "presence channel members", Storage: jetstream.FileStorage}},
		{&s.Users, jetstream.KeyValueConfig{Bucket: BucketUsers, Description: "signed-in users", Storage: jetstream.FileStorage}},
		{&s.Counts, jetstream.KeyValueConfig{Bucket: BucketCounts, Description: "connection and subscription counts", Storage: jetstream.FileStorage}},
		{&s.Cache, jetstream.KeyValueConfig{Bucket: BucketCache, Description: "last event of cache channels", TTL: opts.CacheTTL, Storage: jetstream.FileStorage}},
	} {
		b.cfg.History = 1
		b.cfg.Replicas = opts.Replicas
		*b.kv, err = js.CreateOrUpdateKeyValue(ctx, b.cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// CreateOrUpdate is update, then create if there was nothing
			// to update: another process created the bucket in between,
			// with other settings. Now there is something to update.
			*b.kv, err = js.CreateOrUpdateKeyValue(ctx, b.cfg)
		}
		if err != nil {
			return nil, fmt.Errorf("cluster: bucket %s: %w", b.cfg.Bucket, err)
		}
	}
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
func Mutate(ctx context.Context, kv jetstream.KeyValue, key string, f func(old []byte) ([]byte, error)) error {
	_, err := MutateRev(ctx, kv, key, f)
	return err
}

// MutateRev is Mutate, also returning the key's revision after the change:
// the revision written, the one read when nothing changed, or 0 when the
// key was deleted or never existed.
func MutateRev(ctx context.Context, kv jetstream.KeyValue, key string, f func(old []byte) ([]byte, error)) (uint64, error) {
	for attempt := 0; attempt < maxCASAttempts; attempt++ {
		var old []byte
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case err == nil:
			old, rev = e.Value(), e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return 0, err
		}
		next, err := f(old)
		if err != nil {
			return 0, err
		}
		if len(next) > 0 && len(old) > 0 && &next[0] == &old[0] && len(next) == len(old) {
			return rev, nil // unchanged
		}
		var newRev uint64
		switch {
		case next == nil && old == nil:
			return 0, nil
		case next == nil:
			err = kv.Delete(ctx, key, jetstream.LastRevision(rev))
		case old == nil:
			newRev, err = kv.Create(ctx, key, next)
		default:
			newRev, err = kv.Update(ctx, key, next, rev)
		}
		if err == nil {
			return newRev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, err
		}
	}
	return 0, ErrContention
}
