package attack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// BystanderOptions configure a Bystander.
type BystanderOptions struct {
	Target Target
	// Channels the events go to, in turn; default bystander-0, bystander-1.
	Channels []string
	// Clients is how many connections subscribe to every channel; default 3.
	Clients int
	// Rate is events per second over all channels; default 50.
	Rate float64
	// Source is the local address of every socket of the bystander, so
	// that per-IP caps an attack bites on never touch it.
	Source string
	// FreshConnections sends each trigger on a new HTTP connection, so
	// that the triggers meet every bound on new connections an attack
	// fills (handshakes, HTTP connections).
	FreshConnections bool
	// RetryFor is how long a trigger refused with 503 or 429, or that
	// could not be sent at all, is retried (the same event: the gateway
	// stored nothing); default 30 s.
	RetryFor time.Duration
	// DrainTimeout is how long Stop waits for the last events; default
	// 30 s.
	DrainTimeout time.Duration
}

// Bystander is a few clients subscribed to a couple of channels, and a
// steady stream of numbered events triggered through the signed HTTP API.
// Each client must get every event the API accepted, exactly once and in
// order per channel, whatever an attack does meanwhile.
type Bystander struct {
	opts  BystanderOptions
	api   *pushertest.API
	trace *traceTransport
	// transport's idle connections are closed on Stop.
	transport *http.Transport
	clients   []*bystanderClient
	cancel    context.CancelFunc
	done      chan struct{}
	stopped   bool

	// Written by the trigger goroutine, read after done.
	seq     map[string]int // next event number per channel
	acked   map[string][]int
	unsure  map[string]map[int]bool
	failed  []string
	retries int
	result  BystanderResult
	// accepted counts events the API accepted so far.
	accepted atomic.Int64
}

const (
	tickEvent = "bystander-tick"
	endEvent  = "bystander-end"
)

// NewBystander makes a bystander; Start connects it.
func NewBystander(o BystanderOptions) *Bystander {
	if len(o.Channels) == 0 {
		o.Channels = []string{"bystander-0", "bystander-1"}
	}
	if o.Clients <= 0 {
		o.Clients = 3
	}
	if o.Rate <= 0 {
		o.Rate = 50
	}
	if o.RetryFor <= 0 {
		o.RetryFor = 30 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	base := newTransport(o.Source, !o.FreshConnections)
	tr := &traceTransport{base: base}
	api := o.Target.API(o.Source, !o.FreshConnections)
	api.Client.Transport = tr
	return &Bystander{opts: o, api: api, trace: tr, transport: base, done: make(chan struct{}),
		seq: map[string]int{}, acked: map[string][]int{}, unsure: map[string]map[int]bool{}}
}

// Start connects the clients, subscribes them, and starts the stream.
func (b *Bystander) Start(ctx context.Context) error {
	for i := range b.opts.Clients {
		c, err := b.opts.Target.Connect(ctx, DialOptions{Source: b.opts.Source})
		if err != nil {
			b.closeClients()
			return fmt.Errorf("bystander client %d: %w", i, err)
		}
		bc := &bystanderClient{conn: c, got: map[string][]int{}, ended: map[string]bool{}, endedCh: make(chan struct{})}
		b.clients = append(b.clients, bc)
		for _, ch := range b.opts.Channels {
			if err := c.Subscribe(ch, "", ""); err != nil {
				b.closeClients()
				return fmt.Errorf("bystander client %d: %w", i, err)
			}
			if _, _, err := c.Await(protocol.EventSubscriptionSucceeded, ch, 10*time.Second); err != nil {
				b.closeClients()
				return fmt.Errorf("bystander client %d on %s: %w", i, ch, err)
			}
		}
	}
	for _, bc := range b.clients {
		go bc.read(len(b.opts.Channels))
	}
	ctx, b.cancel = context.WithCancel(context.Background())
	go b.run(ctx)
	return nil
}

// run triggers events at the rate until cancelled.
func (b *Bystander) run(ctx context.Context) {
	defer close(b.done)
	interval := time.Duration(float64(time.Second) / b.opts.Rate)
	next := time.Now()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(interval)
		if d := time.Since(next); d > time.Second {
			next = time.Now() // fell behind (the API was slow): don't burst
		}
		ch := b.opts.Channels[i%len(b.opts.Channels)]
		n := b.seq[ch]
		b.seq[ch]++
		switch b.trigger(ch, tickEvent, strconv.Itoa(n)) {
		case sentOK:
			b.acked[ch] = append(b.acked[ch], n)
			b.accepted.Add(1)
		case sentUnsure:
			if b.unsure[ch] == nil {
				b.unsure[ch] = map[int]bool{}
			}
			b.unsure[ch][n] = true
		}
	}
}

type sendOutcome int

const (
	sentOK     sendOutcome = iota
	sentUnsure             // the request went out and no answer came back
	sentFailed             // refused: nothing was stored
)

// trigger posts one event, retrying while the gateway refuses it in a way
// that says nothing was stored (503, 429) or the request never left.
func (b *Bystander) trigger(channel, event, data string) sendOutcome {
	deadline := time.Now().Add(b.opts.RetryFor)
	backoff := 10 * time.Millisecond
	for {
		b.trace.wrote.Store(false)
		r := b.api.Trigger([]string{channel}, event, data, "")
		switch {
		case r.Status == http.StatusOK:
			return sentOK
		case r.Status == -1 && b.trace.wrote.Load():
			b.failed = append(b.failed, fmt.Sprintf("%s %s on %s: sent, no answer: %s", event, data, channel, r.Body))
			return sentUnsure
		case r.Status == -1, r.Status == http.StatusServiceUnavailable, r.Status == http.StatusTooManyRequests:
			if time.Now().After(deadline) {
				b.failed = append(b.failed, fmt.Sprintf("%s %s on %s: still %d %s after %v", event, data, channel, r.Status, r.Body, b.opts.RetryFor))
				return sentFailed
			}
			b.retries++
			time.Sleep(backoff)
			backoff = min(2*backoff, 500*time.Millisecond)
		default:
			b.failed = append(b.failed, fmt.Sprintf("%s %s on %s: %d %s", event, data, channel, r.Status, r.Body))
			return sentFailed
		}
	}
}

// Stop ends the stream, sends an end marker on every channel, waits (up to
// DrainTimeout) until every client has it, closes the clients and works
// out the result.
func (b *Bystander) Stop() BystanderResult {
	if b.stopped || b.cancel == nil {
		return b.result
	}
	b.stopped = true
	b.cancel()
	<-b.done
	for _, ch := range b.opts.Channels {
		if b.trigger(ch, endEvent, "") != sentOK {
			b.failed = append(b.failed, "end marker on "+ch+" not accepted")
		}
	}
	deadline := time.After(b.opts.DrainTimeout)
	for _, bc := range b.clients {
		select {
		case <-bc.endedCh:
		case <-deadline:
		}
	}
	b.closeClients()
	b.transport.CloseIdleConnections()
	b.result = b.compute()
	return b.result
}

// Accepted is how many events the API has accepted so far: a caller can
// wait for the stream to move on.
func (b *Bystander) Accepted() int { return int(b.accepted.Load()) }

// Result is what Stop returned.
func (b *Bystander) Result() BystanderResult { return b.result }

func (b *Bystander) closeClients() {
	for _, bc := range b.clients {
		bc.stop()
	}
}

func (b *Bystander) compute() BystanderResult {
	r := BystanderResult{Retries: b.retries, Failed: b.failed}
	for _, ch := range b.opts.Channels {
		r.Expected += len(b.acked[ch])
		r.Unsure += len(b.unsure[ch])
	}
	for i, bc := range b.clients {
		bc.mu.Lock()
		cr := ClientResult{Client: i, Expected: r.Expected, Err: bc.err, InvalidUTF8: bc.invalid}
		for _, ch := range b.opts.Channels {
			got := bc.got[ch]
			cr.Received += len(got)
			if !bc.ended[ch] {
				cr.NoEnd = append(cr.NoEnd, ch)
			}
			count := map[int]int{}
			last := -1
			for _, n := range got {
				count[n]++
				if count[n] > 1 {
					cr.Duplicates++
				} else if n < last {
					cr.OutOfOrder++
				}
				last = max(last, n)
			}
			want := map[int]bool{}
			for _, n := range b.acked[ch] {
				want[n] = true
				if count[n] == 0 {
					cr.Missing = append(cr.Missing, ch+"#"+strconv.Itoa(n))
				}
			}
			for n := range count {
				if !want[n] && !b.unsure[ch][n] {
					cr.Unexpected = append(cr.Unexpected, ch+"#"+strconv.Itoa(n))
				}
			}
		}
		sort.Strings(cr.Unexpected)
		bc.mu.Unlock()
		r.Clients = append(r.Clients, cr)
	}
	return r
}

// BystanderResult is what the bystander's clients got.
type BystanderResult struct {
	// Expected is the events the API accepted (200), each of which every
	// client must get; Unsure the ones whose answer was lost (each may
	// arrive at most once).
	Expected, Unsure int
	// Retries counts triggers answered 503 or 429 and sent again.
	Retries int
	// Failed lists triggers the API never accepted, or whose answer was
	// lost (the unsure ones): either is a failure of the gateway's API.
	Failed  []string
	Clients []ClientResult
}

// ClientResult is one client's account.
type ClientResult struct {
	Client             int
	Expected, Received int
	// Missing and Unexpected name events as channel#number.
	Missing, Unexpected []string
	Duplicates          int
	OutOfOrder          int
	InvalidUTF8         int
	NoEnd               []string // channels whose end marker never came
	Err                 error    // the connection failed before Stop
}

// Err is nil when every client got every accepted event once, in order,
// and the connections and the API stayed up.
func (r BystanderResult) Err() error {
	var errs []error
	if len(r.Failed) > 0 {
		errs = append(errs, fmt.Errorf("%d triggers failed: %s", len(r.Failed), firstFew(r.Failed)))
	}
	if r.Expected == 0 {
		errs = append(errs, errors.New("no event was accepted"))
	}
	for _, c := range r.Clients {
		if len(c.Missing) > 0 || len(c.Unexpected) > 0 || c.Duplicates > 0 || c.OutOfOrder > 0 || c.InvalidUTF8 > 0 || len(c.NoEnd) > 0 || c.Err != nil {
			errs = append(errs, fmt.Errorf("client %d: received %d of %d; missing %d %s; unexpected %s; %d duplicates, %d out of order, %d invalid UTF-8; no end marker on %v; error %v",
				c.Client, c.Received, c.Expected, len(c.Missing), firstFew(c.Missing), firstFew(c.Unexpected), c.Duplicates, c.OutOfOrder, c.InvalidUTF8, c.NoEnd, c.Err))
		}
	}
	return errors.Join(errs...)
}

func (r BystanderResult) String() string {
	return fmt.Sprintf("bystander: %d events accepted (%d unsure, %d retries) to %d clients", r.Expected, r.Unsure, r.Retries, len(r.Clients))
}

func firstFew(s []string) string {
	if len(s) > 5 {
		return strings.Join(s[:5], ", ") + fmt.Sprintf(" and %d more", len(s)-5)
	}
	return strings.Join(s, ", ")
}

type bystanderClient struct {
	conn    *Conn
	stopped atomic.Bool
	endedCh chan struct{}

	mu      sync.Mutex
	got     map[string][]int
	ended   map[string]bool
	invalid int
	err     error
}

func (bc *bystanderClient) stop() {
	bc.stopped.Store(true)
	bc.conn.Close()
}

// read records every event until the connection ends. It answers the
// server's pings, as pusher-js does, so that it can run for an hour.
func (bc *bystanderClient) read(channels int) {
	for {
		m, err := bc.conn.ReadMessage(time.Hour)
		if err != nil {
			if bc.stopped.Load() {
				return
			}
			bc.mu.Lock()
			if errors.Is(err, ErrInvalidUTF8) {
				bc.invalid++
				bc.mu.Unlock()
				continue
			}
			bc.err = err
			bc.mu.Unlock()
			return
		}
		switch m.Event {
		case protocol.EventPing:
			_ = bc.conn.SendJSON(map[string]any{"event": protocol.EventPong, "data": map[string]any{}})
		case tickEvent:
			n, err := strconv.Atoi(m.DataString())
			bc.mu.Lock()
			if err != nil {
				bc.err = fmt.Errorf("bad tick %s", m.Raw)
			} else {
				bc.got[m.Channel] = append(bc.got[m.Channel], n)
			}
			bc.mu.Unlock()
		case endEvent:
			bc.mu.Lock()
			if !bc.ended[m.Channel] {
				bc.ended[m.Channel] = true
				if len(bc.ended) == channels {
					close(bc.endedCh)
				}
			}
			bc.mu.Unlock()
		}
	}
}

// traceTransport records whether the last request was written, to tell a
// request that never left (safe to send again) from one whose answer was
// lost (it may have been stored).
type traceTransport struct {
	base  http.RoundTripper
	wrote atomic.Bool
}

func (t *traceTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			t.wrote.Store(true)
		}
	}}
	return t.base.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
}

// HeaderTransport adds headers to every request (X-Resound-Fault, say).
type HeaderTransport struct {
	Base   http.RoundTripper
	Header http.Header
}

// RoundTrip implements http.RoundTripper.
func (t HeaderTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, v := range t.Header {
		req.Header[k] = v
	}
	return t.Base.RoundTrip(req)
}
