package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/wire"
)

// Timing is how a Sender batches, holds and retries, from the
// RESOUND_WEBHOOK_* settings.
type Timing struct {
	// BatchWindow is how long a receiver's webhook waits for more events
	// to go in the same request; it is also how long a record with a
	// revision waits for one of its channel's that a slower gateway
	// published later but that happened before (sorted by Rev). 0 sends
	// each at once.
	BatchWindow time.Duration
	// BatchMax is the most events in one request.
	BatchMax int
	// Delay holds channel_vacated and member_removed, from the record's
	// time, for the occupied or added that undoes them.
	Delay time.Duration
	// RetryFor is how long a failing request is tried again, from its
	// first attempt, before it is dropped.
	RetryFor time.Duration
	// Timeout bounds one request, response included.
	Timeout time.Duration
}

// TimingOf reads the settings.
func TimingOf(s *config.Settings) Timing {
	return Timing{
		BatchWindow: s.WebhookBatchWindow.Duration(), BatchMax: s.WebhookBatchMax, Delay: s.WebhookDelay.Duration(),
		RetryFor: s.WebhookRetryFor.Duration(), Timeout: s.WebhookTimeout.Duration(),
	}
}

// SenderOptions configure a Sender.
type SenderOptions struct {
	JetStream jetstream.JetStream
	// Conn is JetStream's connection: a sender stopping while it is down
	// waits for nothing it could not ack anyway.
	Conn *nats.Conn
	Apps *config.Apps
	// ID is this worker's id in the live sets given to Assign: the worker
	// pool's (worker.Pool.ID), so that the job partition and the webhook
	// lane of one number go to the same worker.
	ID string
	// Lanes is the stream's lane count (RESOUND_PARTITIONS;
	// queue.DefaultPartitions if zero).
	Lanes int
	Timing
	Log zerolog.Logger
	// Registerer takes the metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Observe, when set, hears every request's outcome (Kind "webhook")
	// for the debug console. It must not block.
	Observe func(app string, e wire.ConsoleEntry)
	// Client, when set, makes the requests instead of NewHTTPClient's.
	Client *http.Client
	// Alone says this sender is the only one on its NATS (the all-in-one
	// gateway's): a stop hands nothing over, so it does not wait for its
	// last pull to expire (up to PullExpiry) before unpinning its lanes,
	// as worker.Options.Alone.
	Alone bool
}

// Sender delivers the webhook stream's records to the apps' receivers.
// Run it in every worker process: the live workers share the lanes out
// as they share the job partitions (cluster.Owner), and each lane is
// pinned to one worker at a time, so a lane's records are read in order
// by one sender.
type Sender struct {
	opts    SenderOptions
	client  *http.Client
	metrics senderMetrics
	// counters are per app, for the dashboard; the map is made once.
	counters map[string]*appCounters
	// failLog and dropLog say that requests fail or are dropped, once
	// per 10 s at most.
	failLog, dropLog zerolog.Logger

	wake chan struct{}
	// live is the last live set Assign was given.
	live atomic.Pointer[map[string]bool]
	mu   sync.Mutex
	// owned are the lanes this sender consumes; releasing those it is
	// handing over, closed when done.
	owned     map[int]*lane
	releasing map[int]chan struct{}
	stopped   bool
	handovers sync.WaitGroup
}

// AppCounters are one app's webhook requests since the process started.
type AppCounters struct {
	Sent    int64 // answered 2xx
	Failed  int64 // attempts that failed (each retry counts again)
	Dropped int64 // given up after RetryFor
}

type appCounters struct{ sent, failed, dropped atomic.Int64 }

// Results of a request: the label values of resound_webhooks_total.
const (
	resultSent    = "sent"
	resultFailed  = "failed"
	resultRetried = "retried"
	resultDropped = "dropped"
)

type senderMetrics struct {
	sent, failed, retried, dropped prometheus.Counter
	latency                        prometheus.Observer
}

func newSenderMetrics(r prometheus.Registerer) senderMetrics {
	total := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "resound_webhooks_total",
		Help: "Webhook requests by result: sent (answered 2xx), failed (an attempt that failed), retried (an attempt after a failure), dropped (given up after RESOUND_WEBHOOK_RETRY_FOR)."},
		[]string{"result"})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "resound_webhook_latency_seconds",
		Help:    "Time from a webhook event's transition (its record's time) to its receiver's 2xx, per event.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}})
	if r != nil {
		r.MustRegister(total, latency)
	}
	return senderMetrics{
		sent: total.WithLabelValues(resultSent), failed: total.WithLabelValues(resultFailed),
		retried: total.WithLabelValues(resultRetried), dropped: total.WithLabelValues(resultDropped),
		latency: latency,
	}
}

// NewSender returns a sender; Run starts it and Assign gives it its lanes.
func NewSender(opts SenderOptions) *Sender {
	if opts.BatchMax < 1 {
		opts.BatchMax = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Lanes < 1 {
		opts.Lanes = queue.DefaultPartitions // as the worker pool
	}
	s := &Sender{
		opts: opts, client: opts.Client, metrics: newSenderMetrics(opts.Registerer),
		counters: map[string]*appCounters{},
		failLog:  opts.Log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
		dropLog:  opts.Log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
		wake:     make(chan struct{}, 1), owned: map[int]*lane{}, releasing: map[int]chan struct{}{},
	}
	if s.client == nil {
		s.client = NewHTTPClient(opts.Timeout)
	}
	for _, app := range opts.Apps.All() {
		s.counters[app.ID] = &appCounters{}
	}
	return s
}

// AppCounters returns each app's request counts.
func (s *Sender) AppCounters() map[string]AppCounters {
	out := make(map[string]AppCounters, len(s.counters))
	for id, c := range s.counters {
		out[id] = AppCounters{Sent: c.sent.Load(), Failed: c.failed.Load(), Dropped: c.dropped.Load()}
	}
	return out
}

// Assign gives the sender the live workers: it consumes the lanes
// cluster.Owner gives its ID, and hands back the others. It never blocks:
// worker.Options.OnLive calls it from the registry's loop.
func (s *Sender) Assign(live map[string]bool) {
	s.live.Store(&live)
	s.poke()
}

func (s *Sender) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run consumes the lanes Assign gives it until ctx ends, then hands them
// back: each lane stops pulling, finishes what it holds within its
// hand-over budget, and is unpinned if nothing of it is left unacked.
func (s *Sender) Run(ctx context.Context) error {
	if !s.anyWebhooks() {
		// No app has a webhook, so no gateway records any (they record
		// only what an app wants): nothing to consume. Every process has
		// the same apps.
		s.opts.Log.Debug().Msg("no app has webhooks: the webhook sender stays idle")
		<-ctx.Done()
		return nil
	}
	consumers, err := s.consumers(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	for {
		select {
		case <-ctx.Done():
			s.stopAll()
			return nil
		case <-s.wake:
			s.apply(ctx, consumers)
		}
	}
}

func (s *Sender) anyWebhooks() bool {
	for _, app := range s.opts.Apps.All() {
		if len(app.Webhooks) > 0 {
			return true
		}
	}
	return false
}

// consumers finds the lanes' consumers, which every process makes at
// start-up (streams.Ensure); they are made here only if missing, so that
// one made otherwise (a test's shorter ack wait) is kept.
func (s *Sender) consumers(ctx context.Context) ([]jetstream.Consumer, error) {
	out := make([]jetstream.Consumer, s.opts.Lanes)
	for k := range out {
		var c jetstream.Consumer
		// Repeated while the failure passes (a NATS cluster settling).
		err := ensure.Do(ctx, func(ctx context.Context) (err error) {
			c, err = s.opts.JetStream.Consumer(ctx, StreamName, ConsumerName(k))
			return err
		})
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return EnsureConsumers(ctx, s.opts.JetStream, s.opts.Lanes)
		}
		if err != nil {
			return nil, fmt.Errorf("webhook: consumer %s: %w", ConsumerName(k), err)
		}
		out[k] = c
	}
	return out, nil
}

// apply takes the lanes this sender now owns and hands back the others.
// A lane still being handed back is taken again only once that is done
// (the hand-over pokes).
func (s *Sender) apply(ctx context.Context, consumers []jetstream.Consumer) {
	live := s.live.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || live == nil {
		return
	}
	for k, cons := range consumers {
		mine := cluster.Owner(k, *live) == s.opts.ID
		ln, have := s.owned[k]
		switch {
		case mine && !have:
			if _, busy := s.releasing[k]; busy {
				continue
			}
			ln, err := s.startLane(ctx, k, cons)
			if err != nil {
				s.opts.Log.Warn().Err(err).Int("lane", k).Msg("consuming webhook lane")
				continue
			}
			s.owned[k] = ln
			s.opts.Log.Debug().Int("lane", k).Msg("webhook lane taken")
		case !mine && have:
			delete(s.owned, k)
			s.handOverLocked(ln)
		}
	}
}

// handOverLocked hands a lane back in the background; s.mu is held.
func (s *Sender) handOverLocked(ln *lane) {
	done := make(chan struct{})
	s.releasing[ln.k] = done
	s.handovers.Add(1)
	go func() {
		defer s.handovers.Done()
		ln.handOver()
		s.mu.Lock()
		delete(s.releasing, ln.k)
		s.mu.Unlock()
		close(done)
		s.poke()
	}()
}

// stopAll hands every lane back, together, and waits.
func (s *Sender) stopAll() {
	s.mu.Lock()
	s.stopped = true
	for k, ln := range s.owned {
		delete(s.owned, k)
		s.handOverLocked(ln)
	}
	s.mu.Unlock()
	s.handovers.Wait()
}

// observe reports a request's outcome to the console.
func (s *Sender) observe(app string, e wire.ConsoleEntry) {
	if s.opts.Observe != nil {
		e.Kind = "webhook"
		e.Process = s.opts.ID
		s.opts.Observe(app, e)
	}
}

// AppStats is one app's webhook counters as the dashboard's stats answer
// carries them.
func (s *Sender) AppStats(app string) wire.AppStats {
	c := s.counters[app]
	if c == nil {
		return wire.AppStats{}
	}
	return wire.AppStats{WebhooksSent: c.sent.Load(), WebhooksFailed: c.failed.Load(), WebhooksDropped: c.dropped.Load()}
}
