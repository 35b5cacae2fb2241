// Package worker turns queued broadcast jobs into deliveries: it validates
// each job, encodes each channel's Pusher frame once, and publishes it on
// the channel's delivery subject, where the gateways with subscribers to
// that channel pick it up.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/pkg/cluster"
	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/pkg/queue"
	"github.com/resoundhq/resound/pkg/route"
	"github.com/resoundhq/resound/protocol"
)

// AppExists tells whether an app id is configured. Jobs for other apps are
// rejected, so that a stray publish cannot reach anyone.
type AppExists func(appID string) bool

// drainTimeout bounds how long a stopping pool waits for in-flight jobs;
// what it does not finish is redelivered.
const drainTimeout = 5 * time.Second

// Options configure a Pool.
type Options struct {
	// Conn publishes deliveries. It must be the connection JetStream
	// acknowledgements go over, so that a job's deliveries reach the server
	// before its ack does (one TCP stream keeps them in order).
	Conn      *nats.Conn
	JetStream jetstream.JetStream
	Apps      AppExists
	Limits    protocol.Limits
	// Cache keeps the last event of every cache channel; nil disables
	// caching.
	Cache jetstream.KeyValue
	// Metrics receives the pool's counters; may be nil.
	Metrics *metrics.Worker
	// Stores, when set, holds the registry the workers share the
	// partitions through; without it this pool takes every partition.
	Stores *cluster.Stores
	// Partitions is the stream's partition count (queue.DefaultPartitions
	// if zero); every process must agree.
	Partitions int
	// Workers is how many goroutines encode and publish in parallel.
	Workers int
	// Deliver, when set, takes the deliveries instead of Conn.Publish:
	// the all-in-one process hands them straight to its gateway. It must
	// copy envelope before returning.
	Deliver func(subject string, envelope []byte) error
	// ReconnectHold bounds how long jobs are held after reconnecting to
	// NATS, for the gateways to resubscribe (DefaultReconnectHold if zero).
	// Keep it well inside the ack wait, or held jobs are redelivered.
	ReconnectHold time.Duration
	Log           zerolog.Logger
}

// Pool consumes the job stream.
type Pool struct {
	opts   Options
	id     string
	shards []chan *task
	// quit stops the shards; tasks still queued are never acked, so
	// JetStream delivers their jobs again.
	quit chan struct{}
	// holdUntil (unix nanos) holds jobs after a reconnect.
	holdUntil atomic.Int64
	stats     Stats
}

// Stats counts what the pool did; read them with Snapshot.
type Stats struct {
	Jobs       atomic.Uint64 // jobs completed and acked
	Rejected   atomic.Uint64 // invalid jobs, terminated
	Deliveries atomic.Uint64 // frames published (one per event and channel)
	// Pending is the consumer's backlog as of the last job fetched.
	Pending atomic.Uint64
}

// task is the part of one job that one shard handles: the channels whose
// hash falls on that shard, for every event of the job.
type task struct {
	job      *queue.Job
	seq      uint64
	stored   time.Time  // when JetStream stored the job
	channels [][]string // per event: this shard's channels
	pending  *atomic.Int32
	msg      jetstream.Msg
}

// New returns a pool; Run starts it.
func New(opts Options) *Pool {
	if opts.Workers < 1 {
		opts.Workers = 1
	}
	if opts.Deliver == nil {
		opts.Deliver = opts.Conn.Publish
	}
	if opts.ReconnectHold <= 0 {
		opts.ReconnectHold = DefaultReconnectHold
	}
	if opts.Partitions <= 0 {
		opts.Partitions = queue.DefaultPartitions
	}
	p := &Pool{opts: opts, id: nuid.Next(), shards: make([]chan *task, opts.Workers), quit: make(chan struct{})}
	for i := range p.shards {
		p.shards[i] = make(chan *task, 256)
	}
	return p
}

// Stats returns the pool's counters.
func (p *Pool) Stats() *Stats { return &p.stats }

// Run consumes jobs until ctx ends. The stream is cut into partitions, a
// channel always in the same one; the live workers share the partitions
// out by rendezvous hashing, and JetStream's pinned priority group
// delivers each partition to one worker at a time. Within a worker, a
// partition's jobs arrive in stream order on one goroutine and are split
// by channel over the shards; a channel always hashes to the same shard,
// and a shard works in order. So events on one channel are published in
// the order they were queued, however many workers run.
func (p *Pool) Run(ctx context.Context) error {
	consumers, err := queue.EnsureConsumers(ctx, p.opts.JetStream, p.opts.Partitions)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, ch := range p.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.runShard(ch)
		}()
	}
	// Deliveries are core NATS: a gateway only gets those published while
	// it is subscribed. After NATS comes back, the gateways resubscribe as
	// they reconnect; publishing before they have would lose the jobs for
	// their subscribers, acked all the same. So after a reconnect the pool
	// holds its jobs until every live gateway has answered that it is back,
	// or for reconnectHold at most.
	prev := p.opts.Conn.Opts.ReconnectedCB
	p.opts.Conn.SetReconnectHandler(func(nc *nats.Conn) {
		until := time.Now().Add(p.opts.ReconnectHold)
		p.holdUntil.Store(until.UnixNano())
		if p.opts.Stores != nil {
			go func() {
				wait, cancel := context.WithDeadline(ctx, until)
				defer cancel()
				if cluster.AwaitGateways(wait, nc, p.opts.Stores.LiveGateways) {
					// Only this reconnect's hold: a later one holds anew.
					p.holdUntil.CompareAndSwap(until.UnixNano(), 0)
				}
			}()
		}
		if prev != nil {
			prev(nc)
		}
	})
	lanes := &lanes{pool: p, consumers: consumers, owned: map[int]jetstream.ConsumeContext{}}
	if p.opts.Stores == nil {
		lanes.assign(map[string]bool{p.id: true})
	} else {
		reg := cluster.NewWorkerRegistry(p.opts.Stores, p.id, p.opts.Log, lanes.assign)
		wg.Add(1)
		go func() { defer wg.Done(); reg.Run(ctx) }()
	}
	<-ctx.Done()
	lanes.stopAll()
	close(p.quit)
	wg.Wait()
	return nil
}

// lanes tracks which partitions this worker consumes.
type lanes struct {
	pool      *Pool
	consumers []jetstream.Consumer
	mu        sync.Mutex
	owned     map[int]jetstream.ConsumeContext
	stopped   bool
}

// owner picks a partition's worker by rendezvous hashing: every worker
// computes the same answer from the same live set, and a worker joining or
// leaving moves only the partitions it wins or held.
//
// The FNV hash is finished with a mixer: the partition's bytes come last,
// and FNV-1a's last multiplications carry them only into the low bits, so
// raw FNV scores ranked the workers the same way for every partition, and
// one worker won them all.
func owner(k int, live map[string]bool) string {
	best, bestScore := "", uint64(0)
	for id := range live {
		h := fnv.New64a()
		h.Write([]byte(id))
		h.Write([]byte{'/', byte(k), byte(k >> 8)})
		if s := mix64(h.Sum64()); best == "" || s > bestScore || (s == bestScore && id < best) {
			best, bestScore = id, s
		}
	}
	return best
}

// mix64 is MurmurHash3's 64-bit finalizer: every input bit reaches every
// output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// assign consumes the partitions this worker owns in live, and hands back
// those it no longer owns: it drains them (in-flight jobs finish and are
// acked) and unpins them, so their new owner starts at once instead of
// waiting out the pin.
func (l *lanes) assign(live map[string]bool) {
	p := l.pool
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	for k, cons := range l.consumers {
		mine := owner(k, live) == p.id
		cc, have := l.owned[k]
		switch {
		case mine && !have:
			cc, err := cons.Consume(p.dispatch,
				jetstream.PullPriorityGroup(queue.PriorityGroup),
				jetstream.PullMaxMessages(512),
				jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
					if !errors.Is(err, nats.ErrConnectionClosed) {
						p.opts.Log.Debug().Err(err).Int("partition", k).Msg("job consumer")
					}
				}))
			if err != nil {
				p.opts.Log.Warn().Err(err).Int("partition", k).Msg("consuming partition")
				continue
			}
			l.owned[k] = cc
			p.opts.Log.Debug().Int("partition", k).Msg("partition taken")
		case !mine && have:
			delete(l.owned, k)
			go l.release(k, cc)
		}
	}
}

func (l *lanes) release(k int, cc jetstream.ConsumeContext) {
	cc.Drain()
	select {
	case <-cc.Closed():
	case <-time.After(drainTimeout):
		cc.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s, err := l.pool.opts.JetStream.Stream(ctx, queue.StreamName); err == nil {
		_ = s.UnpinConsumer(ctx, queue.ConsumerName(k), queue.PriorityGroup)
	}
	l.pool.opts.Log.Debug().Int("partition", k).Msg("partition handed over")
}

// stopAll drains every partition: messages already delivered to the handler
// finish; what is not acked is redelivered to another worker.
func (l *lanes) stopAll() {
	l.mu.Lock()
	l.stopped = true
	owned := l.owned
	l.owned = map[int]jetstream.ConsumeContext{}
	l.mu.Unlock()
	if !l.pool.opts.Conn.IsConnected() {
		// Nothing can be acked without NATS; what is in flight is
		// redelivered anyway, so there is nothing to wait for.
		for _, cc := range owned {
			cc.Stop()
		}
		return
	}
	for _, cc := range owned {
		cc.Drain()
	}
	deadline := time.After(drainTimeout)
	for _, cc := range owned {
		select {
		case <-cc.Closed():
		case <-deadline:
			cc.Stop()
		}
	}
}

// DefaultReconnectHold bounds how long a pool holds jobs after
// reconnecting to NATS, for the gateways to resubscribe. It is well inside
// the ack wait, so the held jobs are not redelivered meanwhile. Without a
// registry to say which gateways to wait for, the pool holds this long.
const DefaultReconnectHold = 3 * time.Second

func (p *Pool) dispatch(msg jetstream.Msg) {
	for {
		until := p.holdUntil.Load()
		if until == 0 {
			break
		}
		d := time.Until(time.Unix(0, until))
		if d <= 0 {
			break
		}
		time.Sleep(min(d, 10*time.Millisecond))
	}
	meta, err := msg.Metadata()
	if err != nil {
		p.reject(msg, 0, err)
		return
	}
	p.stats.Pending.Store(meta.NumPending)
	job := new(queue.Job)
	if err := json.Unmarshal(msg.Data(), job); err != nil {
		p.reject(msg, meta.Sequence.Stream, err)
		return
	}
	if err := job.Validate(p.opts.Limits); err != nil {
		p.reject(msg, meta.Sequence.Stream, err)
		return
	}
	if app, ok := queue.AppOfSubject(msg.Subject()); !ok || app != job.AppID {
		// Publish permissions are per subject; the body must not name
		// another app than the subject does.
		p.reject(msg, meta.Sequence.Stream, errors.New("app_id "+job.AppID+" does not match subject "+msg.Subject()))
		return
	}
	if !p.opts.Apps(job.AppID) {
		p.reject(msg, meta.Sequence.Stream, errors.New("unknown app_id "+job.AppID))
		return
	}
	n := len(p.shards)
	tasks := make([]*task, n)
	pending := new(atomic.Int32)
	for ei, ev := range job.Events {
		for _, ch := range ev.Channels {
			s := shardOf(job.AppID, ch, n)
			t := tasks[s]
			if t == nil {
				t = &task{job: job, seq: meta.Sequence.Stream, stored: meta.Timestamp, channels: make([][]string, len(job.Events)), pending: pending, msg: msg}
				tasks[s] = t
				pending.Add(1)
			}
			t.channels[ei] = append(t.channels[ei], ch)
		}
	}
	for s, t := range tasks {
		if t == nil {
			continue
		}
		select {
		case p.shards[s] <- t:
		case <-p.quit:
			return // not acked: redelivered
		}
	}
}

func (p *Pool) reject(msg jetstream.Msg, seq uint64, err error) {
	p.stats.Rejected.Add(1)
	if m := p.opts.Metrics; m != nil {
		m.Jobs.WithLabelValues("rejected").Inc()
	}
	p.opts.Log.Warn().Err(err).Uint64("seq", seq).Str("subject", msg.Subject()).Msg("invalid job terminated")
	_ = msg.Term()
}

func (p *Pool) runShard(in <-chan *task) {
	var payload, envelope []byte
	for {
		var t *task
		select {
		case t = <-in:
		case <-p.quit:
			return
		}
		failed := false
		for ei, channels := range t.channels {
			ev := &t.job.Events[ei]
			for _, ch := range channels {
				payload = protocol.AppendChannelEvent(payload[:0], ev.Name, ch, ev.Data, "")
				// The frame ends the envelope: encode it straight into it.
				envelope = route.AppendDelivery(envelope[:0], route.Delivery{
					Seq:             t.seq,
					Event:           uint8(ei),
					ExcludeSocketID: ev.SocketID,
				})
				envelope = protocol.AppendTextFrame(envelope, payload)
				// Deliver copies (Publish into the connection's buffer),
				// so the scratch buffers are reused at once.
				if err := p.opts.Deliver(route.Subject(t.job.AppID, ch), envelope); err != nil {
					p.opts.Log.Error().Err(err).Uint64("seq", t.seq).Msg("publishing delivery")
					failed = true
					break
				}
				p.stats.Deliveries.Add(1)
				if m := p.opts.Metrics; m != nil {
					m.Deliveries.Inc()
				}
				if p.opts.Cache != nil && protocol.ClassifyChannel(ch).Cache {
					p.cache(t.job.AppID, ch, ev)
				}
			}
			if failed {
				break
			}
		}
		if failed {
			// Redeliver the whole job. Subscribers may then see its
			// earlier channels twice; the delivery envelope carries the
			// job's sequence so that gateways can drop such repeats.
			_ = t.msg.Nak()
			if m := p.opts.Metrics; m != nil {
				m.Jobs.WithLabelValues("failed").Inc()
			}
			continue
		}
		if t.pending.Add(-1) == 0 {
			if err := t.msg.Ack(); err != nil {
				p.opts.Log.Warn().Err(err).Uint64("seq", t.seq).Msg("acking job")
			}
			p.stats.Jobs.Add(1)
			if m := p.opts.Metrics; m != nil {
				m.Jobs.WithLabelValues("ok").Inc()
				m.JobLatency.Observe(time.Since(t.stored).Seconds())
			}
		}
	}
}

// cache stores ev as the channel's last event. Pusher keeps it whether or
// not anyone is subscribed; Reverb loses it when the channel empties.
func (p *Pool) cache(appID, channel string, ev *protocol.Trigger) {
	b, _ := json.Marshal(cluster.CachedEvent{Event: ev.Name, Data: ev.Data})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.opts.Cache.Put(ctx, cluster.Key(appID, channel), b); err != nil {
		p.opts.Log.Warn().Err(err).Str("channel", channel).Msg("caching event")
	}
}

func shardOf(appID, channel string, n int) int {
	if n == 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(appID))
	h.Write([]byte{0})
	h.Write([]byte(channel))
	return int(h.Sum32() % uint32(n))
}
