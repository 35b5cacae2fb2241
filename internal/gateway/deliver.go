package gateway

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/reactor"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/protocol"
)

// maxBatch bounds how many deliveries a dispatcher takes at once.
const maxBatch = 256

// delivery is one parsed delivery of a batch.
type delivery struct {
	frame       []byte
	exA, exB    uint64
	hasExclude  bool
	presenceRev uint64
	pos         uint64 // the job delivery's position; 0 for a gateway's own frames
	// removedUser is the user a member_removed announces gone: the
	// user's own connections, still subscribed, skip it.
	removedUser string
}

// channelBatch is a batch's deliveries for one channel, in arrival order.
type channelBatch struct {
	ch         *channel
	deliveries []delivery
	lastPos    uint64 // the greatest position among deliveries
}

// dispatcher is the state of one dispatcher goroutine.
type dispatcher struct {
	index   int
	msgs    []*nats.Msg
	groups  []channelBatch
	scratch writeScratch
	// The catch-up state (catchup.go): while holding, live deliveries
	// wait in held until the catch-up run holdGen has replayed what was
	// missed.
	holding bool
	holdGen uint64
	// strict: the batch being dispatched is replays or held deliveries,
	// which may repeat what was written already beyond the duplicate
	// window: drop every job delivery at or before the channel's last
	// position. (Live deliveries repeat within the window, or are marked
	// route.Delivery.Repeat when they may not, and a reorder elsewhere
	// must not turn into a loss here.)
	strict      bool
	held        []*nats.Msg
	heldBytes   int
	releasedGen uint64
	reconnects  uint64    // the NATS connection's reconnects, as last seen
	lastEmpty   time.Time // when the queue was last found empty
}

// runDispatcher writes the deliveries it receives to each channel's local
// subscribers. It takes every delivery already waiting (up to maxBatch) and
// writes each subscriber all of its frames from the batch in one writev:
// at low rates a batch is one frame and nothing waits, under load the
// frames coalesce and the syscall count drops. The frames arrive encoded;
// the same bytes go to every socket, with no copy and no allocation per
// subscriber.
// DeliverLocal hands a delivery envelope straight to this gateway, as if
// it had arrived over NATS on subject. The all-in-one process uses it: its
// workers and its only gateway share the process (the embedded server
// does not listen), so the NATS hop would only cost latency and CPU. It
// copies envelope. A channel without local subscribers drops it, as NATS
// would with no interest. A full dispatcher queue makes it wait, holding
// the worker back, where NATS would drop the message as a slow consumer.
func (s *Server) DeliverLocal(subject string, envelope []byte) error {
	if s.hub.lookup(subject) == nil {
		return nil
	}
	m := &nats.Msg{Subject: subject, Data: append([]byte(nil), envelope...)}
	select {
	case s.hub.dispatcherFor(subject) <- m:
		return nil
	case <-s.baseCtx.Done():
		return errors.New("gateway: stopped")
	}
}

func (s *Server) runDispatcher(index int, done <-chan struct{}) {
	in, replays := s.dispatch[index], s.replays[index]
	now := time.Now()
	d := &dispatcher{index: index, scratch: writeScratch{iovecs: make([]reactor.Iovec, 0, maxBatch)}, lastEmpty: now}
	for {
		if d.holding {
			// Catching up: replays and the release come first; live
			// deliveries are taken off the queue (so that NATS drops none
			// as a slow consumer) and held, in order.
			select {
			case r := <-replays:
				s.replayed(d, r)
			case m := <-in:
				s.hold(d, m)
			case <-done:
				return
			}
			continue
		}
		d.msgs = d.msgs[:0]
		select {
		case m := <-in:
			d.msgs = append(d.msgs, m)
		case r := <-replays:
			s.replayed(d, r)
			continue
		case <-done:
			return
		}
	fill:
		for len(d.msgs) < maxBatch {
			select {
			case m := <-in:
				d.msgs = append(d.msgs, m)
			default:
				break fill
			}
		}
		now := time.Now()
		if len(in) == 0 {
			d.lastEmpty = now
			s.lastEmpty[index].Store(now.UnixNano())
		}
		if s.gapBefore(d) {
			continue // the batch is held, behind what was missed
		}
		s.dispatchSafely(d)
	}
}

// dispatchSafely dispatches a batch, recovering a panic outside the writes
// to subscribers (which writeMember recovers one by one): the dispatcher
// goes on with the next batch.
func (s *Server) dispatchSafely(d *dispatcher) {
	defer func() {
		if r := recover(); r != nil {
			s.recovered(metrics.PanicDispatcher, r, nil)
		}
	}()
	s.dispatchBatch(d)
}

// repeated reports whether a delivery was written on its channel already:
// among the channel's recent positions, or, for a repeat or while
// catching up, at or before the channel's last position, counting those
// earlier in this batch (gi is the channel's group in it, or -1), which
// are not written yet.
func (s *Server) repeated(d *dispatcher, ch *channel, env route.Envelope, groups []channelBatch, gi int) bool {
	id := env.ID()
	if ch.seen(id) {
		return true
	}
	if id == 0 || !d.strict && !env.Repeat {
		return false
	}
	last := ch.lastPos.Load()
	if gi >= 0 {
		last = max(last, groups[gi].lastPos)
	}
	return id <= last
}

func (s *Server) dispatchBatch(d *dispatcher) {
	for i := range d.groups {
		d.groups[i].deliveries = d.groups[i].deliveries[:0]
	}
	groups := d.groups[:0]
	for _, m := range d.msgs {
		env, err := route.ParseDelivery(m.Data)
		if err != nil {
			s.log.Warn().Str("subject", m.Subject).Msg("dropping malformed delivery")
			continue
		}
		ch := s.hub.lookup(m.Subject)
		if ch == nil {
			continue // the last subscriber left while this was in flight
		}
		if m.Sub != nil && m.Sub != ch.nsub.Load() {
			// An older subscription to the subject, being removed after the
			// channel emptied and came back: the channel's own
			// subscription carries the same message.
			continue
		}
		gi := -1
		for i := range groups {
			if groups[i].ch == ch {
				gi = i
				break
			}
		}
		if s.repeated(d, ch, env, groups, gi) {
			s.prom.Duplicates.Inc()
			continue
		}
		dl := delivery{frame: env.Frame, pos: env.ID()}
		dl.exA, dl.exB, dl.hasExclude = parseSocketID(env.ExcludeSocketID)
		if env.Event == route.EventPresence {
			dl.presenceRev = env.Seq
			dl.removedUser, _ = protocol.RemovedMember(env.Frame)
		}
		if gi < 0 {
			if len(groups) < cap(groups) {
				groups = groups[:len(groups)+1]
				groups[len(groups)-1].ch = ch
				groups[len(groups)-1].deliveries = groups[len(groups)-1].deliveries[:0]
				groups[len(groups)-1].lastPos = 0
			} else {
				groups = append(groups, channelBatch{ch: ch})
			}
			gi = len(groups) - 1
		}
		groups[gi].lastPos = max(groups[gi].lastPos, dl.pos)
		groups[gi].deliveries = append(groups[gi].deliveries, dl)
	}
	d.groups = groups
	n := 0
	for gi := range groups {
		g := &groups[gi]
		written := s.fanOutChannel(g.ch, g.deliveries, &d.scratch)
		if st := s.stats[g.ch.app.ID]; st != nil && written > 0 {
			// One add per channel and batch, for the dashboard's rate:
			// nothing per socket.
			st.deliveries.Add(int64(written))
		}
		n += written
		g.ch = nil
	}
	s.prom.Deliveries.Add(float64(n))
}

// fanOutChannel writes a channel's deliveries under its read lock, taken
// and released in one place so that a panic can never leave it held.
func (s *Server) fanOutChannel(ch *channel, deliveries []delivery, ws *writeScratch) int {
	ch.mu.RLock()
	defer ch.mu.RUnlock()
	n := s.fanOut(ch.members, deliveries, ws)
	// Under the read lock: a joiner that takes the write lock after this
	// sees the position of every delivery written before it joined.
	last := ch.lastPos.Load()
	for i := range deliveries {
		last = max(last, deliveries[i].pos)
	}
	ch.lastPos.Store(last)
	return n
}

// parallelMin is the subscriber count from which a channel's writes are
// split between the fan-out writers: below it, handing work over costs
// more than the writes.
const parallelMin = 256

// fanOut writes a channel's deliveries to its members and returns the
// frames written. When a large channel has a single delivery waiting (the
// latency-bound case: nothing to coalesce), its members are cut into
// chunks written in parallel, one by the caller. Under load, when several
// deliveries coalesce, one goroutine writes them all: measured here, that
// keeps more throughput than splitting. It returns only once all are
// written, so the channel's next batch cannot overtake this one.
func (s *Server) fanOut(members []member, deliveries []delivery, ws *writeScratch) int {
	chunks := min(len(s.writers)+1, len(members)/(parallelMin/2))
	if len(members) < parallelMin || chunks < 2 || len(deliveries) > 1 {
		return writeMembers(members, deliveries, ws)
	}
	size := (len(members) + chunks - 1) / chunks
	var wg sync.WaitGroup
	var written atomic.Int64
	for i := 1; i < chunks; i++ {
		part := members[i*size : min((i+1)*size, len(members))]
		wg.Add(1)
		s.writers[i-1] <- fanoutTask{members: part, deliveries: deliveries, wg: &wg, written: &written}
	}
	n := writeMembers(members[:size], deliveries, ws)
	wg.Wait()
	return n + int(written.Load())
}

// writeScratch is one writer's reusable buffers.
type writeScratch struct {
	frames [][]byte
	iovecs []reactor.Iovec
}

// writeMembers writes each member the deliveries meant for it with one
// writev. A panic while writing to one member closes that member with 1011
// and the fan-out goes on with the next: recovering costs one deferred
// call per writeMembersFrom, not one per member.
func writeMembers(members []member, deliveries []delivery, ws *writeScratch) int {
	n := 0
	for i := 0; i < len(members); {
		written, next := writeMembersFrom(members, i, deliveries, ws)
		n += written
		i = next
	}
	return n
}

// writeMembersFrom writes to members[start:] and returns the frames
// written and where to go on: the end, or the member after one that
// panicked.
func writeMembersFrom(members []member, start int, deliveries []delivery, ws *writeScratch) (n, next int) {
	i := start
	defer func() {
		if r := recover(); r != nil {
			c := members[i].c
			c.srv().recovered(metrics.PanicDispatcher, r, c)
			next = i + 1
		}
	}()
	for ; i < len(members); i++ {
		m := members[i]
		c := m.c
		frames := ws.frames[:0]
		for _, dl := range deliveries {
			if dl.hasExclude && c.sidA == dl.exA && c.sidB == dl.exB {
				continue
			}
			if dl.presenceRev != 0 && dl.presenceRev <= m.presenceRev {
				continue // the member list this subscriber got already has it
			}
			if dl.removedUser != "" && m.presence != nil && m.presence.ID == dl.removedUser {
				// Its own user, swept while this gateway was taken for
				// dead: the connection is here, so the user never left.
				continue
			}
			if dl.pos != 0 && dl.pos <= m.skipThrough {
				continue // written to it from the history when it resumed
			}
			frames = append(frames, dl.frame)
		}
		if len(frames) > 0 {
			if faultInjection {
				for _, f := range frames {
					faultOnDeliver(f)
				}
			}
			c.WriteFrames(frames, &ws.iovecs)
			n += len(frames)
		}
		ws.frames = frames
	}
	return n, i
}

// fanoutTask is a chunk of a large channel for a fan-out writer.
type fanoutTask struct {
	members    []member
	deliveries []delivery
	wg         *sync.WaitGroup
	written    *atomic.Int64
}

// runWriter writes the chunks handed to it.
func runWriter(in <-chan fanoutTask, done <-chan struct{}) {
	ws := &writeScratch{iovecs: make([]reactor.Iovec, 0, maxBatch)}
	for {
		select {
		case t := <-in:
			t.written.Add(int64(writeMembers(t.members, t.deliveries, ws)))
			t.wg.Done() // writeMember recovers every panic, so this is reached
		case <-done:
			return
		}
	}
}

// parseSocketID reads "a.b" without allocating.
func parseSocketID(b []byte) (a, bb uint64, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	var v [2]uint64
	part, digits := 0, 0
	for _, c := range b {
		switch {
		case c == '.' && part == 0 && digits > 0:
			part, digits = 1, 0
		case c >= '0' && c <= '9':
			d := uint64(c - '0')
			if v[part] > (math.MaxUint64-d)/10 {
				return 0, 0, false // overflows; real ids have at most 10 digits
			}
			v[part] = v[part]*10 + d
			digits++
		default:
			return 0, 0, false
		}
	}
	if part != 1 || digits == 0 {
		return 0, 0, false
	}
	return v[0], v[1], true
}
