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
	"strings"

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
	c, err := s.ChangeSubscriptions(ctx, app, channel, gatewayID, n)
	return c.After, err
}

// Change is what a write did to a channel's subscriptions across the
// cluster.
type Change struct {
	// Before and After are the channel's total before and after the
	// write. The compare-and-set makes them exact: of all the gateways
	// writing the key, exactly one takes a channel from 0 to more
	// (channel_occupied) and exactly one from more to 0 (channel_vacated).
	Before, After int
	// Rev orders the write among the key's changes, a removal included
	// (cluster.Revs.Order): the revision webhook records carry.
	Rev uint64
}

// Occupied reports whether the write took the channel from no
// subscriber anywhere to some.
func (c Change) Occupied() bool { return c.Before == 0 && c.After > 0 }

// Vacated reports whether the write took the channel's last subscriber
// away.
func (c Change) Vacated() bool { return c.Before > 0 && c.After == 0 }

// ChangeSubscriptions is SetSubscriptions, reporting the channel's total
// before and after the write, and the write's place among the key's
// changes.
func (s *Store) ChangeSubscriptions(ctx context.Context, app, channel, gatewayID string, n int) (Change, error) {
	var ch Change
	revs, err := cluster.MutateRevs(ctx, s.kv, subsKey(app, channel), func(old []byte) ([]byte, error) {
		c := decode(old)
		ch.Before = c.total()
		if n <= 0 {
			if _, ok := c[gatewayID]; !ok {
				ch.After = ch.Before
				return old, nil
			}
			delete(c, gatewayID)
		} else {
			if c[gatewayID] == n && len(old) > 0 {
				ch.After = ch.Before
				return old, nil // unchanged: write nothing
			}
			c[gatewayID] = n
		}
		ch.After = c.total()
		return c.encode(), nil
	})
	if err != nil {
		return Change{}, err
	}
	ch.Rev = revs.Order()
	return ch, nil
}

func subsKey(app, channel string) string { return cluster.Key("subs", app, channel) }

// Vacated is a channel a sweep emptied: its last subscribers were on
// gateways that are gone.
type Vacated struct {
	App, Channel string
	// Rev orders the sweep's write among the key's changes.
	Rev uint64
}

// RemoveGatewaysExcept forgets the counts of every gateway that is not
// live, giving back the slots they held, and returns the channels whose
// last subscribers it removed, for the caller to record channel_vacated:
// of several gateways sweeping at once, only the one whose write empties
// a key sees it emptied. It follows cluster.Bucket.Sweep's rule for
// errors: a key that fails does not stop the others, and the channels
// returned are all those emptied, even when the error is not nil.
func (s *Store) RemoveGatewaysExcept(ctx context.Context, live map[string]bool) ([]Vacated, error) {
	var out []Vacated
	err := s.kv.Sweep(ctx, func(ctx context.Context, key string) error {
		var before, after int
		revs, err := cluster.MutateRevs(ctx, s.kv, key, func(old []byte) ([]byte, error) {
			c := decode(old)
			before = c.total()
			after = before
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
			after = c.total()
			return c.encode(), nil
		})
		if err != nil {
			return err
		}
		if before > 0 && after == 0 {
			if app, channel, ok := parseSubsKey(key); ok {
				out = append(out, Vacated{App: app, Channel: channel, Rev: revs.Order()})
			}
		}
		return nil
	})
	return out, err
}

// parseSubsKey reverses subsKey; ok is false for any other key (the
// connection slots').
func parseSubsKey(key string) (app, channel string, ok bool) {
	kind, rest, ok1 := strings.Cut(key, ".")
	appTok, chTok, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || kind != "subs" {
		return "", "", false
	}
	app, err1 := cluster.ParseToken(appTok)
	channel, err2 := cluster.ParseToken(chTok)
	if err1 != nil || err2 != nil {
		return "", "", false
	}
	return app, channel, true
}
