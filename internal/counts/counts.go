// Package counts keeps the counts every gateway must see the same way, in
// the RESOUND_COUNTS bucket: each app's connection slots, against its
// max_connections across the cluster (key cluster.Key("conns", app)), and
// each channel's subscriptions, for subscription_count events (key
// cluster.Key("subs", app, channel)). Each key holds one count per
// gateway, so that a gateway that dies can be subtracted by the others,
// and every change is a compare-and-set on it.
//
// A package of its own, as presence is, rather than part of cluster:
// cluster is the mechanism and knows nothing of what the values mean.
package counts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"

	"github.com/resoundhq/resound/internal/cluster"
)

// ErrOverQuota is returned when an app is at its connection cap.
var ErrOverQuota = errors.New("counts: the app is over its connection quota")

// Store is the shared counts of every app.
type Store struct {
	kv *cluster.Bucket
}

// New returns a store on the counts bucket.
func New(kv *cluster.Bucket) *Store { return &Store{kv: kv} }

// perGateway is one count per gateway id.
type perGateway map[string]int

// decode reads the counts. A value that does not parse reads as no
// counts, so the next change rewrites it rather than the key failing
// every change for good.
func decode(b []byte) perGateway {
	c := perGateway{}
	if len(b) > 0 {
		_ = json.Unmarshal(b, &c)
	}
	return c
}

func (c perGateway) encode() []byte {
	if len(c) == 0 {
		return nil // delete the key
	}
	b, _ := json.Marshal(c)
	return b
}

func (c perGateway) total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

func slotsKey(app string) string { return cluster.Key("conns", app) }

// AcquireSlot counts a new connection of an app on a gateway against limit,
// the app's connections across the cluster (0: no cap, counted all the
// same). At the cap it returns ErrOverQuota and counts nothing.
func (s *Store) AcquireSlot(ctx context.Context, app, gatewayID string, limit int) error {
	return cluster.Mutate(ctx, s.kv, slotsKey(app), func(old []byte) ([]byte, error) {
		c := decode(old)
		if limit > 0 && c.total() >= limit {
			return nil, ErrOverQuota
		}
		c[gatewayID]++
		return c.encode(), nil
	})
}

// ReleaseSlot gives back a slot AcquireSlot took. Releasing when the
// gateway holds none changes nothing.
func (s *Store) ReleaseSlot(ctx context.Context, app, gatewayID string) error {
	return cluster.Mutate(ctx, s.kv, slotsKey(app), func(old []byte) ([]byte, error) {
		c := decode(old)
		n, ok := c[gatewayID]
		if !ok {
			return old, nil
		}
		if n <= 1 {
			delete(c, gatewayID)
		} else {
			c[gatewayID] = n - 1
		}
		return c.encode(), nil
	})
}

// ClaimSlots sets a gateway's connection slots to held, the slots of its
// connections still open, then takes up to want more within limit across
// the cluster (0: no cap), in one compare-and-set, and returns how many it
// took. A gateway batches its connects and closes through it, so that a
// storm of them costs one write per batch rather than one per connection,
// all contending for the app's one key. The value written is absolute, so
// a write whose answer was lost (a timeout, a reconnect) is set right by
// the next one instead of counted twice.
func (s *Store) ClaimSlots(ctx context.Context, app, gatewayID string, held, want, limit int) (taken int, err error) {
	err = cluster.Mutate(ctx, s.kv, slotsKey(app), func(old []byte) ([]byte, error) {
		c := decode(old)
		c[gatewayID] = held
		taken = want
		if limit > 0 {
			taken = max(min(want, limit-c.total()), 0)
		}
		c[gatewayID] += taken
		if c[gatewayID] == 0 {
			delete(c, gatewayID)
		}
		if len(old) > 0 && bytes.Equal(c.encode(), old) {
			return old, nil // unchanged: write nothing
		}
		return c.encode(), nil
	})
	if err != nil {
		taken = 0
	}
	return taken, err
}

// SetSubscriptions sets a gateway's count of subscriptions to a channel
// (0 forgets the gateway) and returns the channel's total across the
// cluster.
func (s *Store) SetSubscriptions(ctx context.Context, app, channel, gatewayID string, n int) (total int, err error) {
	err = cluster.Mutate(ctx, s.kv, cluster.Key("subs", app, channel), func(old []byte) ([]byte, error) {
		c := decode(old)
		if n <= 0 {
			if _, ok := c[gatewayID]; !ok {
				total = c.total()
				return old, nil
			}
			delete(c, gatewayID)
		} else {
			c[gatewayID] = n
		}
		total = c.total()
		return c.encode(), nil
	})
	if err != nil {
		total = 0
	}
	return total, err
}

// RemoveGatewaysExcept forgets the counts of every gateway that is not
// live, giving back the slots they held. It follows cluster.Bucket.Sweep's
// rule for errors: a key that fails does not stop the others.
func (s *Store) RemoveGatewaysExcept(ctx context.Context, live map[string]bool) error {
	return s.kv.Sweep(ctx, func(ctx context.Context, key string) error {
		return cluster.Mutate(ctx, s.kv, key, func(old []byte) ([]byte, error) {
			c := decode(old)
			changed := false
			for gw := range c {
				if !live[gw] {
					delete(c, gw)
					changed = true
				}
			}
			if !changed {
				return old, nil
			}
			return c.encode(), nil
		})
	})
}
