package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/counts"
)

// slotBatcher counts one app's connections against its max_connections on
// this gateway. Its entry in the app's key (counts.LeaseSlots) is a lease:
// the slots of its open connections plus a headroom it hands out without
// writing. Every gateway's connects contend for that one key, so a
// connect within the lease takes a slot here, and a close gives it back
// here; only when the lease runs out do the connects waiting write, all
// together (group commit: the ones that arrive while a write is in flight
// go in the next), claiming their slots and a new headroom in one
// compare-and-set. Measured at 20 gateways without leases: a third of a
// write attempt per connect, 83% of them lost to another gateway's write
// (docs/scaling.md).
//
// The cost: with several gateways, a connect can be refused while another
// gateway holds unused leased slots (at most its headroom, twice that
// after closes: see giveBack). Pusher's own limit is approximate; near the
// cap the headroom shrinks to nothing and the count is exact again, and
// with one gateway it is always exact.
type slotBatcher struct {
	srv *Server
	app *config.App

	mu      sync.Mutex
	waiting []chan error // connects waiting for a slot
	held    int          // slots of this gateway's open connections, by its own count
	// lease is how many slots this gateway may hold without writing: its
	// entry in the app's key, or, while a write that may change the
	// entry is in flight or failed, the least the entry can be after it.
	lease int
	slack int // the headroom the last write got, beyond what it was asked to keep
	// running: a goroutine is writing the lease; dirty: write it even
	// with no connect waiting (a refill, a give-back, a Reassert).
	running, dirty bool
	// swept: a sweep may have removed the entry (Reassert), so the next
	// write keeps only the slots held: the unused ones may be another
	// gateway's by now.
	swept bool
}

// reassert writes the lease again after a sweep removed it.
func (b *slotBatcher) reassert() {
	b.mu.Lock()
	b.swept, b.dirty = true, true
	b.kick()
	b.mu.Unlock()
}

// acquire waits for a slot: nil, counts.ErrOverQuota, or the error that
// kept the count from being written.
func (b *slotBatcher) acquire(ctx context.Context) error {
	b.mu.Lock()
	if len(b.waiting) == 0 && b.held < b.lease && b.srv.baseCtx.Err() == nil {
		// Within the lease: no write. When half the headroom is used,
		// lease more ahead of the next connects (a refill, which
		// keeps the slots not yet used), so that a storm rarely waits
		// for a write.
		b.held++
		if 2*(b.lease-b.held) < b.slack && !b.running {
			b.dirty = true
			b.kick()
		}
		b.mu.Unlock()
		return nil
	}
	done := make(chan error, 1)
	b.waiting = append(b.waiting, done)
	b.kick()
	b.mu.Unlock()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The batch may still take the slot: give it back once it does.
		go func() {
			if <-done == nil {
				b.giveBack()
			}
		}()
		return ctx.Err()
	}
}

// giveBack returns a closed connection's slot. It writes nothing while the
// lease's surplus is within twice the headroom the last write got: a
// steady churn of connects and closes then writes nothing at all. Past
// that it gives the surplus back (down to held plus a new headroom), so
// that a gateway whose connections leave does not keep the slots from the
// others. Near the cap the last write got no headroom, and every close is
// written, as every connect is; so is the last close, which gives the
// whole lease back. It never fails: the batcher retries until
// the lease is written or the gateway stops (then the other gateways'
// sweep removes this gateway's entry, lease and all).
func (b *slotBatcher) giveBack() {
	b.mu.Lock()
	b.held--
	if b.lease-b.held > 2*b.slack || b.held == 0 {
		b.dirty = true
		b.kick()
	}
	b.mu.Unlock()
}

// kick starts the write loop if it is not running; b.mu is held.
func (b *slotBatcher) kick() {
	if !b.running {
		b.running = true
		go b.run()
	}
}

func (b *slotBatcher) run() {
	backoff := retryFirst
	for {
		b.mu.Lock()
		waiting := b.waiting
		b.waiting = nil
		if b.srv.baseCtx.Err() != nil {
			b.running = false
			b.mu.Unlock()
			for _, w := range waiting {
				w <- b.srv.baseCtx.Err() // stopping
			}
			return
		}
		// Connects that queued while the last write was in flight take
		// the slots it leased first.
		n := max(min(len(waiting), b.lease-b.held), 0)
		b.held += n
		for _, w := range waiting[:n] {
			w <- nil
		}
		waiting = waiting[n:]
		if 2*(b.lease-b.held) < b.slack {
			b.dirty = true // they used half the headroom: refill
		}
		if len(waiting) == 0 && !b.dirty {
			b.running = false
			b.mu.Unlock()
			return
		}
		held := b.held
		b.dirty = false
		// With no connection left, give it all back: an app nobody is
		// connected to leaves no entry behind (a gateway whose app sees
		// one client come and go writes twice per visit, as it did
		// before leases).
		none := held == 0 && len(waiting) == 0
		if b.lease-held > 2*b.slack || none || b.swept {
			// Give the surplus back. The entry may shrink to held:
			// until the write says, no connect takes a slot locally.
			b.lease, b.swept = held, false
		}
		// The write keeps the lease's slots, held or not: connects
		// take them meanwhile without waiting for it.
		keep := b.lease
		headroom := counts.Headroom(keep, len(waiting))
		if none {
			headroom = 0
		}
		b.mu.Unlock()

		ctx, cancel := context.WithTimeout(b.srv.baseCtx, asyncTimeout)
		l, err := b.srv.counts.LeaseSlots(ctx, b.app.ID, b.srv.opts.GatewayID, keep, len(waiting), headroom, b.app.MaxConnections)
		cancel()
		b.countWrites(l, err)
		if err != nil {
			for _, w := range waiting {
				w <- err
			}
			b.mu.Lock()
			// Write the lease again, with the next batch. The entry is
			// the old one or the new one, both at least keep: the
			// lease stays keep meanwhile.
			b.dirty = true
			b.mu.Unlock()
			if b.srv.baseCtx.Err() == nil {
				b.srv.prom.StateRetries.Inc()
				if ev := b.srv.retryLog.Warn(); ev != nil {
					ev.Err(err).Str("app_id", b.app.ID).Msg("connection count failed; retrying (logged at most every 10 s)")
				}
			}
			select {
			case <-time.After(backoff):
			case <-b.srv.baseCtx.Done():
			}
			backoff = min(backoff*2, retryMax)
			continue
		}
		backoff = retryFirst
		b.mu.Lock()
		b.held += l.Granted
		b.lease = l.Leased
		b.slack = l.Leased - keep - l.Granted
		if b.lease-b.held > 2*b.slack {
			b.dirty = true // closes during the write passed the bound
		}
		b.mu.Unlock()
		for i, w := range waiting {
			if i < l.Granted {
				w <- nil
			} else {
				w <- counts.ErrOverQuota
			}
		}
	}
}

// countWrites adds a lease write's compare-and-sets to
// resound_count_writes_total.
func (b *slotBatcher) countWrites(l counts.Lease, err error) {
	m := b.srv.prom.CountWrites
	lost := l.Attempts - 1
	switch {
	case err != nil:
		m.WithLabelValues("failed").Inc()
	case l.Wrote:
		m.WithLabelValues("stored").Inc()
	default:
		m.WithLabelValues("unchanged").Inc()
	}
	if lost > 0 {
		m.WithLabelValues("conflict").Add(float64(lost))
	}
}
