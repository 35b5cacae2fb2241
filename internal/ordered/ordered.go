// Package ordered keeps one pinned JetStream consumer's messages in stream
// order on their way to a handler, despite what JetStream does after a
// fault: it sends a dead consumer's redeliveries rotated, and a delivery
// lost on the way (with a NATS node or link) comes back an ack wait later,
// after the messages that followed it.
//
// It knows nothing of what the messages hold: the job worker
// (internal/worker) and the webhook sender (internal/webhook) each feed a
// Lane from their consumer's callback and get the messages back, in order,
// from its Dispatch.
package ordered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RedeliveryQuiet is how long a lane holds redelivered messages after the
// last one came, when no first delivery comes to say that there are no
// more. JetStream sends its redeliveries in one burst, gaps of a pull
// request's round trip apart; and they are late already (an ack wait at
// least, a pin's lapse after a consumer died), so this adds little.
const RedeliveryQuiet = 250 * time.Millisecond

// GapProgress is how often, at most, a lane holding messages for a gap
// tells JetStream they are in progress; with a short ack wait, four times
// per ack wait, so that a report can come three quarters of an ack wait
// late (a busy machine's timers) before JetStream delivers the held
// messages again.
const GapProgress = time.Second

// Options configure a Lane.
type Options struct {
	// AckWait is the consumer's: a gap holds the lane for AckWait and a
	// second (see Lane.Receive).
	AckWait time.Duration
	// MaxAckPending is the consumer's: once the lane holds this many,
	// JetStream sends nothing more, so it stops waiting.
	MaxAckPending int
	// Dispatch takes the messages, in stream order, one at a time; it
	// may block (the lane waits). It is called from Receive's goroutine
	// or from the lane's timer, never two at once.
	Dispatch func(msg jetstream.Msg, meta *jetstream.MsgMetadata)
	// Superseded, when set, hears a held delivery replaced by a newer one
	// of the same message (never dispatched): the newer one is what
	// JetStream now waits an ack for.
	Superseded func(msg jetstream.Msg)
	// Gap, when set, hears each gap in the delivery sequence as it
	// opens, with the number of deliveries lost (to count and log it).
	// It is called with the lane's lock held: it must not call the lane.
	Gap func(lost uint64)
}

// Lane puts one consumer's messages in stream order. Receive must be
// called from one goroutine, the consumer's callback; Flush from any.
//
// JetStream sends a consumer's redeliveries before anything new, but not
// in stream order. While the pin names a consumer that no longer pulls
// (one that died, or stopped leaving a message unfinished), the messages
// it held fall due, and each time something wakes the consumer (their
// expiry, a message published, the next owner's pull request) nats-server
// 2.15 takes the first of its redelivery queue, finds no pull request it
// may serve it to, and appends it back at the end (consumer.go,
// loopAndGatherMsgs, when nextWaiting returns nil). The next owner then
// gets them rotated, [4 5 1 2 3]. So redeliveries are held back, sorted,
// and dispatched when a message delivered for the first time comes: every
// message delivered again is older than any not delivered yet, and
// JetStream sends nothing new while it has redeliveries queued, so by then
// all those queued are here. First deliveries, the usual case, go straight
// on.
type Lane struct {
	opts Options
	// gapWait is how long the lane holds its messages after a gap: the
	// lost deliveries were made before the gap was seen, so they are due
	// again within an ack wait, and JetStream sends redeliveries first.
	// Counting redeliveries instead would not do: when a node dies, acks
	// are lost too, and the messages they acked come back as well, sooner
	// than the lost one.
	gapWait time.Duration
	// progress is how often held messages are reported in progress while
	// a gap is open: GapProgress, or a quarter of the ack wait if less.
	progress time.Duration

	// holding is set, under mu, while any are held or being dispatched:
	// a first delivery takes mu only then.
	holding atomic.Bool
	mu      sync.Mutex
	held    []heldMsg // by stream sequence
	quiet   *time.Timer

	// A gap in the consumer's delivery sequence: deliveries JetStream
	// made to this consumer that never arrived. lastDelivery is Receive's
	// goroutine's; missing and gapUntil are under mu, gapOpen mirrors
	// missing > 0.
	lastDelivery uint64
	missing      uint64
	gapUntil     time.Time
	gapOpen      atomic.Bool
}

type heldMsg struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
}

// New returns a lane for one spell of consuming one consumer: a new spell
// (after a hand-over) takes a new lane, since the delivery sequence it
// watches for gaps starts again from wherever JetStream is.
func New(opts Options) *Lane {
	progress := GapProgress
	if q := opts.AckWait / 4; q > 0 && q < progress {
		progress = q
	}
	return &Lane{opts: opts, gapWait: opts.AckWait + time.Second, progress: progress}
}

// ErrNoMetadata is Receive's error for a message that is not a JetStream
// delivery: it is not dispatched, the caller decides its fate.
var ErrNoMetadata = errors.New("no JetStream metadata")

// Receive takes the consumer's next message, in the order JetStream sent
// it, and dispatches it (and what it held before it) or holds it back.
//
// Deliveries lost on the way leave a gap in the consumer's sequence
// (which counts redeliveries too). When a NATS node dies, one can be lost
// while the lane goes on: the message is redelivered an ack wait later,
// after the later ones went out. So the lane holds its messages from the
// gap until the lost ones are due again (gapWait), telling JetStream
// every progress period that they are in progress, then dispatches them in
// stream order.
func (l *Lane) Receive(msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoMetadata, err)
	}
	if d := meta.Sequence.Consumer; d > l.lastDelivery {
		if l.lastDelivery != 0 && d > l.lastDelivery+1 {
			l.openGap(d - l.lastDelivery - 1)
		}
		l.lastDelivery = d
	}
	if meta.NumDelivered > 1 || l.gapOpen.Load() {
		l.hold(msg, meta)
		return nil
	}
	if l.holding.Load() {
		// Only this goroutine holds messages back, so when holding is
		// clear nothing is held, nor being dispatched by the timer.
		l.Flush()
	}
	l.opts.Dispatch(msg, meta)
	return nil
}

// hold keeps a message back, in stream order: a redelivered one until a
// first delivery comes, or nothing more for RedeliveryQuiet, or the lane
// holds as many as JetStream lets be unacked (nothing more can come
// then); any message while a gap is open, until it closes.
func (l *Lane) hold(msg jetstream.Msg, meta *jetstream.MsgMetadata) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holding.Store(true)
	seq := meta.Sequence.Stream
	i := len(l.held)
	for i > 0 && l.held[i-1].meta.Sequence.Stream > seq {
		i--
	}
	if i > 0 && l.held[i-1].meta.Sequence.Stream == seq {
		// Delivered again while held: keep the newer delivery, the one
		// JetStream now waits an ack for.
		if f := l.opts.Superseded; f != nil {
			f(l.held[i-1].msg)
		}
		l.held[i-1] = heldMsg{msg, meta}
	} else {
		l.held = slices.Insert(l.held, i, heldMsg{msg, meta})
	}
	wait := RedeliveryQuiet
	if l.missing > 0 {
		// Held past the ack wait, the messages would be delivered again:
		// quietPassed tells JetStream they are in progress meanwhile.
		wait = min(time.Until(l.gapUntil), l.progress)
	}
	switch {
	case l.opts.MaxAckPending > 0 && len(l.held) >= l.opts.MaxAckPending:
		l.flushLocked()
	case l.quiet == nil:
		l.quiet = time.AfterFunc(wait, l.quietPassed)
	default:
		l.quiet.Reset(wait)
	}
}

// openGap notes lost deliveries: the lane holds its messages until
// gapWait has passed.
func (l *Lane) openGap(lost uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.missing += lost
	l.gapUntil = time.Now().Add(l.gapWait)
	l.gapOpen.Store(true)
	l.holding.Store(true)
	if f := l.opts.Gap; f != nil {
		f(lost)
	}
}

// quietPassed is the hold timer's: it dispatches what the lane holds,
// unless a gap is still open and within gapWait.
func (l *Lane) quietPassed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.missing > 0 {
		if d := time.Until(l.gapUntil); d > 0 {
			for _, h := range l.held {
				_ = h.msg.InProgress()
			}
			l.quiet.Reset(min(d, l.progress))
			return
		}
	}
	l.flushLocked()
}

// Flush dispatches what the lane holds, in stream order, at once: for a
// lane whose consumer stopped (nothing more comes, no need to wait out
// the quiet), and for Receive before a first delivery. It closes a gap:
// whatever has not come by now is left to come when it comes.
func (l *Lane) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

// flushLocked is Flush with mu held: kept meanwhile, so that a first
// delivery waits behind them.
func (l *Lane) flushLocked() {
	for _, h := range l.held {
		l.opts.Dispatch(h.msg, h.meta)
	}
	l.held = nil
	l.missing = 0
	l.gapOpen.Store(false)
	l.holding.Store(false)
}

// Held is how many messages the lane holds back now.
func (l *Lane) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// SettledOnServer reports whether JetStream has no message of cons
// delivered and not acked, once the last pull request made before drained
// (when the consumer stopped pulling) has expired, pullExpiry later. Only
// then may the consumer be unpinned for the next owner.
//
// What the handler saw is not enough: a pull request still open when the
// consumer drained may be served after the subscription is gone, and the
// messages JetStream sent for it are lost on the way, yet counted as
// delivered. Unpinned at once, the next owner got the later messages
// first; the lost ones came back an ack wait later (found by the job
// worker's node-kill test: gateways dropped them as repeats). Kept
// pinned, the consumer goes to its next owner PinnedTTL after the last
// pull, when those are due again and JetStream sends them before anything
// new.
//
// Acks are published, not awaited: settle, if positive, is how long it
// waits for the acks already sent to reach JetStream; with 0 it asks once.
func SettledOnServer(ctx context.Context, cons jetstream.Consumer, drained time.Time, pullExpiry, settle time.Duration) bool {
	if d := time.Until(drained.Add(pullExpiry)); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return false
		}
	}
	until := time.Now().Add(settle)
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			// Unknown: keeping the pin costs a delay, unpinning may cost
			// a message.
			return false
		}
		if info.NumAckPending == 0 {
			return true
		}
		if !time.Now().Before(until) {
			return false
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return false
		}
	}
}
