package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/counts"
)

// slotBatcher counts one app's connections against its max_connections on
// this gateway. Connects and closes are gathered while a write is in
// flight and applied together by the next (group commit): a connect storm
// costs one compare-and-set per batch on the app's one key, instead of one
// per connection, each losing to the others and retrying.
type slotBatcher struct {
	srv *Server
	app *config.App

	mu      sync.Mutex
	waiting []chan error // connects waiting for a slot
	held    int          // slots of this gateway's open connections, by its own count
	running bool         // a goroutine is applying batches
	dirty   bool         // held changed since the shared count was last written
}

// acquire waits for a slot: nil, counts.ErrOverQuota, or the error that
// kept the count from being written.
func (b *slotBatcher) acquire(ctx context.Context) error {
	done := make(chan error, 1)
	b.mu.Lock()
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

// giveBack returns a closed connection's slot. It never fails: the
// batcher retries until the count is written or the gateway stops (then
// the other gateways' sweep removes this gateway's count).
func (b *slotBatcher) giveBack() {
	b.mu.Lock()
	b.held--
	b.dirty = true
	b.kick()
	b.mu.Unlock()
}

// kick starts the batch loop if it is not running; b.mu is held.
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
		waiting, held := b.waiting, b.held
		b.waiting = nil
		if len(waiting) == 0 && !b.dirty || b.srv.baseCtx.Err() != nil {
			b.running = false
			b.mu.Unlock()
			for _, w := range waiting {
				w <- b.srv.baseCtx.Err() // stopping
			}
			return
		}
		b.dirty = false
		b.mu.Unlock()

		ctx, cancel := context.WithTimeout(b.srv.baseCtx, asyncTimeout)
		taken, err := b.srv.counts.ClaimSlots(ctx, b.app.ID, b.srv.opts.GatewayID, held, len(waiting), b.app.MaxConnections)
		cancel()
		if err != nil {
			for _, w := range waiting {
				w <- err
			}
			b.mu.Lock()
			b.dirty = true // write held again, with the next batch
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
		b.held += taken
		b.mu.Unlock()
		for i, w := range waiting {
			if i < taken {
				w <- nil
			} else {
				w <- counts.ErrOverQuota
			}
		}
	}
}
