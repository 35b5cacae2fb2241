package webhook

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/ordered"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

// drainTimeout bounds the wait for a lane's consumer to stop pulling.
const drainTimeout = 5 * time.Second

// Retry backoff: exponential from retryBase, capped at retryCap, with
// jitter so that the lanes retrying one receiver that came back do not
// all knock at once.
const (
	retryBase = 100 * time.Millisecond
	retryCap  = 30 * time.Second
)

// lane is one spell of this sender consuming one lane. Its records are
// handled by one goroutine (loop), which owns every field below the
// line; requests run on goroutines of their own and report to it.
type lane struct {
	s       *Sender
	k       int
	cons    jetstream.Consumer
	cc      jetstream.ConsumeContext
	ackWait time.Duration
	// order puts the records in stream order after faults (a dead
	// sender's redeliveries come rotated, a delivery lost with a NATS
	// node comes back an ack wait late) before they reach in.
	order   *ordered.Lane
	in      chan delivery
	results chan result
	// drain is closed once the consumer stopped pulling: the loop then
	// finishes what it holds, within the hand-over budget.
	drain chan struct{}
	// done is closed when the loop has ended and its requests with it.
	done chan struct{}
	// ctx is the requests': cancelled when the loop ends.
	ctx    context.Context
	cancel context.CancelFunc
	reqs   sync.WaitGroup
	// left is how many records the loop ended with unacked (read after
	// done).
	left int

	held      map[uint64]*record // by stream sequence: every record in hand
	channels  map[string]*channelQueue
	receivers map[receiverKey]*receiver
	timers    timerHeap
	draining  bool
	abandoned bool
	ackFailed int
}

// delivery is one record's delivery, as the lane's order hands it on.
type delivery struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
}

// record is one stream record in hand, until it is acked.
type record struct {
	msg    jetstream.Msg
	seq    uint64
	app    *config.App
	rec    Record
	key    string // app and channel
	family int8
	// due is when it may leave its channel's queue: after the batch
	// window if it has a revision (for an earlier one to come), after
	// the delay if it is a vacated or removed.
	due     time.Time
	touched time.Time // received, or last told InProgress
	// waiting counts the receivers that have yet to deliver it or give
	// it up.
	waiting int
}

// channelQueue holds one channel's records that have not gone to their
// receivers yet, in the order they go: nothing overtakes its head.
type channelQueue struct {
	recs  []*record
	sched time.Time // when a release is set for, zero if none
}

type receiverKey struct {
	app  string
	hook int // the index in the app's Webhooks
}

// receiver is one webhook of one app: a FIFO, with at most one request
// in flight, so that a receiver that fails holds back only its own.
type receiver struct {
	app      *config.App
	hook     *config.Webhook
	url      string // as shown: no query or credentials
	queue    []entry
	inflight *batch
	armed    time.Time // when a batch window is set to close
}

type entry struct {
	r  *record
	at time.Time // when it joined the queue
}

// batch is one request: its records and signed body, sent again as they
// are until a 2xx or RetryFor.
type batch struct {
	recs      []*record
	body      []byte
	signature string
	first     time.Time
	attempts  int
}

type result struct {
	rc     *receiver
	b      *batch
	status int
	err    error
}

// Families of revisions: a record's Rev is the revision of the
// shared-state key whose compare-and-set made the transition, and
// revisions are comparable within one bucket only (the counts bucket for
// occupancy and counts, the presence bucket for members).
const (
	familyNone int8 = iota
	familyCounts
	familyPresence
)

func familyOf(name string) int8 {
	switch name {
	case protocol.WebhookChannelOccupied, protocol.WebhookChannelVacated, protocol.WebhookSubscriptionCount:
		return familyCounts
	case protocol.WebhookMemberAdded, protocol.WebhookMemberRemoved:
		return familyPresence
	}
	return familyNone
}

// undoable: held for the delay, dropped if undone meanwhile.
func undoable(name string) bool {
	return name == protocol.WebhookChannelVacated || name == protocol.WebhookMemberRemoved
}

// undoes reports whether back undoes gone: the channel occupied again
// after it was vacated, or the same user added again after removed.
func undoes(back, gone *protocol.WebhookEvent) bool {
	switch gone.Name {
	case protocol.WebhookChannelVacated:
		return back.Name == protocol.WebhookChannelOccupied
	case protocol.WebhookMemberRemoved:
		return back.Name == protocol.WebhookMemberAdded && back.UserID == gone.UserID
	}
	return false
}

func (s *Sender) startLane(ctx context.Context, k int, cons jetstream.Consumer) (*lane, error) {
	ackWait := AckWait
	if info := cons.CachedInfo(); info != nil && info.Config.AckWait > 0 {
		ackWait = info.Config.AckWait
	}
	receivers := 0
	for _, app := range s.opts.Apps.All() {
		receivers += len(app.Webhooks)
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &lane{
		s: s, k: k, cons: cons, ackWait: ackWait, ctx: lctx, cancel: cancel,
		in: make(chan delivery, 256),
		// One request in flight per receiver at most: a result never
		// waits for the loop.
		results: make(chan result, receivers+1),
		drain:   make(chan struct{}), done: make(chan struct{}),
		held: map[uint64]*record{}, channels: map[string]*channelQueue{}, receivers: map[receiverKey]*receiver{},
	}
	maxAckPending := 10000 // as EnsureConsumers makes it
	if info := cons.CachedInfo(); info != nil && info.Config.MaxAckPending > 0 {
		maxAckPending = info.Config.MaxAckPending
	}
	// The same ordering as the job worker's partitions (internal/ordered).
	// Before, the lane sorted a channel's redelivered records only within
	// the batch window: a dead sender's records, which come back rotated,
	// went out of order whenever the rest of the rotation came later than
	// that (TestWebhooksWorkerKilledMidDelivery, on a loaded machine), and
	// at once with no window; and a record lost with a NATS node was
	// overtaken by its channel's later ones.
	l.order = ordered.New(ordered.Options{
		AckWait: ackWait, MaxAckPending: maxAckPending,
		Dispatch: func(msg jetstream.Msg, meta *jetstream.MsgMetadata) {
			select {
			case l.in <- delivery{msg, meta}:
			case <-l.done: // unacked: delivered again
			}
		},
		Gap: func(lost uint64) {
			s.opts.Log.Warn().Int("lane", k).Uint64("lost", lost).
				Msg("webhook record deliveries lost on the way (a NATS node or link went away): holding the lane's records until they are delivered again")
		},
	})
	go l.loop()
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if err := l.order.Receive(msg); err != nil {
			s.opts.Log.Warn().Err(err).Msg("webhook record without JetStream metadata: dropped")
			_ = msg.Term()
		}
	},
		jetstream.PullPriorityGroup(PriorityGroup),
		jetstream.PullMaxMessages(256),
		// Pulling again often keeps the pin while alive (see PullExpiry).
		jetstream.PullExpiry(PullExpiry),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, nats.ErrConnectionClosed) {
				s.opts.Log.Debug().Err(err).Int("lane", k).Msg("webhook consumer")
			}
		}))
	if err != nil {
		close(l.drain)
		<-l.done
		return nil, err
	}
	l.cc = cc
	return l, nil
}

// handOver hands the lane back: it stops pulling, lets the loop finish
// what it holds within the hand-over budget, and unpins the lane if
// nothing of it is left unacked, so that the next owner starts at once.
//
// Otherwise the pin stays, and lapses PinnedTTL after the last pull: what
// is left is due again AckWait after it was last told InProgress (no
// later than the pull stopped, which was at most PullExpiry after the
// last pull request, and AckWait < PinnedTTL-PullExpiry), so the next
// owner gets it first, before the lane's later records. Nak'ing it instead
// would not do: while the pin is held by a sender that no longer pulls,
// JetStream rotates its redelivery queue each time it finds no one to
// deliver to, and the order is lost (see worker.lanes.release).
func (l *lane) handOver() {
	s := l.s
	l.cc.Drain()
	select {
	case <-l.cc.Closed():
	case <-time.After(drainTimeout):
		l.cc.Stop()
	}
	drained := time.Now()
	// Nothing more comes: no need to wait out the quiet.
	l.order.Flush()
	close(l.drain)
	<-l.done
	log := s.opts.Log.With().Int("lane", l.k).Logger()
	if l.left > 0 || (s.opts.Conn != nil && !s.opts.Conn.IsConnected()) {
		log.Info().Int("unacked", l.left).Msg("webhook lane handed over with records unfinished: the next owner gets them once they are due again")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout+PullExpiry)
	defer cancel()
	// The acks are published, not awaited: JetStream must have them all
	// before another sender takes the lane's later records. And the last
	// pull request must have expired: served after the subscription was
	// gone, its records would be lost on the way, counted delivered, and
	// come back an ack wait later, after the next owner sent the lane's
	// later ones (the job worker's hand-over hole, worker.lanes.release).
	pullExpiry := PullExpiry
	if s.opts.Alone {
		pullExpiry = 0
	}
	if !ordered.SettledOnServer(ctx, l.cons, drained, pullExpiry, drainTimeout) {
		log.Info().Msg("webhook lane handed over with records unacked: its pin lapses instead, after they are due again")
		return
	}
	if stream, err := s.opts.JetStream.Stream(ctx, StreamName); err == nil {
		_ = stream.UnpinConsumer(ctx, ConsumerName(l.k), PriorityGroup)
	}
	log.Debug().Msg("webhook lane handed over")
}

// handOverBudget is how long a lane being handed back may take to finish
// what it holds: a held vacated, a batch and one request. Within half the
// ack wait, so that what it leaves is due again well before the pin
// lapses.
func (s *Sender) handOverBudget(ackWait time.Duration) time.Duration {
	b := max(s.opts.Delay+2*s.opts.BatchWindow+s.opts.Timeout, 2*time.Second)
	return min(b, ackWait/2)
}

func (l *lane) loop() {
	defer close(l.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Records held longer than a third of the ack wait (a long delay, a
	// receiver being retried) are told InProgress, so that JetStream
	// does not deliver them again meanwhile.
	ticker := time.NewTicker(max(l.ackWait/6, 10*time.Millisecond))
	defer ticker.Stop()
	drain := l.drain
	for {
		select {
		case d := <-l.in:
			l.receive(d.msg, d.meta, time.Now())
		case res := <-l.results:
			l.finished(res, time.Now())
		case <-timer.C:
			l.fire(time.Now())
		case <-ticker.C:
			// Not while draining: what is left must be due again before
			// the pin lapses (see handOver).
			if !l.draining {
				l.touch(time.Now())
			}
		case <-drain:
			drain = nil
			l.draining = true
			l.at(time.Now().Add(l.s.handOverBudget(l.ackWait)), func(time.Time) { l.abandoned = true })
		}
		if l.abandoned || (l.draining && len(l.held) == 0 && len(l.in) == 0) {
			break
		}
		if len(l.timers) > 0 {
			timer.Reset(time.Until(l.timers[0].at))
		} else {
			timer.Stop()
		}
	}
	l.cancel()
	l.left = len(l.held) + len(l.in) + l.order.Held() + l.ackFailed
	l.reqs.Wait()
}

// receive takes a record from the stream, in stream order.
func (l *lane) receive(msg jetstream.Msg, meta *jetstream.MsgMetadata, now time.Time) {
	log := l.s.opts.Log
	seq := meta.Sequence.Stream
	if r, ok := l.held[seq]; ok {
		// Delivered again while still in hand (an InProgress that did
		// not reach JetStream in time): keep the one in hand, acked with
		// the newest delivery.
		r.msg, r.touched = msg, now
		return
	}
	appID := strings.TrimPrefix(msg.Subject(), wire.HooksPrefix)
	if i := strings.LastIndexByte(appID, '.'); i >= 0 {
		appID = appID[:i]
	}
	app, ok := l.s.opts.Apps.ByID(appID)
	if !ok {
		// An app removed from the configuration since: nobody to send it
		// to.
		log.Warn().Str("subject", msg.Subject()).Msg("webhook record of an unknown app: dropped")
		l.ackMsg(msg)
		return
	}
	var rec Record
	if err := json.Unmarshal(msg.Data(), &rec); err != nil || !protocol.IsWebhookName(rec.Event.Name) || rec.Event.Channel == "" {
		log.Warn().Err(err).Str("subject", msg.Subject()).Uint64("seq", seq).Msg("invalid webhook record: dropped")
		_ = msg.Term()
		return
	}
	r := &record{
		msg: msg, seq: seq, app: app, rec: rec, key: app.ID + "\x00" + rec.Event.Channel,
		family: familyOf(rec.Event.Name), touched: now,
	}
	l.held[seq] = r
	l.enqueue(r, now)
}

// enqueue puts a record in its channel's queue, in stream order, then
// sorted by revision among the records of its family still there, and
// drops it together with the record it undoes or that undoes it.
func (l *lane) enqueue(r *record, now time.Time) {
	t := &l.s.opts.Timing
	r.due = now
	if r.rec.Rev > 0 && t.BatchWindow > 0 {
		// Another gateway's earlier transition may be published just
		// after this one. (Records delivered again reach the lane in
		// stream order already: see startLane.)
		r.due = now.Add(t.BatchWindow)
	}
	if undoable(r.rec.Event.Name) && t.Delay > 0 {
		// From the transition, as Pusher measures; a record time ahead
		// of this clock holds no longer than the delay from now.
		from := time.UnixMilli(r.rec.TimeMS)
		if from.After(now) {
			from = now
		}
		if hold := from.Add(t.Delay); hold.After(r.due) {
			r.due = hold
		}
	}
	q := l.channels[r.key]
	if q == nil {
		q = &channelQueue{}
		l.channels[r.key] = q
	}
	pos := len(q.recs)
	for pos > 0 && q.recs[pos-1].seq > r.seq {
		pos--
	}
	if r.family != familyNone && r.rec.Rev > 0 {
		for i, o := range q.recs[:pos] {
			if o.family == r.family && o.rec.Rev > r.rec.Rev {
				pos = i
				break
			}
		}
	}
	q.recs = slices.Insert(q.recs, pos, r)
	l.cancelUndone(q, pos)
	l.settleQueue(r.key, q)
}

// cancelUndone drops the record at pos together with its counterpart, if
// one is in the queue on the right side of it: a vacated followed by an
// occupied, a member_removed followed by the same user's member_added
// (Pusher drops both). Nothing is sent for either.
func (l *lane) cancelUndone(q *channelQueue, pos int) {
	r := &q.recs[pos].rec.Event
	same := func(o *protocol.WebhookEvent) bool { return o.Name == r.Name && o.UserID == r.UserID }
	if undoable(r.Name) {
		for j := pos + 1; j < len(q.recs); j++ {
			o := &q.recs[j].rec.Event
			if undoes(o, r) {
				l.cancelPair(q, pos, j)
				return
			}
			if same(o) {
				return
			}
		}
		return
	}
	for j := pos - 1; j >= 0; j-- {
		o := &q.recs[j].rec.Event
		if undoes(r, o) {
			l.cancelPair(q, j, pos)
			return
		}
		if same(o) {
			return
		}
	}
}

func (l *lane) cancelPair(q *channelQueue, i, j int) {
	gone, back := q.recs[i], q.recs[j]
	l.s.opts.Log.Debug().Str("app", gone.app.ID).Str("channel", gone.rec.Event.Channel).Str("event", gone.rec.Event.Name).
		Msg("webhook undone within the delay: neither is sent")
	q.recs = slices.Delete(q.recs, j, j+1)
	q.recs = slices.Delete(q.recs, i, i+1)
	l.ack(gone)
	l.ack(back)
}

// settleQueue forgets an empty queue, or sets a release for its head.
func (l *lane) settleQueue(key string, q *channelQueue) {
	if len(q.recs) == 0 {
		delete(l.channels, key)
		return
	}
	due := q.recs[0].due
	if q.sched.Equal(due) {
		return
	}
	q.sched = due
	l.at(due, func(now time.Time) {
		if q.sched.Equal(due) {
			q.sched = time.Time{}
		}
		l.release(key, now)
	})
}

// release sends a channel's records that are due, from its head.
func (l *lane) release(key string, now time.Time) {
	q := l.channels[key]
	if q == nil {
		return
	}
	for len(q.recs) > 0 && !q.recs[0].due.After(now) {
		r := q.recs[0]
		q.recs[0] = nil
		q.recs = q.recs[1:]
		l.dispatch(r, now)
	}
	l.settleQueue(key, q)
}

// dispatch hands a record to every receiver of its app that wants it.
func (l *lane) dispatch(r *record, now time.Time) {
	for i := range r.app.Webhooks {
		hook := &r.app.Webhooks[i]
		if !hook.Wants(r.rec.Event.Name, r.rec.Event.Channel) {
			continue
		}
		k := receiverKey{r.app.ID, i}
		rc := l.receivers[k]
		if rc == nil {
			rc = &receiver{app: r.app, hook: hook, url: shownURL(hook.URL)}
			l.receivers[k] = rc
		}
		rc.queue = append(rc.queue, entry{r, now})
		r.waiting++
		l.kick(rc, now)
	}
	if r.waiting == 0 {
		l.ack(r)
	}
}

// kick sends a receiver's next batch if it is idle and the batch is
// full or its window has closed, or sets a timer for the window.
func (l *lane) kick(rc *receiver, now time.Time) {
	if rc.inflight != nil || len(rc.queue) == 0 {
		return
	}
	t := &l.s.opts.Timing
	closes := rc.queue[0].at.Add(t.BatchWindow)
	if len(rc.queue) >= t.BatchMax || !now.Before(closes) {
		l.send(rc, now)
		return
	}
	if !rc.armed.Equal(closes) {
		rc.armed = closes
		l.at(closes, func(now time.Time) { l.kick(rc, now) })
	}
}

// send makes a batch of a receiver's first records, at most BatchMax.
func (l *lane) send(rc *receiver, now time.Time) {
	n := min(len(rc.queue), l.s.opts.BatchMax)
	b := &batch{recs: make([]*record, n), first: now}
	events := make([]protocol.WebhookEvent, n)
	for i, e := range rc.queue[:n] {
		b.recs[i], events[i] = e.r, e.r.rec.Event
	}
	clear(rc.queue[:n])
	if rc.queue = rc.queue[n:]; len(rc.queue) == 0 {
		rc.queue = nil
	}
	b.body = protocol.AppendWebhookBody(nil, now.UnixMilli(), events)
	b.signature = sign(rc.app, b.body)
	rc.inflight = b
	l.attempt(rc, b)
}

func (l *lane) attempt(rc *receiver, b *batch) {
	b.attempts++
	l.reqs.Add(1)
	go func() {
		defer l.reqs.Done()
		status, err := l.s.post(l.ctx, rc.app, rc.hook, b.body, b.signature)
		l.results <- result{rc: rc, b: b, status: status, err: err}
	}()
}

// finished takes a request's outcome: done on a 2xx; otherwise tried
// again with backoff, until RetryFor from the first attempt, then
// dropped.
func (l *lane) finished(res result, now time.Time) {
	s, rc, b := l.s, res.rc, res.b
	c := s.counters[rc.app.ID]
	if res.err == nil {
		s.metrics.sent.Inc()
		c.sent.Add(1)
		for _, r := range b.recs {
			s.metrics.latency.Observe(max(now.Sub(time.UnixMilli(r.rec.TimeMS)), 0).Seconds())
		}
		s.observe(rc.app.ID, consoleEntry(b, now, fmt.Sprintf("sent to %s: %d (%s)", rc.url, res.status, plural(len(b.recs), "event"))))
		l.finish(rc, b, now)
		return
	}
	s.metrics.failed.Inc()
	c.failed.Add(1)
	if now.Sub(b.first) >= s.opts.RetryFor {
		s.metrics.dropped.Inc()
		c.dropped.Add(1)
		s.dropLog.Warn().Err(res.err).Str("app", rc.app.ID).Str("url", rc.url).Int("events", len(b.recs)).Int("attempts", b.attempts).Dur("retried_for", now.Sub(b.first)).
			Msg("webhook dropped: its receiver kept failing for RESOUND_WEBHOOK_RETRY_FOR")
		s.observe(rc.app.ID, consoleEntry(b, now, fmt.Sprintf("dropped after %d attempts over %s: %s %v", b.attempts, now.Sub(b.first).Round(time.Millisecond), rc.url, res.err)))
		l.finish(rc, b, now)
		return
	}
	wait := backoff(b.attempts)
	at := now.Add(wait)
	if last := b.first.Add(s.opts.RetryFor); at.After(last) {
		at = last
	}
	s.failLog.Warn().Err(res.err).Str("app", rc.app.ID).Str("url", rc.url).Int("attempt", b.attempts).Dur("retry_in", at.Sub(now)).Msg("webhook failed; retrying with backoff")
	s.observe(rc.app.ID, consoleEntry(b, now, fmt.Sprintf("failed: %s %v (attempt %d; retrying in %s)", rc.url, res.err, b.attempts, at.Sub(now).Round(time.Millisecond))))
	l.at(at, func(time.Time) {
		s.metrics.retried.Inc()
		l.attempt(rc, b)
	})
}

// finish settles a batch delivered or given up, and goes on with the
// receiver's queue.
func (l *lane) finish(rc *receiver, b *batch, now time.Time) {
	rc.inflight = nil
	for _, r := range b.recs {
		if r.waiting--; r.waiting == 0 {
			l.ack(r)
		}
	}
	l.kick(rc, now)
}

func (l *lane) ack(r *record) {
	delete(l.held, r.seq)
	l.ackMsg(r.msg)
}

func (l *lane) ackMsg(msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		// Delivered again once its ack wait passes: at least once.
		l.ackFailed++
		l.s.opts.Log.Debug().Err(err).Msg("acking a webhook record")
	}
}

// touch tells JetStream that records held a while are still in hand.
// Once any needs it, all of them are told, in stream order: JetStream
// delivers again what it was not told in time in the order their ack
// waits run out, so those must run out in stream order, for a lane
// handed over with records left to reach its next owner in order.
func (l *lane) touch(now time.Time) {
	stale := false
	for _, r := range l.held {
		if now.Sub(r.touched) >= l.ackWait/3 {
			stale = true
			break
		}
	}
	if !stale {
		return
	}
	seqs := slices.Sorted(maps.Keys(l.held))
	for _, seq := range seqs {
		r := l.held[seq]
		_ = r.msg.InProgress()
		r.touched = now
	}
}

// backoff is the wait before attempt n+1: exponential, capped, the
// upper half jittered.
func backoff(n int) time.Duration {
	d := retryCap
	if n < 20 {
		d = min(retryBase<<(n-1), retryCap)
	}
	return d/2 + rand.N(d/2+1)
}

// consoleEntry is a request's line in the debug console.
func consoleEntry(b *batch, now time.Time, detail string) wire.ConsoleEntry {
	e := wire.ConsoleEntry{TimeMS: now.UnixMilli(), Detail: detail}
	var names []string
	channel := b.recs[0].rec.Event.Channel
	for _, r := range b.recs {
		if !slices.Contains(names, r.rec.Event.Name) {
			names = append(names, r.rec.Event.Name)
		}
		if r.rec.Event.Channel != channel {
			channel = ""
		}
	}
	e.Event, e.Channel = strings.Join(names, ","), channel
	if len(b.recs) == 1 {
		e.UserID = b.recs[0].rec.Event.UserID
	}
	return e
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// timerHeap holds the loop's timers, earliest first.
type timerHeap []timer

type timer struct {
	at   time.Time
	fire func(now time.Time)
}

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = timer{}
	*h = old[:len(old)-1]
	return t
}

func (l *lane) at(t time.Time, fire func(now time.Time)) { heap.Push(&l.timers, timer{t, fire}) }

// fire runs the timers that are due.
func (l *lane) fire(now time.Time) {
	for len(l.timers) > 0 && !l.timers[0].at.After(now) {
		heap.Pop(&l.timers).(timer).fire(now)
	}
}
