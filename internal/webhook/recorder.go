package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The Recorder's bounds. Records wait in memory only while JetStream is
// slow or away; these hold a NATS outage of several seconds at a
// connection storm's rate of transitions (10k a second for 6 s), at about
// 200 bytes a record 13 MiB, while the byte bound keeps client events with
// large data (up to the app's max_message_size each) from holding more
// than 64 MiB. Past either, records are dropped and counted, never waited
// for: a gateway's pollers must not slow down because a webhook receiver's
// stream is away.
const (
	DefaultRecorderRecords = 1 << 16
	DefaultRecorderBytes   = 64 << 20
)

const (
	// recorderAckWait bounds the wait for one record's PubAck; one that
	// does not come is published again, with the same Nats-Msg-Id.
	recorderAckWait = 5 * time.Second
	// recorderFlushFor bounds how long a stopping Recorder goes on
	// storing what it holds.
	recorderFlushFor = 2 * time.Second
	// recorderWarnEvery spaces the warnings about dropped records and
	// failed publishes.
	recorderWarnEvery  = 10 * time.Second
	recorderBackoffMin = 50 * time.Millisecond
	recorderBackoffMax = 2 * time.Second
)

// errCodeStoreFailed is JetStream's JSStreamStoreFailedF: the stream did
// not store the message, as a full DiscardNew stream answers
// ("maximum bytes exceeded"). nats.go names no constant for it.
const errCodeStoreFailed jetstream.ErrorCode = 10077

// RecorderOptions configure a Recorder.
type RecorderOptions struct {
	// Conn is the NATS connection records are published on. The Recorder
	// makes its own JetStream context on it, with an ack timeout, so that
	// a PubAck lost with a NATS node is given up on and published again.
	Conn *nats.Conn
	// Lanes is RESOUND_PARTITIONS: the webhook stream's lanes.
	Lanes int
	// Source names this process in the records' Nats-Msg-Id (the gateway
	// id, unique per process start): with a sequence, it makes each
	// record's id unique, so that a record published again after a lost
	// ack is stored once.
	Source string
	// MaxRecords and MaxBytes bound what waits to be stored; 0 takes
	// DefaultRecorderRecords and DefaultRecorderBytes.
	MaxRecords int
	MaxBytes   int64
	// Registry, when set, gets the recorder's metrics.
	Registry prometheus.Registerer
	Log      zerolog.Logger
}

// Recorder appends the webhook records a gateway makes to the webhook
// stream, without ever making its caller wait: Record only queues, and
// one goroutine (Run) publishes.
//
// Order: a channel's records all go to one lane, and each lane has at
// most one record waiting for its PubAck at a time, so a record that
// fails and is published again is never overtaken by a later one of its
// lane. The lanes' heads are published together, one round trip for all.
//
// Failures: while NATS or the stream is away, the lanes' heads are
// published again with backoff, with the same Nats-Msg-Id (JetStream's
// two-minute duplicate window stores each once), and new records queue
// behind them up to the bounds. A record the stream refuses (full, with
// DiscardNew; too large) is dropped, as are records past the bounds:
// resound_webhook_records_total{result="dropped"} counts them, and a
// warning says so at most every 10 s.
type Recorder struct {
	js         jetstream.JetStream
	lanes      int
	source     string
	maxRecords int
	maxBytes   int64
	log        zerolog.Logger

	mu sync.Mutex
	// queues are the records waiting, per lane, oldest first; the head of
	// each is the one being published.
	queues    [][]queued
	held      int
	heldBytes int64
	seq       uint64
	closed    bool
	// wake tells Run that a record was queued.
	wake chan struct{}

	stored, dropped atomic.Uint64
	// unwarned counts drops since the last warning, lastWarn is when it
	// was given (unix nanos), and lastFail when a failed publish was
	// last logged.
	unwarned atomic.Int64
	lastWarn atomic.Int64
	lastFail atomic.Int64
}

// queued is one record waiting in its lane.
type queued struct {
	app  string
	seq  uint64 // with the source, the Nats-Msg-Id
	size int64
	rec  Record
}

// NewRecorder returns a Recorder; Run publishes what it records.
func NewRecorder(opts RecorderOptions) (*Recorder, error) {
	if opts.Conn == nil || opts.Source == "" {
		return nil, errors.New("webhook: a recorder needs Conn and Source")
	}
	if opts.Lanes <= 0 {
		opts.Lanes = 1
	}
	if opts.MaxRecords <= 0 {
		opts.MaxRecords = DefaultRecorderRecords
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultRecorderBytes
	}
	js, err := jetstream.New(opts.Conn, jetstream.WithPublishAsyncTimeout(recorderAckWait))
	if err != nil {
		return nil, err
	}
	r := &Recorder{
		js: js, lanes: opts.Lanes, source: opts.Source, maxRecords: opts.MaxRecords, maxBytes: opts.MaxBytes,
		log:    opts.Log.With().Str("component", "webhook-recorder").Logger(),
		queues: make([][]queued, opts.Lanes),
		wake:   make(chan struct{}, 1),
	}
	if opts.Registry != nil {
		r.register(opts.Registry)
	}
	return r, nil
}

func (r *Recorder) register(reg prometheus.Registerer) {
	const help = "Webhook records a gateway made, by result: stored in the webhook stream, or dropped (the queue was full, the stream refused them, or the gateway stopped first)."
	for _, c := range []struct {
		result string
		n      *atomic.Uint64
	}{{"stored", &r.stored}, {"dropped", &r.dropped}} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "resound_webhook_records_total", Help: help, ConstLabels: prometheus.Labels{"result": c.result},
		}, func() float64 { return float64(c.n.Load()) }))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "resound_webhook_records_queued",
		Help: "Webhook records waiting in the gateway to be stored in the webhook stream.",
	}, func() float64 { return float64(r.Queued()) }))
}

// Record queues a record of an app's channel for the stream, stamping it
// with the time now if it has none. It never blocks: past the bounds, or
// once the Recorder has stopped, the record is dropped and counted, and
// Record reports false.
func (r *Recorder) Record(appID string, rec Record) bool {
	if rec.TimeMS == 0 {
		rec.TimeMS = time.Now().UnixMilli()
	}
	lane := Lane(appID, rec.Event.Channel, r.lanes)
	size := recordSize(appID, &rec)
	r.mu.Lock()
	if r.closed || r.held >= r.maxRecords || r.heldBytes+size > r.maxBytes {
		stopped := r.closed
		r.mu.Unlock()
		why := "the queue is full (NATS slow or away)"
		if stopped {
			why = "the gateway is stopping"
		}
		r.drop(1, why)
		return false
	}
	r.seq++
	r.queues[lane] = append(r.queues[lane], queued{app: appID, seq: r.seq, size: size, rec: rec})
	r.held++
	r.heldBytes += size
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return true
}

// recordSize is about what a queued record holds in memory.
func recordSize(app string, rec *Record) int64 {
	e := &rec.Event
	return int64(96 + len(app) + len(e.Name) + len(e.Channel) + len(e.UserID) + len(e.Event) + len(e.Data) + len(e.SocketID))
}

// Queued is how many records wait to be stored.
func (r *Recorder) Queued() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
}

// Stored and Dropped count the records stored and dropped so far.
func (r *Recorder) Stored() uint64  { return r.stored.Load() }
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// Run publishes the queued records until ctx ends, then goes on for a
// short while (recorderFlushFor) to store what is left, drops the rest,
// and refuses records from then on.
func (r *Recorder) Run(ctx context.Context) error {
	var failures int
	for ctx.Err() == nil {
		heads := r.heads()
		if len(heads) == 0 {
			select {
			case <-r.wake:
			case <-ctx.Done():
			}
			continue
		}
		if r.publish(heads, nil) {
			failures = 0
			continue
		}
		failures++
		t := time.NewTimer(recorderBackoff(failures))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	r.flush()
	return nil
}

// flush stores what it can of what is queued within recorderFlushFor,
// then closes the Recorder and drops the rest.
func (r *Recorder) flush() {
	deadline := time.Now().Add(recorderFlushFor)
	timeout := time.NewTimer(recorderFlushFor)
	defer timeout.Stop()
	for failures := 0; time.Now().Before(deadline); {
		heads := r.heads()
		if len(heads) == 0 {
			break
		}
		if r.publish(heads, timeout.C) {
			failures = 0
			continue
		}
		failures++
		time.Sleep(min(recorderBackoff(failures), time.Until(deadline)))
	}
	r.mu.Lock()
	r.closed = true
	left := r.held
	for i := range r.queues {
		r.queues[i] = nil
	}
	r.held, r.heldBytes = 0, 0
	r.mu.Unlock()
	if left > 0 {
		r.drop(left, "the gateway stopped before NATS stored them")
	}
}

// recorderBackoff is the wait after the failures-th failed round in a
// row: doubling from recorderBackoffMin up to recorderBackoffMax, with
// jitter, so that gateways coming back together do not publish in step.
func recorderBackoff(failures int) time.Duration {
	d := min(recorderBackoffMin<<min(failures-1, 10), recorderBackoffMax)
	return d/2 + rand.N(d/2+1)
}

// head is a lane's oldest record, as Run publishes it.
type head struct {
	lane int
	q    queued
}

// heads copies the oldest record of every lane that has one.
func (r *Recorder) heads() []head {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []head
	for lane, q := range r.queues {
		if len(q) > 0 {
			out = append(out, head{lane: lane, q: q[0]})
		}
	}
	return out
}

// pop removes a lane's head, which Run published (only Run pops, so it
// is the same record).
func (r *Recorder) pop(lane int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[lane]
	if len(q) == 0 {
		return
	}
	r.held--
	r.heldBytes -= q[0].size
	q[0] = queued{} // let its strings go
	if len(q) == 1 {
		r.queues[lane] = q[:0:0]
	} else {
		r.queues[lane] = q[1:]
	}
}

// publish publishes the heads together and waits for their PubAcks (or
// until stop fires, nil: never). Stored and refused heads leave their
// lanes; the others stay, to be published again. It reports whether
// none failed.
func (r *Recorder) publish(heads []head, stop <-chan time.Time) bool {
	futures := make([]jetstream.PubAckFuture, len(heads))
	errs := make([]error, len(heads))
	for i, h := range heads {
		futures[i], errs[i] = r.publishOne(h)
	}
	ok := true
	for i, h := range heads {
		err := errs[i]
		if err == nil {
			select {
			case <-futures[i].Ok():
			case err = <-futures[i].Err():
			case <-stop:
				err = errors.New("stopping")
			}
		}
		switch {
		case err == nil:
			r.pop(h.lane)
			r.stored.Add(1)
		case refused(err):
			r.pop(h.lane)
			r.drop(1, "the webhook stream refused them: "+err.Error())
		default:
			ok = false
			r.failed(err)
		}
	}
	return ok
}

func (r *Recorder) publishOne(h head) (jetstream.PubAckFuture, error) {
	data, err := json.Marshal(h.q.rec)
	if err != nil {
		return nil, err // plain strings and numbers: cannot happen
	}
	msg := &nats.Msg{Subject: Subject(h.q.app, h.q.rec.Event.Channel, r.lanes), Data: data}
	return r.js.PublishMsgAsync(msg, jetstream.WithMsgID(r.source+"."+strconv.FormatUint(h.q.seq, 10)))
}

// refused reports whether JetStream answered that it will not store the
// record: publishing it again would get the same answer.
func refused(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeStoreFailed, jetstream.JSErrCodeStreamMessageExceedsMaximum:
			return true
		}
	}
	return errors.Is(err, nats.ErrMaxPayload)
}

// drop counts n dropped records and warns, at most every
// recorderWarnEvery, with how many were dropped since the last warning.
func (r *Recorder) drop(n int, why string) {
	r.dropped.Add(uint64(n))
	r.unwarned.Add(int64(n))
	now := time.Now().UnixNano()
	last := r.lastWarn.Load()
	if now-last < int64(recorderWarnEvery) || !r.lastWarn.CompareAndSwap(last, now) {
		return
	}
	r.log.Warn().Int64("dropped", r.unwarned.Swap(0)).Str("why", why).Msg("webhook records dropped")
}

// failed logs a failed publish, at most every recorderWarnEvery.
func (r *Recorder) failed(err error) {
	now := time.Now().UnixNano()
	last := r.lastFail.Load()
	if now-last < int64(recorderWarnEvery) || !r.lastFail.CompareAndSwap(last, now) {
		return
	}
	r.log.Warn().Err(err).Int("queued", r.Queued()).Msg("storing webhook records failed; retrying")
}
