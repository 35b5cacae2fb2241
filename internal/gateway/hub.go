package gateway

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

const hubShards = 64

// dedupWindow is how many recent job sequences a channel remembers.
const dedupWindow = 64

// seen reports whether seq was delivered on the channel recently, and
// remembers it. Sequence 0 marks frames a gateway made itself, which are
// never repeated.
func (ch *channel) seen(seq uint64) bool {
	if seq == 0 {
		return false
	}
	for _, s := range ch.recent {
		if s == seq {
			return true
		}
	}
	ch.recent[ch.recentPos] = seq
	ch.recentPos = (ch.recentPos + 1) % dedupWindow
	return false
}

// hub is the gateway's index of channels with local subscribers. A channel
// exists here exactly while some local connection is subscribed or about
// to be, and only then does the gateway hold a NATS subscription to its
// delivery subject.
//
// The hub never calls NATS under a lock: the first subscriber's work makes
// the NATS subscription outside the shard lock, while later subscribers
// wait for it on the channel's ready, so a slow NATS never stalls the
// dispatchers, which look channels up under the same locks.
type hub struct {
	nc           *nats.Conn
	dispatch     []chan *nats.Msg
	seed         maphash.Seed
	flushTimeout time.Duration
	// local: deliveries are only ever handed over in process (all-in-one),
	// so channels need no NATS subscription.
	local bool
	// mark, when set, is the history stream's last sequence as last read
	// (within a second): catch-up replays a channel nothing stored before
	// it was made here.
	mark   func() uint64
	shards [hubShards]hubShard
	// idle counts the channels with no subscriber left, each holding its
	// NATS subscription for channelLinger. Past maxIdleChannels,
	// crowded wakes the sweeper at once: a client subscribing to fresh
	// names and leaving them cannot make the gateway hold subscriptions
	// faster than it drops them.
	idle    atomic.Int64
	crowded chan struct{}
}

// maxIdleChannels bounds the channels kept idle for channelLinger.
const maxIdleChannels = 10000

type hubShard struct {
	mu       sync.Mutex
	channels map[string]*channel // by delivery subject
	// idle lists the channels that fell idle since the last sweep looked,
	// each once (channel.listedIdle), some of them in use again since: the
	// sweep walks this, not every channel. Walking every channel each
	// second cost a gateway holding 12,000 of them 6.5 ms a second, idle,
	// and sixty such gateways at a million sockets most of a core.
	idle []*channel
}

// channel is one app's channel on this gateway.
//
// Lock order: hubShard.mu, then channel.mu, then conn.mu.
type channel struct {
	app     *config.App
	name    string
	subject string
	shard   *hubShard
	refs    int // subscribers plus pending subscriptions; guarded by shard.mu
	// idleAt is when refs fell to zero (unix nanos; guarded by shard.mu).
	// An idle channel keeps its NATS subscription for channelLinger, so
	// that a channel whose only subscriber comes and goes (a page
	// reloaded, connections churning) does not subscribe and unsubscribe
	// in NATS, and wait on a flush, each time.
	idleAt int64
	// listedIdle: the channel is on its shard's idle list (guarded by
	// shard.mu).
	listedIdle bool

	// ready is closed once the NATS subscription has reached the server,
	// or failed with err (written before ready is closed).
	ready chan struct{}
	err   error
	// nsub is the NATS subscription. A delivery that arrives through
	// another one — an older subscription to the same subject, still
	// being removed after the channel emptied and came back — is dropped.
	nsub atomic.Pointer[nats.Subscription]
	// createdMark is the history stream's last sequence, as last read,
	// when the channel was made here (written before ready is closed):
	// what was stored before it is older than the channel on this
	// gateway, and catch-up does not replay it.
	createdMark uint64
	// lastPos is the position of the last job delivery written to the
	// channel's subscribers (route.Envelope.ID). The dispatcher sets it
	// under the channel's read lock, so a joiner holding the write lock
	// sees every delivery written before it joins.
	lastPos atomic.Uint64
	// dropped is how many deliveries NATS dropped on nsub as a slow
	// consumer, as the channel's dispatcher last saw it.
	dropped int

	mu sync.RWMutex
	// members are the subscribers, in a slice so that fan-out walks memory
	// in order and can be split between writers; index finds a member's
	// position for O(1) removal.
	members []member
	index   map[*conn]int

	// recent holds the job sequences of the last deliveries, so that a job
	// a worker delivers twice (it died before acking, and JetStream
	// redelivered) reaches each subscriber once. Only the channel's
	// dispatcher goroutine touches it.
	recent    [dedupWindow]uint64
	recentPos int

	// For subscription_count: when the last count was sent (unix nanos),
	// and whether a deferred one is due.
	countSentAt  atomic.Int64
	countPending atomic.Bool
	countQueued  atomic.Bool // a count update is queued and not yet running
	// countHookOwed: a change of the total was held back by the pace, and
	// the deferred run records its subscription_count webhook.
	countHookOwed atomic.Bool
}

func newHub(nc *nats.Conn, dispatch []chan *nats.Msg, flushTimeout time.Duration) *hub {
	h := &hub{nc: nc, dispatch: dispatch, seed: maphash.MakeSeed(), flushTimeout: flushTimeout, crowded: make(chan struct{}, 1)}
	for i := range h.shards {
		h.shards[i].channels = make(map[string]*channel)
	}
	return h
}

func (h *hub) shardFor(subject string) *hubShard {
	return &h.shards[maphash.String(h.seed, subject)%hubShards]
}

// acquireReady takes a reference on a channel whose NATS subscription is
// already in place, or returns nil. It never waits on the network, so the
// pollers use it for the common case: a channel others are on already.
func (h *hub) acquireReady(app *config.App, name string) *channel {
	subject := route.Subject(app.ID, name)
	sh := h.shardFor(subject)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ch := sh.channels[subject]
	if ch == nil || !ch.isReady() {
		return nil
	}
	h.ref(ch)
	return ch
}

// ref takes a reference on ch, waking it if idle; its shard is locked.
func (h *hub) ref(ch *channel) {
	if ch.refs == 0 && ch.idleAt != 0 {
		ch.idleAt = 0
		h.idle.Add(-1)
	}
	ch.refs++
}

func (ch *channel) isReady() bool {
	select {
	case <-ch.ready:
		return ch.err == nil
	default:
		return false
	}
}

// acquire takes a reference on a channel, creating it and its NATS
// subscription if this is the first, and returns once the subscription
// has reached the server: an event published after that reaches this
// gateway. It waits on the network, so it runs on an async lane.
func (h *hub) acquire(ctx context.Context, app *config.App, name string) (*channel, error) {
	subject := route.Subject(app.ID, name)
	sh := h.shardFor(subject)
	sh.mu.Lock()
	if ch := sh.channels[subject]; ch != nil {
		h.ref(ch)
		sh.mu.Unlock()
		select {
		case <-ch.ready:
		case <-ctx.Done():
			h.release(ch)
			return nil, ctx.Err()
		}
		if ch.err != nil {
			h.release(ch)
			return nil, ch.err
		}
		return ch, nil
	}
	ch := &channel{app: app, name: name, subject: subject, shard: sh, refs: 1, ready: make(chan struct{}), index: make(map[*conn]int)}
	sh.channels[subject] = ch
	sh.mu.Unlock()

	var err error
	switch {
	case h.local:
	default:
		var sub *nats.Subscription
		sub, err = h.nc.ChanSubscribe(subject, h.dispatcherFor(subject))
		if err != nil {
			break
		}
		ch.nsub.Store(sub)
		if h.mark != nil {
			// Read before the flush: what was stored before it is
			// older than the subscription.
			ch.createdMark = h.mark()
		}
		err = h.nc.FlushTimeout(h.flushTimeout)
	}
	ch.err = err
	close(ch.ready)
	if err != nil {
		h.release(ch)
		return nil, err
	}
	return ch, nil
}

// channelLinger is how long a channel with no subscriber left keeps its
// NATS subscription before sweepIdle removes it.
const channelLinger = 3 * time.Second

// release drops a reference. The last one leaves the channel idle; a
// channel whose subscription failed is removed at once, so that the next
// subscriber tries afresh, which may wait on the network. A channel that
// was joined never failed, so releasing it is quick and the pollers do.
func (h *hub) release(ch *channel) {
	sh := ch.shard
	sh.mu.Lock()
	ch.refs--
	if ch.refs > 0 {
		sh.mu.Unlock()
		return
	}
	failed := ch.isDone() && ch.err != nil
	if !failed {
		ch.idleAt = time.Now().UnixNano()
		if !ch.listedIdle {
			ch.listedIdle = true
			sh.idle = append(sh.idle, ch)
		}
		sh.mu.Unlock()
		if h.idle.Add(1) > maxIdleChannels {
			select {
			case h.crowded <- struct{}{}:
			default:
			}
		}
		return
	}
	if sh.channels[ch.subject] == ch {
		delete(sh.channels, ch.subject)
	}
	sh.mu.Unlock()
	if sub := ch.nsub.Load(); sub != nil {
		_ = sub.Unsubscribe()
	}
}

func (ch *channel) isDone() bool {
	select {
	case <-ch.ready:
		return true
	default:
		return false
	}
}

// sweepIdle removes the channels that have been idle for linger, and their
// NATS subscriptions. It waits on the network, so it runs on a goroutine
// of its own.
func (h *hub) sweepIdle(linger time.Duration) {
	cutoff := time.Now().Add(-linger).UnixNano()
	var gone []*channel
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		kept := sh.idle[:0]
		for _, ch := range sh.idle {
			switch {
			case ch.refs > 0 || ch.idleAt == 0:
				ch.listedIdle = false // in use again
			case ch.idleAt <= cutoff:
				ch.listedIdle = false
				if sh.channels[ch.subject] == ch {
					delete(sh.channels, ch.subject)
				}
				gone = append(gone, ch)
				h.idle.Add(-1)
			default:
				kept = append(kept, ch)
			}
		}
		clear(sh.idle[len(kept):])
		sh.idle = kept
		if len(kept) == 0 && cap(kept) > 64 {
			sh.idle = nil // a burst of idle channels is over: give its list back
		}
		sh.mu.Unlock()
	}
	for _, ch := range gone {
		if sub := ch.nsub.Load(); sub != nil {
			_ = sub.Unsubscribe()
		}
	}
}

// join adds c to the channel's subscribers and, under the same lock, sends
// it subscription_succeeded: no delivery can slip in between, so the
// client never sees an event of the channel before it is subscribed.
func (ch *channel) join(c *conn, succeeded []byte, presence *protocol.PresenceMember, presenceRev uint64) {
	ch.mu.Lock()
	defer ch.mu.Unlock() // deferred: a panic recovered above must not leave it held
	ch.add(member{c: c, presence: presence, presenceRev: presenceRev})
	c.Write(succeeded)
}

// add puts m on the channel, or updates it; the caller holds ch.mu for
// writing.
func (ch *channel) add(m member) {
	if i, ok := ch.index[m.c]; ok {
		ch.members[i] = m
		return
	}
	ch.index[m.c] = len(ch.members)
	ch.members = append(ch.members, m)
}

// member is one subscriber of a channel and the presence revision of the
// member list it was sent (0 on other channels).
type member struct {
	c *conn
	// presence is the identity c joined a presence channel with; nil on
	// other channels.
	presence    *protocol.PresenceMember
	presenceRev uint64
	// skipThrough is the last job position a resumed subscriber was sent
	// from the history when it joined: later deliveries up to it are
	// already written to it.
	skipThrough uint64
}

// remove drops c; the caller holds ch.mu for writing.
func (ch *channel) remove(c *conn) {
	i, ok := ch.index[c]
	if !ok {
		return
	}
	last := len(ch.members) - 1
	ch.members[i] = ch.members[last]
	ch.index[ch.members[i].c] = i
	ch.members[last] = member{}
	ch.members = ch.members[:last]
	delete(ch.index, c)
}

// leave takes c off the channel's subscribers at once: no delivery is
// written to it after this returns. Its reference is released apart, on
// an async lane.
func (ch *channel) leave(c *conn) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.remove(c)
}

// clear drops every channel and its NATS subscription; the gateway is
// stopping.
func (h *hub) clear() {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for subject, ch := range sh.channels {
			if sub := ch.nsub.Load(); sub != nil {
				_ = sub.Unsubscribe()
			}
			delete(sh.channels, subject)
		}
		sh.idle = nil
		sh.mu.Unlock()
	}
}

// dispatcherFor is the one dispatcher queue every delivery on subject goes
// through, whether from NATS or handed over locally, so events on a
// channel are written in the order they arrive.
func (h *hub) dispatcherFor(subject string) chan *nats.Msg {
	return h.dispatch[h.dispatcherIndex(subject)]
}

func (h *hub) dispatcherIndex(subject string) int {
	return int(maphash.String(h.seed, subject) % uint64(len(h.dispatch)))
}

func (h *hub) lookup(subject string) *channel {
	sh := h.shardFor(subject)
	sh.mu.Lock()
	ch := sh.channels[subject]
	sh.mu.Unlock()
	return ch
}

// forApp calls f for every channel of an app with local subscribers.
func (h *hub) forApp(appID string, f func(*channel)) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		chans := make([]*channel, 0, len(sh.channels))
		for _, ch := range sh.channels {
			if ch.app.ID == appID {
				chans = append(chans, ch)
			}
		}
		sh.mu.Unlock()
		for _, ch := range chans {
			f(ch)
		}
	}
}

// channelCount is the number of channels with local subscribers, or
// subscriptions on their way; idle ones are not counted.
func (h *hub) channelCount() int {
	n := 0
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, ch := range sh.channels {
			if ch.refs > 0 {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}
