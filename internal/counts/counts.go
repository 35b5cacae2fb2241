// Package counts keeps the counts every gateway must see the same way, in
// the RESOUND_COUNTS bucket: each app's connection slots, against its
// max_connections across the cluster (key cluster.Key("conns", app); each
// gateway's entry is a lease, see LeaseSlots), and
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

// Lease is what LeaseSlots did.
type Lease struct {
	// Granted is how many of the waiting connects got a slot.
	Granted int
	// Leased is the gateway's entry now: the slots it holds open plus
	// the ones it may hand out without writing (its headroom).
	Leased int
	// Attempts is how many compare-and-sets it took (each after a read of
	// the key): 1, plus one for each lost to another gateway's write.
	// Wrote says whether the last one wrote the key; false when the
	// entry was already what it had to be.
	Attempts int
	Wrote    bool
}

// Headroom is the slots a gateway holding held connections, with waiting
// more waiting for a slot, leases beyond them, so that its next connects
// take a slot without writing the app's key, which every gateway's
// connects contend for:
//   - a quarter of what it holds, so that a growing gateway writes about
//     once per 25% of growth (about 30 writes to reach 19,000
//     connections, rather than one per batch of connects). An eighth
//     took twice the writes in the 20-gateway run (docs/scaling.md);
//     and the headroom costs nothing far from the cap, while near it
//     LeaseSlots shrinks it anyway;
//   - twice the connects waiting, so that in a connect storm, whose
//     connects arrive a batch per write, the next batches find their
//     slots leased;
//   - at least 32, so that a small gateway does not write every few
//     connects;
//   - at most 1,024, so that the slots one gateway can keep from the
//     others stay bounded.
func Headroom(held, waiting int) int { return min(max(held/4, 2*waiting, 32), 1024) }

// LeaseSlots sets a gateway's lease on an app's connection slots, in one
// compare-and-set of the app's key: held, the slots of its connections
// still open, plus up to waiting for the connects waiting for one, plus up
// to headroom more, all within limit across the cluster (0: no cap). The
// waiting connects are served first; the headroom is what is left of the
// room, and at most half of it shared among the gateways in the key, so
// that as the app nears its cap the leases shrink to the connections held
// and the count is exact again. The sum of the entries never passes limit
// but for held itself: a gateway's open connections are always counted,
// even when the cap was lowered or a sweep's slots came back (Reassert).
//
// The value written is absolute, so a write whose answer was lost (a
// timeout, a reconnect) is set right by the next one instead of counted
// twice; an entry that is already right is not written.
//
// Pusher's own limit is approximate; this one is exact at one gateway and,
// with several, may refuse a connect while another gateway holds unused
// leased slots: at most that gateway's headroom, or twice it once its
// connections close (the gateway gives surplus back past that, see
// internal/gateway/slots.go).
func (s *Store) LeaseSlots(ctx context.Context, app, gatewayID string, held, waiting, headroom, limit int) (Lease, error) {
	var l Lease
	err := cluster.Mutate(ctx, s.kv, slotsKey(app), func(old []byte) ([]byte, error) {
		l.Attempts++
		l.Wrote = false
		c := decode(old)
		delete(c, gatewayID)
		lease := held + waiting + headroom
		if limit > 0 {
			room := limit - c.total() // for this gateway
			free := max(room-held-waiting, 0)
			h := min(headroom, free/(2*(len(c)+1)))
			lease = max(min(held+waiting+h, room), held)
		}
		l.Granted, l.Leased = min(waiting, lease-held), lease
		if lease > 0 {
			c[gatewayID] = lease
		}
		next := c.encode()
		if bytes.Equal(next, old) {
			return old, nil // unchanged: write nothing
		}
		l.Wrote = true
		return next, nil
	})
	if err != nil {
		return Lease{Attempts: l.Attempts}, err
	}
	return l, nil
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
func (s *Store) RemoveGatewaysExcept(ctx context.Context, live cluster.Liveness) ([]Vacated, error) {
	var out []Vacated
	err := s.kv.Sweep(ctx, func(ctx context.Context, key string) error {
		var before, after int
		revs, err := cluster.MutateRevs(ctx, s.kv, key, func(old []byte) ([]byte, error) {
			c := decode(old)
			before = c.total()
			after = before
			changed := false
			for gw := range c {
				if !live.Live(gw) {
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
