package cluster

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// SweepStep is one store's clean-up after the gateways that are gone:
// it removes what gateways that are not live hold, and announces what
// that changes (a member removed, a user offline).
type SweepStep struct {
	Name  string
	Sweep func(ctx context.Context, live Liveness) error
}

// Liveness tells a sweep whether a gateway is live. A sweep asks it for
// each key it changes, not once at its start.
type Liveness interface {
	Live(gateway string) bool
}

// LiveSet is a fixed set of live gateways.
type LiveSet map[string]bool

// Live reports whether gateway is in the set.
func (s LiveSet) Live(gateway string) bool { return s[gateway] }

// recheckInterval is how long a sweep trusts that a gateway is still gone
// before it asks again (SweeperOptions.Recheck).
const recheckInterval = time.Second

// rechecked is the live set a sweep began with, where a gateway not in it
// is asked about again (at most every recheckInterval) while the sweep
// goes on. A sweep of every key can take longer than a TTL when NATS is
// saturated, and a gateway whose heartbeat lapsed comes back meanwhile
// and says again what it holds, twice, a TTL apart (gateway.Reassert):
// judged by the set of the start alone, the keys the sweep reached after
// that second pass lost the gateway's members for good while their
// connections lived (the million-socket run's drain: 913 of 5,040
// presence channels short after 67 lapses).
//
// A sweep's steps run one after another on its goroutine, so a view is
// used by one goroutine only.
type rechecked struct {
	ctx     context.Context
	set     map[string]bool
	recheck func(ctx context.Context, gateway string) (bool, error)
	now     func() time.Time
	asked   map[string]askedAt
}

type askedAt struct {
	live bool
	at   time.Time
}

func (r *rechecked) Live(gateway string) bool {
	if r.set[gateway] {
		return true
	}
	if r.recheck == nil {
		return false
	}
	now := r.now()
	if a, ok := r.asked[gateway]; ok && now.Sub(a.at) < recheckInterval {
		return a.live
	}
	// An error counts as gone: the sweep would have removed it anyway.
	live, err := r.recheck(r.ctx, gateway)
	live = live && err == nil
	r.asked[gateway] = askedAt{live: live, at: now}
	return live
}

// Sweeper is the one driver of the stores' sweeps (presence, signed-in
// users, counts: the cache has a TTL and needs none), with one rule for
// errors for all of them: a step that fails is retried with backoff until
// it succeeds, ctx ends or the sweep's budget is spent; every retry is
// counted (Retried) and logged at most once per 10 s. Retries list the
// live gateways afresh (Live), so that a gateway that registered since the
// first attempt is never swept by a retry. What is left when the budget is
// spent waits for the next sweep: the registry's leader sweeps once per
// TTL, so nothing outlives a few TTLs.
//
// A step sweeps its whole bucket and goes on past a key that fails
// (Bucket.Sweep), so a retry does again only what did not happen: what
// was removed and announced is not there to be removed again.
type Sweeper struct {
	opts SweeperOptions
	log  zerolog.Logger
	now  func() time.Time // time.Now; a test's clock in export_test.go
}

// SweeperOptions configure a Sweeper.
type SweeperOptions struct {
	Steps []SweepStep
	// Live lists the live gateways, for retries.
	Live func(ctx context.Context) (map[string]bool, error)
	// Recheck, when set, tells whether one gateway is live now; a sweep
	// asks it about a gateway it found gone, again every second while it
	// goes on (see rechecked).
	Recheck func(ctx context.Context, gateway string) (bool, error)
	// Budget bounds the time spent retrying, from the start of a sweep:
	// the registry calls Sweep between heartbeats, which must not wait
	// for a NATS that is away. 0 retries until ctx ends.
	Budget time.Duration
	// Retried, when set, counts each retry.
	Retried func()
	Log     zerolog.Logger
}

// Backoff of sweeps that failed: the shared state is unreachable or
// contended, and retrying at once would only add to it.
const (
	sweepRetryFirst = 100 * time.Millisecond
	sweepRetryMax   = 5 * time.Second
	sweepLogPeriod  = 10 * time.Second
)

// NewSweeper returns a sweep driver.
func NewSweeper(opts SweeperOptions) *Sweeper {
	return &Sweeper{opts: opts, log: opts.Log.Sample(&zerolog.BurstSampler{Burst: 1, Period: sweepLogPeriod}), now: time.Now}
}

// Sweep runs every step against live, each at least once, retrying those
// that fail by the Sweeper's rule. It reports whether every step
// succeeded.
func (d *Sweeper) Sweep(ctx context.Context, live map[string]bool) bool {
	start := time.Now()
	pending := d.opts.Steps
	backoff := sweepRetryFirst
	for {
		var failed []SweepStep
		view := &rechecked{ctx: ctx, set: live, recheck: d.opts.Recheck, now: d.now, asked: map[string]askedAt{}}
		for _, st := range pending {
			if err := st.Sweep(ctx, view); err != nil {
				failed = append(failed, st)
				if ctx.Err() == nil {
					if ev := d.log.Warn(); ev != nil {
						ev.Err(err).Str("store", st.Name).Dur("backoff", backoff).Msg("sweep failed; retrying (logged at most every 10 s)")
					}
				}
			}
		}
		if len(failed) == 0 {
			return true
		}
		pending = failed
		if ctx.Err() != nil || d.opts.Budget > 0 && time.Since(start)+backoff > d.opts.Budget {
			return false
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(backoff*2, sweepRetryMax)
		if d.opts.Live != nil {
			// On an error the listing is tried again at the next retry;
			// this one keeps the set it has.
			if fresh, err := d.opts.Live(ctx); err == nil {
				live = fresh
			}
		}
		for range pending {
			if d.opts.Retried != nil {
				d.opts.Retried()
			}
		}
	}
}
