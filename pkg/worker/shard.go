package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/pkg/queue"
	"github.com/resoundhq/resound/pkg/route"
	"github.com/resoundhq/resound/protocol"
)

// shard works, in order, the parts of jobs whose channels hash to it. A
// part that fails is retried here, in place: every job on its channels
// comes through this shard, so none can go ahead of it meanwhile.
type shard struct {
	pool *Pool
	in   chan *task
	// backlog holds, in order, the tasks taken from in while a failed one
	// waits for its retry. Taking them keeps the dispatchers (and so the
	// other shards) from blocking on a full in, and lets the shard keep
	// their ack deadlines from passing while they wait: JetStream would
	// otherwise deliver them again, and count the deliveries.
	backlog []*task
	// tendAt is when the backlog's ack deadlines are next pushed back. It
	// outlives each pause: pauses are often shorter than keepAlive.
	tendAt time.Time
	// unconfirmed holds, in order, the tasks whose deliveries went out on
	// the connection of epoch (its count of reconnects) with no flush yet
	// to prove that the server read them. Their jobs are acked only once
	// one does (see confirm).
	unconfirmed []*task
	epoch       uint64
	// Scratch buffers for one delivery, reused.
	payload, envelope []byte
}

// confirmBatch bounds the tasks a shard publishes before it waits for the
// server to confirm them. It stays within a gateway's dedup window
// (dedupWindow there), so that a channel's deliveries published again
// after a reconnect are all recognised as repeats.
const confirmBatch = 64

// confirmTimeout bounds the wait for the server's confirmation.
const confirmTimeout = 5 * time.Second

// errReconnected says that the connection changed while a task's
// deliveries were being published: some may have gone out on the old one.
var errReconnected = errors.New("the connection to NATS changed while publishing")

// linkDown tells the failures that come from the connection, not from the
// job: they are retried without spending the job's attempts.
func linkDown(err error) bool {
	return errors.Is(err, errReconnected) || errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrConnectionClosed)
}

// maxBacklog bounds the tasks a shard takes in while it retries one;
// past it, in fills up and the dispatchers wait.
const maxBacklog = 4096

// keepAlive is how often jobs that wait behind a retry tell JetStream
// they are being worked on: well inside the ack wait, so that a late tick
// or a slow round trip does not let one fall due.
const keepAlive = queue.AckWait / 4

func (s *shard) run() {
	for {
		t := s.next()
		if t == nil {
			return
		}
		s.handle(t)
	}
}

// next returns the next task, from the backlog first; nil once the pool
// quits.
func (s *shard) next() *task {
	if isClosed(s.pool.quit) {
		return nil
	}
	if len(s.backlog) > 0 {
		t := s.backlog[0]
		s.backlog[0] = nil
		s.backlog = s.backlog[1:]
		return t
	}
	select {
	case t := <-s.in:
		return t
	case <-s.pool.quit:
		return nil
	}
}

// handle delivers t, trying again with backoff while it fails, up to
// MaxAttempts; then the job is set aside.
func (s *shard) handle(t *task) {
	p, r := s.pool, t.run
	failing := false
	defer func() {
		if failing {
			p.retrying.Add(-1)
		}
	}()
	for attempt := 1; ; attempt++ {
		switch {
		case r.settled.Load():
			return // another part of the job decided it
		case p.leaving.Load():
			p.leave(r)
			return
		}
		err := s.attempt(t)
		if err == nil {
			if !p.confirms {
				s.done(t)
				return
			}
			s.unconfirmed = append(s.unconfirmed, t)
			if len(s.unconfirmed) >= confirmBatch || s.idle() {
				s.confirmAll()
			}
			return
		}
		if !failing {
			failing = true
			p.retrying.Add(1)
		}
		if isClosed(p.stopping) {
			// A failure while stopping (the all-in-one gateway going down,
			// the connection closing) says nothing about the job: leave it
			// for the next owner rather than spend its attempts.
			p.leave(r)
			return
		}
		if p.confirms && linkDown(err) {
			// Nothing wrong with the job: wait for the connection, then
			// publish again, this and what is unconfirmed before it.
			attempt--
			if !s.pause(r, p.backoff(1)) {
				p.leave(r)
				return
			}
			continue
		}
		p.failed()
		if attempt >= p.opts.MaxAttempts {
			p.setAside(r, fmt.Sprintf("failed %d attempts, the last with: %v", attempt, err))
			return
		}
		p.stats.Retried.Add(1)
		if m := p.opts.Metrics; m != nil {
			m.Jobs.WithLabelValues(metrics.JobRetried).Inc()
		}
		p.retryLog.Warn().Err(err).Uint64("seq", r.seq).Str("subject", r.msg.Subject()).Int("attempt", attempt).
			Msg("job failed, retrying it (one such line per 10 s at most)")
		if !s.pause(r, p.backoff(attempt)) {
			p.leave(r)
			return
		}
	}
}

// done counts t's part of its job as delivered.
func (s *shard) done(t *task) {
	if t.run.pending.Add(-1) == 0 {
		s.pool.finish(t.run)
	}
}

// idle reports that no task waits for the shard.
func (s *shard) idle() bool { return len(s.backlog) == 0 && len(s.in) == 0 }

// attempt publishes t's deliveries. A panic is recovered and returned as
// an error: it counts as a failed attempt.
//
// Deliveries over NATS are confirmed before their jobs are acked. A
// publish only hands bytes to the connection: those written to a socket
// the server then loses are gone, and nats.go cannot tell. The epoch (the
// connection's count of reconnects, read around the publishes under the
// same lock that changes the connection) says which connection they went
// out on; the connection is made with no reconnect buffer, so that a
// publish while it is down fails instead of going out later, behind
// others. When the connection has changed since the unconfirmed tasks
// went out, they are published again, in order, before t: one of them may
// be lost, and nothing may overtake it. Gateways drop the repeats.
func (s *shard) attempt(t *task) error {
	p := s.pool
	if !p.confirms {
		return s.publish(t, true)
	}
	nc := p.opts.Conn
	epoch := nc.Stats().Reconnects
	if epoch != s.epoch {
		for _, u := range s.unconfirmed {
			if err := s.publish(u, false); err != nil {
				return err
			}
		}
	}
	if err := s.publish(t, true); err != nil {
		return err
	}
	if nc.Stats().Reconnects != epoch {
		return errReconnected
	}
	s.epoch = epoch
	return nil
}

// confirm asks the server for a round trip: when it answers on the
// connection the unconfirmed tasks went out on, it has read them, and
// their parts are done.
func (s *shard) confirm() bool {
	nc := s.pool.opts.Conn
	if nc.Stats().Reconnects != s.epoch {
		return false
	}
	if err := nc.FlushTimeout(confirmTimeout); err != nil || nc.Stats().Reconnects != s.epoch {
		return false
	}
	for i, t := range s.unconfirmed {
		s.done(t)
		s.unconfirmed[i] = nil
	}
	s.unconfirmed = s.unconfirmed[:0]
	return true
}

// confirmAll confirms the unconfirmed tasks, publishing them again on a
// new connection when theirs went away, until it works or the pool stops;
// then they are left unacked, for JetStream to deliver again.
func (s *shard) confirmAll() {
	p := s.pool
	for attempt := 1; !s.confirm(); attempt++ {
		if !s.pause(s.unconfirmed[0].run, p.backoff(attempt)) {
			for _, t := range s.unconfirmed {
				p.leave(t.run)
			}
			clear(s.unconfirmed)
			s.unconfirmed = s.unconfirmed[:0]
			return
		}
		nc := p.opts.Conn
		if epoch := nc.Stats().Reconnects; epoch != s.epoch {
			var err error
			for _, u := range s.unconfirmed {
				if err = s.publish(u, false); err != nil {
					break
				}
			}
			if err == nil && nc.Stats().Reconnects == epoch {
				s.epoch = epoch
			}
		}
	}
}

// publish hands t's deliveries to Deliver; first is false when they were
// published before, and are again after a reconnect.
func (s *shard) publish(t *task, first bool) (err error) {
	p, r := s.pool, t.run
	defer func() {
		if v := recover(); v != nil {
			p.recovered(v, r.msg)
			err = fmt.Errorf("panic: %v", v)
		}
	}()
	recovers := p.opts.Recovers != nil && p.opts.Recovers(r.job.AppID)
	for ei, channels := range t.channels {
		ev := &r.job.Events[ei]
		for _, ch := range channels {
			faultPanic(ev.Name)
			if recovers {
				pos := route.Envelope{Seq: r.seq, Event: uint8(ei)}.ID()
				s.payload = protocol.AppendChannelEventAt(s.payload[:0], ev.Name, ch, ev.Data, pos, r.stored.UnixMilli())
			} else {
				s.payload = protocol.AppendChannelEvent(s.payload[:0], ev.Name, ch, ev.Data, "")
			}
			// The frame ends the envelope: encode it straight into it.
			s.envelope = route.AppendDelivery(s.envelope[:0], route.Delivery{
				Seq:             r.seq,
				Event:           uint8(ei),
				ExcludeSocketID: ev.SocketID,
			})
			s.envelope = protocol.AppendTextFrame(s.envelope, s.payload)
			// Deliver copies (Publish into the connection's buffer), so
			// the scratch buffers are reused at once. On a retry the
			// channels delivered before are delivered again: the envelope
			// carries the job's sequence and the event's index, and
			// gateways drop what they wrote already.
			subject := route.Subject(r.job.AppID, ch)
			if err := p.opts.Deliver(subject, s.envelope); err != nil {
				return fmt.Errorf("publishing the delivery on %s: %w", ch, err)
			}
			if recovers && p.opts.Record != nil {
				if err := p.opts.Record(subject, s.envelope); err != nil {
					return fmt.Errorf("recording the delivery on %s: %w", ch, err)
				}
			}
			if !first {
				continue
			}
			p.stats.Deliveries.Add(1)
			if m := p.opts.Metrics; m != nil {
				m.Deliveries.Inc()
			}
			if p.opts.Cache != nil && protocol.ClassifyChannel(ch).Cache {
				p.cache(r.job.AppID, ch, ev)
			}
		}
	}
	return nil
}

// pause waits d before r's next attempt; false if the pool stops
// meanwhile. It keeps r's ack deadline, and those of the tasks behind it,
// from passing: JetStream would deliver them again, and count it.
func (s *shard) pause(r *run, d time.Duration) bool {
	p := s.pool
	_ = r.msg.InProgress()
	timer := time.NewTimer(d)
	defer timer.Stop()
	tick := time.NewTimer(time.Until(s.tendAt))
	defer tick.Stop()
	for {
		var in chan *task
		if len(s.backlog) < maxBacklog {
			in = s.in
		}
		select {
		case <-timer.C:
			if left := p.holdLeft(); left > 0 {
				// Just reconnected: a delivery now would miss the
				// gateways not yet resubscribed.
				timer.Reset(left)
				continue
			}
			return true
		case <-p.stopping:
			return false
		case t := <-in:
			// Its deadline may be close already: push it back now.
			s.backlog = append(s.backlog, t)
			_ = t.run.msg.InProgress()
		case <-tick.C:
			_ = r.msg.InProgress()
			for _, t := range s.backlog {
				if !t.run.settled.Load() {
					_ = t.run.msg.InProgress()
				}
			}
			s.tendAt = time.Now().Add(keepAlive)
			tick.Reset(keepAlive)
		}
	}
}

// backoff is the wait before the retry that follows attempt: RetryBackoff,
// doubled at each attempt, at most RetryBackoffMax.
func (p *Pool) backoff(attempt int) time.Duration {
	d := p.opts.RetryBackoff
	for i := 1; i < attempt && d < p.opts.RetryBackoffMax; i++ {
		d *= 2
	}
	return min(d, p.opts.RetryBackoffMax)
}

// retryBudget bounds how long a job's retries take: every backoff, and
// the wait to store its dead letter.
func (p *Pool) retryBudget() time.Duration {
	var d time.Duration
	for a := 1; a < p.opts.MaxAttempts; a++ {
		d += p.backoff(a)
	}
	return d + deadLetterTimeout
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
