// Package worker turns queued broadcast jobs into deliveries: it validates
// each job, encodes each channel's Pusher frame once, and publishes it on
// the channel's delivery subject, where the gateways with subscribers to
// that channel pick it up.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cache"
	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/ordered"
	"github.com/resoundhq/resound/internal/queue"
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
	// Conn publishes deliveries (unless Deliver is set) as JetStream
	// messages: the history stream (internal/history, which must exist)
	// acknowledges each before its job is acked (see shard.attempt).
	// Make it with nats.ReconnectBufSize(-1): a delivery buffered while
	// the connection is down would go out after the reconnect, behind
	// deliveries that had to be published again.
	Conn      *nats.Conn
	JetStream jetstream.JetStream
	Apps      AppExists
	// Recovers, when set, tells which apps' events carry their position,
	// for clients to resume channels (docs/recovery.md).
	Recovers func(appID string) bool
	// EnsureHistory, when set, makes the history stream again if it is
	// gone: deliveries it does not acknowledge are published again and
	// their jobs wait, so a stream deleted by hand would hold every job.
	EnsureHistory func(context.Context) error
	Limits        protocol.Limits
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
	// OnLive, when set, also hears the live workers each time the pool
	// shares its partitions out (once, with this pool alone, without
	// Stores): the webhook sender takes its lanes from the same set, by
	// the same rule (cluster.Owner). It must not block.
	OnLive func(live map[string]bool)
	// Workers is how many goroutines encode and publish in parallel.
	Workers int
	// Deliver, when set, takes the deliveries instead of Conn:
	// the all-in-one process hands them straight to its gateway. It must
	// copy envelope before returning. An error fails the attempt: the job
	// is tried again (see MaxAttempts).
	Deliver func(subject string, envelope []byte) error
	// Alone says this pool is the only one on its NATS (the all-in-one
	// gateway's in-process workers): a stop hands nothing over, so it
	// does not wait for its last pull to expire to unpin its partitions
	// (about 2 s, see settledOnServer).
	Alone bool
	// Record, when set, also takes the deliveries of apps with recovery
	// (Recovers): all-in-one, Deliver hands them to the gateway in
	// process, and Record publishes them for the history to keep. It
	// must copy envelope too.
	Record func(subject string, envelope []byte) error
	// ReconnectHold bounds how long jobs are held after reconnecting to
	// NATS, for the gateways to resubscribe (DefaultReconnectHold if zero).
	// Keep it well inside the ack wait, or held jobs are redelivered.
	ReconnectHold time.Duration
	// MaxAttempts is how many times a job is tried before it is set aside
	// in the dead-letter stream (DefaultMaxAttempts if zero); also the
	// most deliveries JetStream may make of it before it is set aside
	// untried. RESOUND_JOB_MAX_ATTEMPTS.
	MaxAttempts int
	// RetryBackoff is the wait before a failed job's first retry
	// (DefaultRetryBackoff if zero); it doubles at each retry, up to
	// RetryBackoffMax (DefaultRetryBackoffMax if zero).
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	Log             zerolog.Logger
}

// Retry defaults: ten attempts spread over about 21 s (0.1 + 0.2 + ... +
// 3.2 + 5 + 5 + 5), long enough to ride out a NATS reconnect or a
// gateway restart, short enough that one poison job does not hold its
// channel for long.
const (
	DefaultMaxAttempts     = 10
	DefaultRetryBackoff    = 100 * time.Millisecond
	DefaultRetryBackoffMax = 5 * time.Second
)

// Pool consumes the job stream.
type Pool struct {
	opts   Options
	id     string
	shards []*shard
	// stopping is closed when Run's context ends: failed jobs are no
	// longer retried nor set aside, but left for the next owner.
	stopping chan struct{}
	// leaving is set once a job was left unfinished while stopping: from
	// then on no shard starts a job, so that none overtakes it.
	leaving atomic.Bool
	// retrying counts the tasks between their first failure and their
	// end; partitions are not handed over while there are any (see
	// lanes.release).
	retrying atomic.Int32
	// quit stops the shards; tasks still queued are never acked, so
	// JetStream delivers their jobs again.
	quit chan struct{}
	// holdUntil (unix nanos) holds jobs after a reconnect.
	holdUntil atomic.Int64
	// confirms: deliveries go over NATS, and the history stream
	// acknowledges them (through acks) before their jobs are acked.
	confirms  bool
	acks      jetstream.JetStream
	noRetries jetstream.PublishOpt // made once: an option is a closure
	// lastEvents keeps cache channels' last events (Options.Cache).
	lastEvents *cache.Store
	// retryLog says that jobs are being retried, once per 10 s at most.
	retryLog zerolog.Logger
	stats    Stats
}

// Stats counts what the pool did; read them with Snapshot.
type Stats struct {
	Jobs         atomic.Uint64 // jobs completed and acked
	Rejected     atomic.Uint64 // invalid jobs, set aside untried
	Failed       atomic.Uint64 // attempts that failed
	Retried      atomic.Uint64 // failed attempts tried again
	DeadLettered atomic.Uint64 // jobs stored in the dead-letter stream
	Deliveries   atomic.Uint64 // frames published (one per event and channel)
	// Pending is the consumer's backlog as of the last job fetched.
	Pending atomic.Uint64
	// Partitions is how many partitions this worker is assigned (some may
	// still be finishing their hand-over to another).
	Partitions atomic.Int64
	// Gaps counts gaps in a partition's delivery sequence: deliveries lost
	// on the way, held for (see Pool.openGap).
	Gaps atomic.Uint64
}

// run is one delivery of a job, shared by the shards that work its parts.
type run struct {
	job        *queue.Job
	msg        jetstream.Msg
	lane       *lane
	seq        uint64    // the job's stream sequence
	stored     time.Time // when JetStream stored the job
	deliveries uint64    // JetStream's count, this one included
	// pending counts the parts not yet delivered.
	pending atomic.Int32
	// settled is set by whoever decides the job's fate (acked, set aside
	// or left), once: the other parts then stop.
	settled atomic.Bool
}

// task is the part of one job that one shard handles: the channels whose
// hash falls on that shard, for every event of the job.
type task struct {
	run      *run
	channels [][]string // per event: this shard's channels
	// acks are the history stream's acknowledgements of the deliveries
	// as last published (when the pool confirms); published says that
	// all of them went out.
	acks      []jetstream.PubAckFuture
	published bool
}

// New returns a pool; Run starts it.
func New(opts Options) *Pool {
	if opts.Workers < 1 {
		opts.Workers = 1
	}
	confirms := opts.Deliver == nil
	var acks jetstream.JetStream
	if confirms {
		if opts.Conn.Opts.ReconnectBufSize >= 0 {
			opts.Log.Warn().Msg("the worker's NATS connection buffers while reconnecting: make it with nats.ReconnectBufSize(-1), or deliveries go out late, behind others, and are published twice")
		}
		// Its own JetStream context: the acknowledgements it awaits are
		// bounded by the shards' batches, and one that never comes is
		// forgotten after confirmTimeout.
		var err error
		acks, err = jetstream.New(opts.Conn,
			jetstream.WithPublishAsyncMaxPending(max(opts.Workers, 1)*maxUnconfirmed),
			jetstream.WithPublishAsyncTimeout(confirmTimeout))
		if err != nil {
			panic(err) // only ever for an invalid option
		}
	}
	if opts.ReconnectHold <= 0 {
		opts.ReconnectHold = DefaultReconnectHold
	}
	if opts.Partitions <= 0 {
		opts.Partitions = queue.DefaultPartitions
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = DefaultRetryBackoff
	}
	if opts.RetryBackoffMax <= 0 {
		opts.RetryBackoffMax = DefaultRetryBackoffMax
	}
	p := &Pool{opts: opts, id: nuid.Next(), shards: make([]*shard, opts.Workers), confirms: confirms, acks: acks, noRetries: jetstream.WithRetryAttempts(0),
		stopping: make(chan struct{}), quit: make(chan struct{}),
		retryLog: opts.Log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})}
	if opts.Cache != nil {
		p.lastEvents = cache.New(opts.Cache, 0)
	}
	for i := range p.shards {
		p.shards[i] = &shard{pool: p, in: make(chan *task, 256), inFlight: make(map[string]struct{})}
	}
	return p
}

// ID is this pool's id among the live workers.
func (p *Pool) ID() string { return p.id }

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
//
// A job whose delivery fails (a publish error, a panic) is retried where
// it is, on its shard, with backoff, so that nothing later on its channels
// overtakes it; after MaxAttempts it is set aside in the dead-letter
// stream (queue.DeadLetterStream), as are invalid jobs, at once.
func (p *Pool) Run(ctx context.Context) error {
	consumers, err := queue.EnsureConsumers(ctx, p.opts.JetStream, p.opts.Partitions)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); queue.KeepAnchor(ctx, p.opts.JetStream, queue.AnchorEvery, p.opts.Log) }()
	for _, sh := range p.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sh.run()
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
	lanes := &lanes{pool: p, consumers: consumers, owned: map[int]*lane{}}
	onLive := lanes.assign
	if f := p.opts.OnLive; f != nil {
		onLive = func(live map[string]bool) { lanes.assign(live); f(live) }
	}
	if p.opts.Stores == nil {
		onLive(map[string]bool{p.id: true})
	} else {
		reg := cluster.NewWorkerRegistry(p.opts.Stores, p.id, p.opts.Log, onLive)
		wg.Add(1)
		go func() { defer wg.Done(); reg.Run(ctx) }()
	}
	<-ctx.Done()
	close(p.stopping)
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
	owned     map[int]*lane
	stopped   bool
}

// lane is one spell of this worker consuming one partition.
type lane struct {
	partition int
	cc        jetstream.ConsumeContext
	// inflight counts the jobs received (held back or not) and not yet
	// settled; the partition is unpinned only once they are.
	inflight atomic.Int64

	// order puts the partition's jobs in stream order after faults (a
	// dead worker's redeliveries, a delivery lost on the way): receive
	// feeds it, and it hands them on to dispatch.
	order *ordered.Lane
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
		mine := cluster.Owner(k, live) == p.id
		ln, have := l.owned[k]
		switch {
		case mine && !have:
			ln := p.newLane(k)
			cc, err := cons.Consume(func(msg jetstream.Msg) { p.receive(ln, msg) },
				jetstream.PullPriorityGroup(queue.PriorityGroup),
				jetstream.PullMaxMessages(512),
				// Pulling again often keeps the pin (see queue.PullExpiry).
				jetstream.PullExpiry(queue.PullExpiry),
				jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
					if !errors.Is(err, nats.ErrConnectionClosed) {
						p.opts.Log.Debug().Err(err).Int("partition", k).Msg("job consumer")
					}
				}))
			if err != nil {
				p.opts.Log.Warn().Err(err).Int("partition", k).Msg("consuming partition")
				continue
			}
			ln.cc = cc
			l.owned[k] = ln
			p.opts.Log.Debug().Int("partition", k).Msg("partition taken")
		case !mine && have:
			delete(l.owned, k)
			go l.release(ln)
		}
	}
	p.stats.Partitions.Store(int64(len(l.owned)))
}

// release hands a partition over: it stops pulling it, lets the jobs
// already received finish, and unpins it, so that the next owner starts at
// once instead of waiting out the pin.
//
// While a job is being retried, one of the partition's may be, or wait
// behind it in a shard; so the worker first keeps the partition, pulling
// and all, until the retries end (within their attempts, retryBudget).
// JetStream's pin is what keeps the next owner from taking the
// partition's later jobs meanwhile: the worker's pulls renew it
// (queue.PullExpiry), and it lapses PinnedTTL after they stop. The jobs
// that come meanwhile queue behind the retried ones, in order.
func (l *lanes) release(ln *lane) {
	p := l.pool
	hold := time.Now().Add(p.retryBudget())
	for p.retrying.Load() > 0 && ln.inflight.Load() > 0 && !isClosed(p.stopping) && time.Now().Before(hold) {
		time.Sleep(20 * time.Millisecond)
	}
	ln.cc.Drain()
	deadline := time.Now().Add(drainTimeout)
	select {
	case <-ln.cc.Closed():
	case <-time.After(drainTimeout):
		ln.cc.Stop()
	}
	drained := time.Now()
	// Nothing more comes: no need to wait out the quiet.
	ln.order.Flush()
	for ln.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second+queue.PullExpiry)
	defer cancel()
	if !l.settledOnServer(ctx, ln.partition, drained) {
		p.opts.Log.Info().Int("partition", ln.partition).
			Msg("partition handed over with jobs delivered and not acked: its pin lapses instead, after they are due again")
		return
	}
	if s, err := p.opts.JetStream.Stream(ctx, queue.StreamName); err == nil {
		_ = s.UnpinConsumer(ctx, queue.ConsumerName(ln.partition), queue.PriorityGroup)
	}
	p.opts.Log.Debug().Int("partition", ln.partition).Msg("partition handed over")
}

// settledOnServer reports whether JetStream has no job of the partition
// delivered and not acked, once the last pull request made before drained
// has expired. Only then may the partition be unpinned.
//
// The lane's own count (inflight) is not enough: it counts the jobs that
// reached the callback. A pull request still open when the lane drained
// (it lasts up to queue.PullExpiry) may be served after the subscription
// is gone, and the jobs JetStream sent for it are lost on the way, yet
// counted as delivered. Unpinned at once, the next owner got the
// partition's later jobs first; the lost ones came back AckWait later,
// delivered again, so marked as repeats, and the gateways, having written
// later positions on their channels, dropped them: an event answered 200
// reached none of its subscribers (TestNATSNodeKilledUnderLoad, under
// load: partitions change hands when the workers start together, and when
// the registry loses a worker while a NATS node dies). Kept pinned, the
// partition goes to its next owner PinnedTTL after the last pull, when
// those jobs are due again and JetStream sends them before anything new.
func (l *lanes) settledOnServer(ctx context.Context, partition int, drained time.Time) bool {
	return ordered.SettledOnServer(ctx, l.consumers[partition], drained, queue.PullExpiry, 0)
}

// stopAll drains every partition: messages already delivered to the handler
// finish; what is not acked is redelivered to another worker.
func (l *lanes) stopAll() {
	l.mu.Lock()
	l.stopped = true
	owned := l.owned
	l.owned = map[int]*lane{}
	l.pool.stats.Partitions.Store(0)
	l.mu.Unlock()
	if !l.pool.opts.Conn.IsConnected() {
		// Nothing can be acked without NATS; what is in flight is
		// redelivered anyway, so there is nothing to wait for.
		for _, ln := range owned {
			ln.cc.Stop()
		}
		return
	}
	for _, ln := range owned {
		ln.cc.Drain()
	}
	deadline := time.After(drainTimeout)
	for _, ln := range owned {
		select {
		case <-ln.cc.Closed():
		case <-deadline:
			ln.cc.Stop()
		}
		ln.order.Flush()
	}
	// Unpin the lanes whose jobs all finished, so that the next owner
	// starts at once instead of waiting out the pin. A lane with a job
	// left unacked keeps its pin: the next owner must not take later
	// jobs before that one is due again.
	drained := time.Now()
	until := drained.Add(drainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout+queue.PullExpiry)
	defer cancel()
	s, err := l.pool.opts.JetStream.Stream(ctx, queue.StreamName)
	if err != nil {
		return
	}
	for part, ln := range owned {
		for ln.inflight.Load() > 0 && time.Now().Before(until) {
			time.Sleep(10 * time.Millisecond)
		}
		// And nothing lost on the way to the lane (see settledOnServer).
		if ln.inflight.Load() == 0 && !l.pool.leaving.Load() && !l.pool.opts.Alone && l.settledOnServer(ctx, part, drained) {
			_ = s.UnpinConsumer(ctx, queue.ConsumerName(part), queue.PriorityGroup)
		}
	}
}

// DefaultReconnectHold bounds how long a pool holds jobs after
// reconnecting to NATS, for the gateways to resubscribe. It is well inside
// the ack wait, so the held jobs are not redelivered meanwhile. Without a
// registry to say which gateways to wait for, the pool holds this long.
const DefaultReconnectHold = 3 * time.Second

// newLane starts a spell of consuming partition k.
func (p *Pool) newLane(k int) *lane {
	ln := &lane{partition: k}
	ln.order = ordered.New(ordered.Options{
		AckWait:       queue.AckWait,
		MaxAckPending: queue.MaxAckPending,
		Dispatch:      func(msg jetstream.Msg, meta *jetstream.MsgMetadata) { p.dispatch(ln, msg, meta) },
		// Delivered again while held: the newer delivery is kept, the
		// older is not a job in flight any more.
		Superseded: func(jetstream.Msg) { ln.inflight.Add(-1) },
		Gap: func(lost uint64) {
			p.stats.Gaps.Add(1)
			p.opts.Log.Warn().Int("partition", k).Uint64("lost", lost).
				Msg("job deliveries lost on the way (a NATS node or link went away): holding the partition's jobs until they are delivered again")
		},
	})
	return ln
}

// receive is a partition's consumer callback: it gets the partition's
// jobs in the order JetStream sends them, one at a time, and hands them to
// the lane's order, which dispatches them in stream order (a dead
// worker's jobs come back rotated; a delivery lost with a NATS node comes
// back an ack wait late: see internal/ordered). Before this, a job lost
// that way came back as a repeat after the channel's later jobs, and the
// gateways, past it, dropped it.
func (p *Pool) receive(ln *lane, msg jetstream.Msg) {
	ln.inflight.Add(1)
	if err := ln.order.Receive(msg); err != nil {
		p.reject(&run{msg: msg, lane: ln}, err.Error())
	}
}

func (p *Pool) dispatch(ln *lane, msg jetstream.Msg, meta *jetstream.MsgMetadata) {
	p.awaitHold()
	r := &run{msg: msg, lane: ln}
	r.seq, r.stored, r.deliveries = meta.Sequence.Stream, meta.Timestamp, meta.NumDelivered
	p.stats.Pending.Store(meta.NumPending)
	if meta.NumDelivered > uint64(p.opts.MaxAttempts) {
		// Every delivery so far ended with no ack: the job killed or
		// stalled the workers it reached. Another try would likely do the
		// same.
		p.setAside(r, fmt.Sprintf("delivered %d times (more than the %d attempts allowed) and never acked: it killed or stalled the workers", meta.NumDelivered, p.opts.MaxAttempts))
		return
	}
	job, reason, panicked := p.decode(msg)
	if job == nil {
		if panicked {
			// Decoding depends on nothing but the job, so a second try
			// would panic again: set it aside at once.
			p.failed()
			p.setAside(r, reason)
		} else {
			p.reject(r, reason)
		}
		return
	}
	r.job = job
	n := len(p.shards)
	tasks := make([]*task, n)
	for ei, ev := range job.Events {
		for _, ch := range ev.Channels {
			s := shardOf(job.AppID, ch, n)
			t := tasks[s]
			if t == nil {
				t = &task{run: r, channels: make([][]string, len(job.Events))}
				tasks[s] = t
				r.pending.Add(1)
			}
			t.channels[ei] = append(t.channels[ei], ch)
		}
	}
	for s, t := range tasks {
		if t == nil {
			continue
		}
		select {
		case p.shards[s].in <- t:
		case <-p.quit:
			return // not acked: redelivered
		}
	}
}

// awaitHold waits while jobs are held after a reconnect.
func (p *Pool) awaitHold() {
	for {
		d := p.holdLeft()
		if d <= 0 {
			return
		}
		time.Sleep(min(d, 10*time.Millisecond))
	}
}

// holdLeft is how long jobs are still held after a reconnect.
func (p *Pool) holdLeft() time.Duration {
	until := p.holdUntil.Load()
	if until == 0 {
		return 0
	}
	return time.Until(time.Unix(0, until))
}

// decode reads and checks a job. A job it refuses comes back nil, with the
// reason; panicked says that decoding panicked (and was recovered).
func (p *Pool) decode(msg jetstream.Msg) (job *queue.Job, reason string, panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			p.recovered(v, msg)
			job, reason, panicked = nil, fmt.Sprintf("panic while decoding: %v", v), true
		}
	}()
	data := msg.Data()
	// Before decoding: json.Unmarshal would replace invalid bytes with
	// U+FFFD and let the job through, changed.
	if !utf8.Valid(data) {
		return nil, "invalid UTF-8", false
	}
	job = new(queue.Job)
	if err := json.Unmarshal(data, job); err != nil {
		return nil, "invalid JSON: " + err.Error(), false
	}
	if err := job.Validate(p.opts.Limits); err != nil {
		return nil, "invalid job: " + err.Error(), false
	}
	if app, ok := queue.AppOfSubject(msg.Subject()); !ok || app != job.AppID {
		// Publish permissions are per subject; the body must not name
		// another app than the subject does.
		return nil, "app_id " + job.AppID + " does not match subject " + msg.Subject(), false
	}
	if !p.opts.Apps(job.AppID) {
		return nil, "unknown app_id " + job.AppID, false
	}
	return job, "", false
}

// recovered logs a panic with its stack and counts it.
func (p *Pool) recovered(v any, msg jetstream.Msg) {
	p.opts.Log.Error().Str("panic", fmt.Sprint(v)).Str("subject", msg.Subject()).Bytes("stack", debug.Stack()).
		Msg("panic while handling a job, recovered")
	if m := p.opts.Metrics; m != nil {
		m.Panics.WithLabelValues(metrics.PanicWorker).Inc()
	}
}

// reject sets an invalid job aside, untried.
func (p *Pool) reject(r *run, reason string) {
	p.stats.Rejected.Add(1)
	if m := p.opts.Metrics; m != nil {
		m.Jobs.WithLabelValues(metrics.JobRejected).Inc()
	}
	p.setAside(r, reason)
}

// failed counts a failed attempt.
func (p *Pool) failed() {
	p.stats.Failed.Add(1)
	if m := p.opts.Metrics; m != nil {
		m.Jobs.WithLabelValues(metrics.JobFailed).Inc()
	}
}

// settle claims r's fate for the caller: false if another part of the job
// claimed it first.
func (r *run) settle() bool {
	if !r.settled.CompareAndSwap(false, true) {
		return false
	}
	r.lane.inflight.Add(-1)
	return true
}

// finish acks a job whose parts are all delivered.
func (p *Pool) finish(r *run) {
	if !r.settle() {
		return
	}
	if err := r.msg.Ack(); err != nil {
		p.opts.Log.Warn().Err(err).Uint64("seq", r.seq).Msg("acking job")
	}
	p.stats.Jobs.Add(1)
	if m := p.opts.Metrics; m != nil {
		m.Jobs.WithLabelValues(metrics.JobOK).Inc()
		m.JobLatency.Observe(time.Since(r.stored).Seconds())
	}
}

// deadLetterTimeout bounds the wait for the dead-letter stream's ack.
const deadLetterTimeout = 5 * time.Second

// setAside stores the job in the dead-letter stream, then terminates it.
// If it cannot be stored, the job is left unacked, for JetStream to
// deliver again: a job is never dropped unseen.
func (p *Pool) setAside(r *run, reason string) {
	if !r.settle() {
		return
	}
	log := p.opts.Log.With().Uint64("seq", r.seq).Str("subject", r.msg.Subject()).Uint64("deliveries", r.deliveries).
		Str("reason", reason).Logger()
	ctx, cancel := context.WithTimeout(context.Background(), deadLetterTimeout)
	defer cancel()
	dup, err := queue.PublishDeadLetter(ctx, p.opts.JetStream, queue.DeadLetter{
		Subject: r.msg.Subject(), Data: r.msg.Data(), Reason: reason,
		StreamSeq: r.seq, Deliveries: r.deliveries, Stored: r.stored,
	})
	if err != nil {
		log.Error().Err(err).Msg("job not set aside: the dead letter was not stored; left for redelivery")
		return
	}
	if !dup {
		p.stats.DeadLettered.Add(1)
		if m := p.opts.Metrics; m != nil {
			m.Jobs.WithLabelValues(metrics.JobDeadLettered).Inc()
		}
	}
	log.Warn().Str("dead_letter", queue.DeadLetterSubject(r.msg.Subject())).Msg("job set aside in " + queue.DeadLetterStream)
	if err := r.msg.TermWithReason("dead-lettered"); err != nil {
		log.Warn().Err(err).Msg("terminating a dead-lettered job")
	}
}

// leave gives up an unfinished job while stopping, unacked: JetStream
// delivers it again once its ack wait passes, to the next owner. No job
// starts after it.
func (p *Pool) leave(r *run) {
	p.leaving.Store(true)
	r.settle()
}

// cache stores ev as the channel's last event. Pusher keeps it whether or
// not anyone is subscribed; Reverb loses it when the channel empties.
func (p *Pool) cache(appID, channel string, ev *protocol.Trigger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.lastEvents.Put(ctx, appID, channel, ev.Name, ev.Data); err != nil {
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
