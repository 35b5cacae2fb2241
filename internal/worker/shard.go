package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
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
	// unconfirmed holds, in order, the tasks whose deliveries went out
	// with no acknowledgement yet from the history stream that it stored
	// them. Their jobs are acked only once it has (see settle).
	unconfirmed []*task
	// inFlight holds the channels with a delivery not yet acknowledged: a
	// channel's next delivery waits for it (see publish).
	inFlight map[string]struct{}
	// awaited counts the acknowledgements awaited, at most maxUnconfirmed.
	awaited int
	// republish: a delivery went unacknowledged, so the unconfirmed tasks
	// are published again, in order, before anything else.
	republish bool
	// Scratch buffers for one delivery, reused.
	payload, envelope []byte
}

// confirmBatch bounds the tasks a shard publishes before it waits for the
// history stream to acknowledge them. It stays within a gateway's dedup
// window (dedupWindow there), so that a channel's deliveries published
// again are all recognised as repeats.
const confirmBatch = 64

// maxUnconfirmed bounds the acknowledgements a shard awaits at once (a
// job may have many channels).
const maxUnconfirmed = 4096

// confirmTimeout bounds the wait for the history stream's
// acknowledgements; a cluster electing a stream leader answers nothing
// for a few seconds.
const confirmTimeout = 5 * time.Second

// errUnconfirmed says that the history stream did not acknowledge a
// delivery: it is published again, and what followed it.
var errUnconfirmed = errors.New("the history stream did not acknowledge a delivery")

// linkDown tells the failures that come from NATS, not from the job: they
// are retried without spending the job's attempts.
func linkDown(err error) bool {
	return errors.Is(err, errUnconfirmed) || errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, jetstream.ErrTooManyStalledMsgs)
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
		// After every task, however it ended: one set aside, or skipped
		// as another part of its job decided it, must not leave those
		// before it unconfirmed, their jobs unacked, while the shard
		// waits for more.
		if n := len(s.unconfirmed); n > 0 && (n >= confirmBatch || s.idle()) {
			s.confirmAll()
		}
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
	unacked := 0 // attempts failed for want of an acknowledgement
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
			s.unconfirmed = append(s.unconfirmed, t) // confirmed by run
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
			if errors.Is(err, errUnconfirmed) {
				unacked++
			}
			if !s.pause(r, p.backoff(1)) {
				p.leave(r)
				return
			}
			s.ensureHistory(unacked)
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
// Deliveries over NATS are confirmed before their jobs are acked: each is
// published as a JetStream message, which the gateways subscribed to its
// subject receive like any other and the history stream stores and
// acknowledges. A publish only hands bytes to the connection, and a
// flush proves only that the server the worker is connected to read
// them: one that dies then (or a history stream electing a new leader)
// loses them, and the job would be acked with nothing in the history for
// a gateway that was away to catch up from. An acknowledgement proves
// that the delivery is in the history. When one does not come, the
// unconfirmed tasks are published again, in order, before t: gateways
// drop the repeats.
func (s *shard) attempt(t *task) error {
	if !s.pool.confirms {
		return s.publish(t, true)
	}
	if s.republish {
		if err := s.republishAll(); err != nil {
			return err
		}
	}
	if err := s.publish(t, true); err != nil {
		s.unsettled()
		return err
	}
	return nil
}

// settle waits for the acknowledgements of every unconfirmed task
// published since the last failure, and of current's deliveries so far
// (current is being published; nil if none). When all come, those tasks
// are done; when one does not, or fails, nothing is, and everything
// unconfirmed is to be published again.
func (s *shard) settle(current *task) bool {
	w := ackWait{timeout: time.NewTimer(confirmTimeout), tick: time.NewTimer(time.Until(s.tendAt)), current: current}
	defer w.timeout.Stop()
	defer w.tick.Stop()
	n := 0
	for _, t := range s.unconfirmed {
		if t == current || !t.published {
			break
		}
		if !s.acknowledged(t.acks, &w) {
			s.unsettled()
			return false
		}
		n++
	}
	if current != nil {
		if !s.acknowledged(current.acks, &w) {
			s.unsettled()
			return false
		}
		// A future answers once: those are not waited for again.
		current.acks = current.acks[:0]
	}
	for i, t := range s.unconfirmed[:n] {
		t.acks = t.acks[:0]
		s.done(t)
		s.unconfirmed[i] = nil
	}
	s.unconfirmed = s.unconfirmed[n:]
	clear(s.inFlight)
	s.awaited = 0
	return true
}

// unsettled forgets every acknowledgement still awaited: the unconfirmed
// tasks are all published again.
func (s *shard) unsettled() {
	for _, t := range s.unconfirmed {
		t.acks, t.published = t.acks[:0], false
	}
	clear(s.inFlight)
	s.awaited = 0
	s.republish = true
}

// ackWait is one wait for acknowledgements: bounded by timeout, with the
// jobs' ack deadlines pushed back at every tick meanwhile (a history stream
// electing a leader answers nothing for seconds, as long as the ack wait).
type ackWait struct {
	timeout, tick *time.Timer
	current       *task
}

// acknowledged waits for every future, until the wait times out. A future
// answers once, so each is waited for once. Tasks arriving meanwhile are
// taken into the backlog, as during a pause, so that theirs are pushed
// back too.
func (s *shard) acknowledged(acks []jetstream.PubAckFuture, w *ackWait) bool {
	for _, f := range acks {
		ok, failed := f.Ok(), f.Err()
	wait:
		for {
			var in chan *task
			if len(s.backlog) < maxBacklog {
				in = s.in
			}
			select {
			case <-ok:
				break wait
			case <-failed:
				return false
			case <-w.timeout.C:
				return false
			case t := <-in:
				s.backlog = append(s.backlog, t)
				_ = t.run.msg.InProgress()
			case <-w.tick.C:
				s.tend(w.current)
				w.tick.Reset(keepAlive)
			}
		}
	}
	return true
}

// tend pushes back the ack deadlines of every job the shard holds: those
// awaiting acknowledgements, current, and the backlog.
func (s *shard) tend(current *task) {
	for _, list := range [][]*task{s.unconfirmed, s.backlog, {current}} {
		for _, t := range list {
			if t != nil && !t.run.settled.Load() {
				_ = t.run.msg.InProgress()
			}
		}
	}
	s.tendAt = time.Now().Add(keepAlive)
}

// confirmAll settles the unconfirmed tasks, publishing them again while
// acknowledgements fail to come, until it works or the pool stops; then
// they are left unacked, for JetStream to deliver again.
func (s *shard) confirmAll() {
	p := s.pool
	for attempt := 1; ; attempt++ {
		if !s.republish && s.settle(nil) {
			return
		}
		if len(s.unconfirmed) == 0 {
			s.republish = false
			return
		}
		if !s.pause(s.unconfirmed[0].run, p.backoff(attempt)) {
			for _, t := range s.unconfirmed {
				p.leave(t.run)
			}
			clear(s.unconfirmed)
			s.unconfirmed = s.unconfirmed[:0]
			s.republish = false
			return
		}
		s.ensureHistory(attempt)
		_ = s.republishAll()
	}
}

// ensureHistory makes the history stream again if it is gone, after the
// unacknowledged-th failure in a row for want of its acknowledgements:
// twice unacknowledged, the stream may be gone, not electing. Tried again
// now and then, in case the first try failed too. Both the shard's
// confirmation (confirmAll) and a job's own attempt (a second delivery on
// a channel waits for the first's acknowledgement) come here.
func (s *shard) ensureHistory(unacknowledged int) {
	p := s.pool
	if p.opts.EnsureHistory == nil || unacknowledged < 2 || unacknowledged%16 != 2 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), confirmTimeout)
	defer cancel()
	if err := p.opts.EnsureHistory(ctx); err != nil {
		p.retryLog.Warn().Err(err).Msg("the history stream acknowledges no delivery, and could not be ensured")
	}
}

// republishAll publishes the unconfirmed tasks again, in order.
func (s *shard) republishAll() error {
	// A copy: settling along the way takes tasks off the front.
	for _, u := range slices.Clone(s.unconfirmed) {
		if err := s.publish(u, false); err != nil {
			s.unsettled()
			return err
		}
	}
	s.republish = false
	return nil
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
	t.acks, t.published = t.acks[:0], false
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
				Repeat:          !first || r.deliveries > 1,
				ExcludeSocketID: ev.SocketID,
			})
			s.envelope = protocol.AppendTextFrame(s.envelope, s.payload)
			// Deliver copies (Publish into the connection's buffer), so
			// the scratch buffers are reused at once. On a retry the
			// channels delivered before are delivered again: the envelope
			// carries the job's sequence and the event's index, and
			// gateways drop what they wrote already.
			subject := route.Subject(r.job.AppID, ch)
			if err := s.deliver(t, subject, s.envelope); err != nil {
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
	t.published = true
	return nil
}

// deliver hands one delivery to Deliver, or, when deliveries are
// confirmed, publishes it to the history stream and keeps the future of
// its acknowledgement in t. A channel has one delivery awaiting its
// acknowledgement at a time: should it fail, the next one must not be
// stored ahead of it (a gateway catching up reads the history in its
// order, and drops what comes after a later position), so the next
// waits for the acknowledgements so far (see settle).
func (s *shard) deliver(t *task, subject string, envelope []byte) error {
	p := s.pool
	if !p.confirms {
		return p.opts.Deliver(subject, envelope)
	}
	if _, waiting := s.inFlight[subject]; (waiting || s.awaited >= maxUnconfirmed) && !s.settle(t) {
		return errUnconfirmed
	}
	// No retries inside nats.go: it would publish the buffer again later,
	// and the shard reuses it at once (PublishAsync copies it into the
	// connection's buffer, and keeps nothing else of it).
	f, err := p.acks.PublishAsync(subject, envelope, p.noRetries)
	if err != nil {
		return err
	}
	t.acks = append(t.acks, f)
	s.inFlight[subject] = struct{}{}
	s.awaited++
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
			s.tend(nil)
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
