package gateway

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

// Catching up: deliveries are core NATS, so a gateway that is away — its
// link to NATS cut, the process stalled, or a subscription dropped as a
// slow consumer because its dispatcher fell behind — misses what is
// published meanwhile. The workers' deliveries are also kept for a while
// in the history stream (internal/history). A dispatcher notices a gap itself,
// before it writes anything that followed it: the NATS connection
// reconnected since its last batch, or NATS dropped deliveries of one of
// its channels. It then holds every live delivery, in order, and asks the
// catch-up for what was missed. The catch-up reads the history from a
// mark taken before the gap and hands each delivery to its channel's
// dispatcher, which writes those its subscribers have not had (by
// position), then the held ones, then goes on live. Beyond the window,
// nothing can prove what was missed: the dispatcher's subscribers are
// closed with 4200, and reconnect and resubscribe at once.
//
//	dispatcher:  batch ─ gap? ─ yes ─▶ hold ─▶ (replays written) ─▶ release ─▶ held written ─▶ live
//	catch-up:            request ─▶ mark before the gap ─▶ history.Since ─▶ replays ─▶ release
//
// Everything a dispatcher writes goes through its one goroutine, so order
// holds without locks.

// catchupMargin is how far before a dispatcher's last sign of life the
// replay starts. Messages sit in buffers (the server's, the socket's,
// nats.go's, the dispatcher's queue) before they are written; anything
// published after the mark is replayed, and what subscribers had already
// is skipped by position.
const catchupMargin = 5 * time.Second

// maxHeldBytes bounds the live deliveries a dispatcher holds while
// catching up; past it, it gives up and has its subscribers reconnect.
const maxHeldBytes = 64 << 20

// replayItem is, from a catch-up run to a dispatcher: the start of the
// run (hold set: hold live deliveries from now on), a delivery the run
// read from the history, or the end of the run (release set).
type replayItem struct {
	hold    uint64 // the run's generation
	subject string
	data    []byte
	seq     uint64 // its sequence in the history stream
	release *catchupRelease
}

// catchupRelease ends a catch-up run.
type catchupRelease struct {
	gen     uint64
	expired bool // the window no longer held all that was missed
}

// mark is the history stream's last sequence at a time, read while the
// NATS connection was on its epoch-th link (its count of reconnects).
type mark struct {
	at    time.Time
	seq   uint64
	epoch uint64
}

// catchup reads what dispatchers missed from the history. One run at a
// time; requests that arrive during a run are served by the next.
type catchup struct {
	srv  *Server
	hist *history.History
	ttl  time.Duration
	wake chan struct{}

	mu      sync.Mutex
	marks   []mark // every second, the last ttl or so
	pending bool
	from    uint64 // the earliest mark asked for since the last run began
	runGen  uint64 // the run in progress, or the last one
}

func newCatchup(srv *Server, hist *history.History, ttl time.Duration) *catchup {
	return &catchup{srv: srv, hist: hist, ttl: ttl, wake: make(chan struct{}, 1)}
}

// request asks for a run that replays what was stored after a mark, and
// returns that run's generation: the release a holding dispatcher waits
// for. The mark is the latest taken catchupMargin before since and, when
// epoch is not 0, on a link before the epoch-th: a reconnect's gap began
// when the old link broke, about when the last mark on it was taken.
func (c *catchup) request(since time.Time, epoch uint64) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch > 0 {
		for i := len(c.marks) - 1; i >= 0; i-- {
			if c.marks[i].epoch < epoch {
				since = minTime(since, c.marks[i].at)
				break
			}
		}
	}
	from := c.markBefore(since.Add(-catchupMargin))
	if !c.pending || from < c.from {
		c.from = from
	}
	c.pending = true
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return c.runGen + 1
}

// run takes marks every second and serves requests, until ctx ends.
func (c *catchup) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	c.takeMark(ctx)
	for {
		select {
		case <-tick.C:
			c.takeMark(ctx)
		case <-c.wake:
			c.serveSafely(ctx)
		case <-ctx.Done():
			return
		}
	}
}

func (c *catchup) takeMark(ctx context.Context) {
	epoch := c.srv.opts.Conn.Stats().Reconnects
	mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	seq, err := c.hist.Mark(mctx)
	cancel()
	if err != nil || c.srv.opts.Conn.Stats().Reconnects != epoch {
		return // NATS away, or the link changed under the read
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.marks = append(c.marks, mark{at: now, seq: seq, epoch: epoch})
	keep := now.Add(-c.ttl - time.Minute)
	i := 0
	for i < len(c.marks)-1 && c.marks[i].at.Before(keep) {
		i++
	}
	c.marks = c.marks[i:]
}

// latest is the last mark read.
func (c *catchup) latest() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.marks) == 0 {
		return 0
	}
	return c.marks[len(c.marks)-1].seq
}

// markBefore is the latest mark taken no later than t. With none that old,
// the oldest: the gateway did not exist before it, so neither did its
// channels.
func (c *catchup) markBefore(t time.Time) uint64 {
	var seq uint64
	for i, m := range c.marks {
		if i > 0 && m.at.After(t) {
			break
		}
		seq = m.seq
	}
	return seq
}

// serveSafely serves, recovering a panic: a holding dispatcher then waits
// for the next run, which the next gap asks for.
func (c *catchup) serveSafely(ctx context.Context) {
	defer func() {
		if r := recover(); r != nil {
			c.srv.recovered(metrics.PanicDispatcher, r, nil)
		}
	}()
	c.serve(ctx)
}

// serve runs one catch-up for every request so far.
func (c *catchup) serve(ctx context.Context) {
	s := c.srv
	c.mu.Lock()
	if !c.pending {
		c.mu.Unlock()
		return
	}
	c.pending = false
	c.runGen++
	gen, from := c.runGen, c.from
	c.mu.Unlock()

	// Every dispatcher holds its live deliveries from here to the
	// release, so that the replays it writes are never overtaken by what
	// it takes live meanwhile. Those that noticed the gap themselves are
	// holding already.
	for _, q := range s.replays {
		select {
		case q <- replayItem{hold: gen}:
		case <-ctx.Done():
			return
		}
	}
	started := time.Now()
	replayed := 0
	// Through a barrier: everything NATS sent this gateway (or dropped)
	// before the gap was noticed is stored before it, though the stream's
	// last sequence may not show it yet.
	var through uint64
	err := c.retry(ctx, func(actx context.Context) (err error) {
		through, err = c.hist.Barrier(actx)
		return err
	})
	pos := from
	replay := func(actx context.Context) error {
		return c.hist.Since(actx, pos, through, nil, func(subject string, data []byte, seq uint64) error {
			pos = seq // a retry goes on after it
			if s.hub.lookup(subject) == nil {
				return nil // no local subscriber
			}
			replayed++
			select {
			case s.replays[s.hub.dispatcherIndex(subject)] <- replayItem{subject: subject, data: data, seq: seq}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}
	for err == nil {
		before := pos
		err = c.retry(ctx, replay)
		if err == nil || !ensure.Transient(err) || pos == before {
			break // done, refused, or stalled for a whole catchupStall
		}
	}
	expired := err != nil
	result := "ok"
	switch {
	case errors.Is(err, history.ErrExpired):
		result = "expired"
	case err != nil:
		result = "failed"
	}
	s.prom.Catchups.WithLabelValues(result).Inc()
	s.prom.CatchupReplayed.Add(float64(replayed))
	ev := s.log.Info()
	if expired {
		ev = s.log.Warn().Err(err)
	}
	ev.Str("result", result).Int("replayed", replayed).Dur("took", time.Since(started)).Uint64("from", from).
		Msg("caught up with deliveries missed (expired: subscribers of the channels concerned reconnect)")
	for _, q := range s.replays {
		select {
		case q <- replayItem{release: &catchupRelease{gen: gen, expired: expired}}:
		case <-ctx.Done():
			return
		}
	}
}

// catchupStall bounds how long a catch-up keeps trying while it makes no
// progress: NATS answers nothing while it elects a leader (seconds on a
// cluster that lost a node), and the subscribers are better served by a
// wait than by a reconnect. Past it, they reconnect.
const catchupStall = 30 * time.Second

// retry runs op, each attempt bounded and repeated while it fails for a
// passing reason (see ensure.Do), for catchupStall at most.
func (c *catchup) retry(ctx context.Context, op func(context.Context) error) error {
	sctx, cancel := context.WithTimeout(ctx, catchupStall)
	defer cancel()
	return ensure.Do(sctx, op)
}

// watchLink asks for a catch-up when the NATS connection comes back, and
// when NATS drops deliveries of a subscription as a slow consumer. The
// dispatchers notice both themselves, but only when a later delivery
// comes: these callbacks also cover the channels that go quiet after the
// gap. The handlers chain to those set before.
func (s *Server) watchLink() {
	nc := s.opts.Conn
	prevDisconnect, prevReconnect, prevErr := nc.Opts.DisconnectedErrCB, nc.Opts.ReconnectedCB, nc.Opts.AsyncErrorCB
	nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		s.disconnectedAt.CompareAndSwap(0, time.Now().UnixNano())
		if prevDisconnect != nil {
			prevDisconnect(c, err)
		}
	})
	nc.SetReconnectHandler(func(c *nats.Conn) {
		since := time.Now()
		if at := s.disconnectedAt.Swap(0); at != 0 {
			since = time.Unix(0, at)
		}
		for i := range s.lastEmpty {
			since = minTime(since, s.behindSince(i))
		}
		s.catchup.request(since, c.Stats().Reconnects)
		if prevReconnect != nil {
			prevReconnect(c)
		}
	})
	nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
			s.catchup.request(s.behindSince(s.hub.dispatcherIndex(sub.Subject)), 0)
		}
		if prevErr != nil {
			prevErr(c, sub, err)
		}
	})
}

// behindSince is since when dispatcher i has had deliveries waiting: now
// if it has none, else when it last found its queue empty.
func (s *Server) behindSince(i int) time.Time {
	if len(s.dispatch[i]) == 0 {
		return time.Now()
	}
	return time.Unix(0, s.lastEmpty[i].Load())
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// gapBefore reports whether something was missed before the batch in
// d.msgs; if so the batch is held, and a catch-up asked for.
func (s *Server) gapBefore(d *dispatcher) bool {
	if s.catchup == nil {
		return false
	}
	gap, epoch := false, uint64(0)
	if n := s.opts.Conn.Stats().Reconnects; n != d.reconnects {
		// Reconnected since the last batch: what was published while the
		// link was down, or in flight when it broke, never came. nats.go
		// counts the reconnect before it resubscribes, so every delivery
		// that came on the new link is in this batch or after it.
		d.reconnects, epoch = n, n
		gap = true
	}
	for _, m := range d.msgs {
		if m.Sub == nil {
			continue
		}
		ch := s.hub.lookup(m.Subject)
		if ch == nil || m.Sub != ch.nsub.Load() {
			continue
		}
		if n, err := m.Sub.Dropped(); err == nil && n != ch.dropped {
			// NATS dropped deliveries of this channel (its dispatcher was
			// behind): they were queued after those this dispatcher has
			// written, and before this one.
			ch.dropped = n
			gap = true
		}
	}
	if !gap {
		return false
	}
	// A drop's gap began after this dispatcher was last idle: everything
	// queued since was sent after that. A reconnect's began when the old
	// link broke (see request), or when the dispatcher fell behind.
	s.holdFrom(d, d.lastEmpty, epoch)
	for _, m := range d.msgs {
		s.hold(d, m)
	}
	return true
}

// droppedSinceSeen reports whether NATS dropped deliveries of one of d's
// channels since the dispatcher last looked, and notes the counts. It
// runs when a catch-up is done: drops at the end of a burst are followed
// by nothing that would show them.
func (s *Server) droppedSinceSeen(d *dispatcher) bool {
	dropped := false
	for i := range s.hub.shards {
		sh := &s.hub.shards[i]
		sh.mu.Lock()
		for subject, ch := range sh.channels {
			if s.hub.dispatcherIndex(subject) != d.index {
				continue
			}
			if sub := ch.nsub.Load(); sub != nil {
				if n, err := sub.Dropped(); err == nil && n != ch.dropped {
					ch.dropped = n
					dropped = true
				}
			}
		}
		sh.mu.Unlock()
	}
	return dropped
}

// holdFrom starts holding d's live deliveries until a catch-up from since
// is done.
func (s *Server) holdFrom(d *dispatcher, since time.Time, epoch uint64) {
	gen := s.catchup.request(since, epoch)
	if d.holding {
		d.holdGen = max(d.holdGen, gen)
		return
	}
	d.holding, d.holdGen = true, gen
}

// hold keeps a live delivery until the catch-up is done.
func (s *Server) hold(d *dispatcher, m *nats.Msg) {
	if !d.holding {
		return
	}
	d.held = append(d.held, m)
	d.heldBytes += len(m.Data)
	if d.heldBytes > maxHeldBytes {
		s.prom.Catchups.WithLabelValues("overflow").Inc()
		s.log.Warn().Int("dispatcher", d.index).Int("held", len(d.held)).
			Msg("too much held while catching up: subscribers of the channels concerned reconnect")
		s.reconnectChannels(d)
		d.held, d.heldBytes, d.holding = nil, 0, false
	}
}

// replayed handles what the catch-up hands d: a missed delivery, written
// unless its subscribers had it already, or the end of a run.
func (s *Server) replayed(d *dispatcher, r replayItem) {
	if r.hold != 0 {
		if !d.holding {
			d.holding, d.holdGen = true, r.hold
		}
		d.holdGen = max(d.holdGen, r.hold)
		return
	}
	if r.release == nil {
		ch := s.hub.lookup(r.subject)
		if ch == nil || r.seq <= ch.createdMark {
			return // older than the channel on this gateway
		}
		env, err := route.ParseDelivery(r.data)
		if err != nil || env.ID() == 0 || env.ID() <= ch.lastPos.Load() {
			return // a gateway's own frame (never replayed), or had already
		}
		d.msgs = append(d.msgs[:0], &nats.Msg{Subject: r.subject, Data: r.data})
		d.strict = true
		s.dispatchSafely(d)
		d.strict = false
		return
	}
	d.releasedGen = max(d.releasedGen, r.release.gen)
	if !d.holding || d.releasedGen < d.holdGen {
		return
	}
	if !r.release.expired && s.droppedSinceSeen(d) {
		// NATS dropped more while this run read: one more, before
		// anything held is written.
		d.holdGen = s.catchup.request(d.lastEmpty, 0)
		return
	}
	held := d.held
	d.held, d.heldBytes, d.holding = nil, 0, false
	if r.release.expired {
		s.reconnectChannels(d)
		return
	}
	// The held deliveries, in order, in batches; those the replays
	// covered are dropped by position.
	d.strict = true
	for len(held) > 0 {
		n := min(len(held), maxBatch)
		d.msgs = append(d.msgs[:0], held[:n]...)
		held = held[n:]
		s.dispatchSafely(d)
	}
	d.strict = false
}

// reconnectChannels closes every subscriber of d's channels with 4200:
// what they missed cannot be told, so they reconnect and resubscribe at
// once (and, with recovery, resume where they left off).
func (s *Server) reconnectChannels(d *dispatcher) {
	for i := range s.hub.shards {
		sh := &s.hub.shards[i]
		sh.mu.Lock()
		var chans []*channel
		for subject, ch := range sh.channels {
			if s.hub.dispatcherIndex(subject) == d.index {
				chans = append(chans, ch)
			}
		}
		sh.mu.Unlock()
		for _, ch := range chans {
			ch.mu.RLock()
			members := append([]member(nil), ch.members...)
			ch.mu.RUnlock()
			for _, m := range members {
				m.c.closeWith(protocol.CodeReconnect, "Missed events while the server was away; reconnect")
			}
		}
	}
}
