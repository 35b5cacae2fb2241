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
	// Workers is how many goroutines encode and publish in parallel.
	Workers int
	Log     zerolog.Logger
}

// Pool consumes the job stream.
type Pool struct {
	opts   Options
	shards []chan *task
	// quit stops the shards; tasks still queued are never acked, so
	// JetStream delivers their jobs again.
	quit  chan struct{}
	stats Stats
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
	p := &Pool{opts: opts, shards: make([]chan *task, opts.Workers), quit: make(chan struct{})}
	for i := range p.shards {
		p.shards[i] = make(chan *task, 256)
	}
	return p
}

// Stats returns the pool's counters.
func (p *Pool) Stats() *Stats { return &p.stats }

// Run consumes jobs until ctx ends. Jobs are fetched in stream order by one
// goroutine and split by channel over the shards; a channel always hashes
// to the same shard, and a shard works in order, so events on one channel
// are published in the order they were queued.
func (p *Pool) Run(ctx context.Context) error {
	cons, err := queue.EnsureConsumer(ctx, p.opts.JetStream)
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
	cc, err := cons.Consume(p.dispatch,
		jetstream.PullMaxMessages(512),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, nats.ErrConnectionClosed) {
				p.opts.Log.Warn().Err(err).Msg("job consumer")
			}
		}))
	if err != nil {
		close(p.quit)
		wg.Wait()
		return err
	}
	<-ctx.Done()
	// Drain stops fetching and lets the messages already delivered to the
	// handler finish; what is not acked is redelivered to another worker.
	cc.Drain()
	select {
	case <-cc.Closed():
	case <-time.After(drainTimeout):
		cc.Stop()
	}
	close(p.quit)
	wg.Wait()
	return nil
}

func (p *Pool) dispatch(msg jetstream.Msg) {
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
	if msg.Subject() != queue.Subject(job.AppID) {
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
				envelope = route.AppendDelivery(envelope[:0], route.Delivery{
					Seq:             t.seq,
					Event:           uint8(ei),
					ExcludeSocketID: ev.SocketID,
					Frame:           protocol.AppendTextFrame(nil, payload),
				})
				// Publish copies into the connection's buffer, so the
				// scratch buffers are reused at once.
				if err := p.opts.Conn.Publish(route.Subject(t.job.AppID, ch), envelope); err != nil {
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
