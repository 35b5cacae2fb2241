package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resoundhq/resound/internal/metrics"
)

// asyncLanes runs the work that waits on NATS — shared-state updates, new
// delivery subscriptions, publishes — off the poller goroutines, which must
// never wait on the network.
//
// Work is queued on a lane chosen by a key (a connection's work goes on
// the connection's lane), and each lane runs its work in order on one
// goroutine, so that a connection's join is never overtaken by its leave,
// nor its sign-in by its sign-out. Lanes run in parallel with each other.
//
// Work that starts something (a subscription, a sign-in, a client event)
// is admitted only while its lane's backlog is short, and refused at once
// otherwise: the client gets an answer instead of a poller waiting. Work
// that undoes something admitted (a leave, a sign-out, a connection-slot
// release) is always queued, because dropping it would leave the shared
// state wrong; it is bounded by the work admitted before it.
type asyncLanes struct {
	lanes   []lane
	timeout time.Duration
	// recovered handles a panic in a piece of work; c is its connection,
	// or nil.
	recovered func(r any, c *conn)
	// queued counts work queued or running, for Serve's drain.
	queued atomic.Int64
	// ctx ends the lanes; set by run before any work is queued.
	ctx context.Context
	wg  *sync.WaitGroup
}

// lane is one ordered queue, worked by at most one goroutine at a time.
// The goroutine exists only while there is work: an idle gateway holds
// no lane goroutines and no stacks for them.
type lane struct {
	mu      sync.Mutex
	work    []asyncWork
	running bool
}

type asyncWork struct {
	c *conn // whose work it is, for a panic to close; may be nil
	f func(ctx context.Context)
}

const (
	// laneCount is how many pieces of shared-state work run at once. Each
	// usually waits on one NATS round trip; many lanes keep many in
	// flight, and few enough keep compare-and-set contention on hot keys
	// (a busy presence channel) low.
	laneCount = 64
	// laneBacklog is how much admitted work may wait on one lane before
	// new work is refused. A client filling its lane delays only the
	// connections that share it, one in laneCount.
	laneBacklog = 256
	// asyncTimeout bounds one piece of work's wait on the shared state.
	asyncTimeout = 10 * time.Second
)

func newAsyncLanes(recovered func(r any, c *conn)) *asyncLanes {
	return &asyncLanes{lanes: make([]lane, laneCount), timeout: asyncTimeout, recovered: recovered}
}

// try queues admitted work on key's lane, unless the lane's backlog is
// full: then it returns false and the caller refuses the request.
func (a *asyncLanes) try(key uint64, c *conn, f func(ctx context.Context)) bool {
	return a.queue(key, asyncWork{c: c, f: f}, true)
}

// must queues work that may not be dropped.
func (a *asyncLanes) must(key uint64, c *conn, f func(ctx context.Context)) {
	a.queue(key, asyncWork{c: c, f: f}, false)
}

func (a *asyncLanes) queue(key uint64, w asyncWork, admit bool) bool {
	l := &a.lanes[key%uint64(len(a.lanes))]
	l.mu.Lock()
	if admit && len(l.work) >= laneBacklog {
		l.mu.Unlock()
		return false
	}
	l.work = append(l.work, w)
	a.queued.Add(1)
	if !l.running && a.ctx != nil && a.ctx.Err() == nil {
		l.running = true
		a.wg.Add(1)
		go l.run(a)
	}
	l.mu.Unlock()
	return true
}

// run lets the lanes work until ctx ends; work still queued then is
// dropped (the gateway is stopping, and the registry's sweep cleans up
// after it). Serve calls it before it accepts connections.
func (a *asyncLanes) run(ctx context.Context, wg *sync.WaitGroup) {
	a.ctx, a.wg = ctx, wg
}

// run works the lane's queue until it is empty, then ends.
func (l *lane) run(a *asyncLanes) {
	defer a.wg.Done()
	var batch []asyncWork
	for {
		l.mu.Lock()
		batch, l.work = l.work, batch[:0]
		if len(batch) == 0 || a.ctx.Err() != nil {
			l.running = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		for i := range batch {
			if a.ctx.Err() == nil {
				a.do(a.ctx, batch[i])
			}
			batch[i] = asyncWork{}
			a.queued.Add(-1)
		}
	}
}

// do runs one piece of work with a deadline, recovering a panic.
func (a *asyncLanes) do(ctx context.Context, w asyncWork) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			a.recovered(r, w.c)
		}
	}()
	w.f(ctx)
}

// drain waits until no work is queued or running, or until timeout.
func (a *asyncLanes) drain(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for a.queued.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// Backoff of clean-up work that failed: the shared state is unreachable
// or contended, and retrying at once would only add to it.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 5 * time.Second
)

// retry runs a write the shared state must get (a presence leave, a
// sign-out, a connection-slot release, a reassertion after a lapse) until
// it succeeds or the gateway stops, holding its lane meanwhile: a later
// join or leave of the same connection must not overtake it. It reports
// whether the write was made. If the gateway stops first, the other
// gateways' sweep removes what it held once its heartbeat expires.
func (s *Server) retry(what string, f func(ctx context.Context) error) bool {
	backoff := retryFirst
	for {
		ctx, cancel := context.WithTimeout(s.baseCtx, asyncTimeout)
		err := f(ctx)
		cancel()
		if err == nil {
			return true
		}
		if s.baseCtx.Err() != nil {
			s.log.Warn().Err(err).Str("what", what).Msg("gateway stopping: clean-up left to the other gateways' sweep")
			return false
		}
		s.prom.StateRetries.Inc()
		if ev := s.retryLog.Warn(); ev != nil {
			ev.Err(err).Str("what", what).Dur("backoff", backoff).Msg("shared-state write failed; retrying (logged at most every 10 s)")
		}
		select {
		case <-time.After(backoff):
		case <-s.baseCtx.Done():
		}
		backoff = min(backoff*2, retryMax)
	}
}

// recoveredAsync is asyncLanes' panic handler.
func (s *Server) recoveredAsync(r any, c *conn) { s.recovered(metrics.PanicAsync, r, c) }
