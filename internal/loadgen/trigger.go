package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resoundhq/resound/protocol"
)

// signedQuery returns the query of a Pusher-signed API request: params
// (may be nil), auth_key, auth_timestamp, auth_version=1.0, body_md5 (when
// there is a body) and auth_signature over "METHOD\npath\nsorted query".
func signedQuery(key, secret, method, path string, body []byte, ts int64, params url.Values) url.Values {
	q := url.Values{}
	for k, v := range params {
		q[k] = v
	}
	q.Set("auth_key", key)
	q.Set("auth_timestamp", strconv.FormatInt(ts, 10))
	q.Set("auth_version", "1.0")
	if len(body) > 0 {
		q.Set("body_md5", protocol.BodyMD5(body))
	}
	q.Set("auth_signature", protocol.SignRequest(secret, method, path, q))
	return q
}

// trigger posts events through the HTTP API.
type trigger struct {
	client  *http.Client
	base    string // http://host:port
	prefix  string // path prefix (not signed, as pusher-http-php signs)
	appID   string
	key     string
	secret  string
	names   []string
	batch   int
	pad     []byte // -payload bytes of padding
	mu      sync.Mutex
	fails   map[string]int64
	fatalMu sync.Once
	fatal   string

	// centrifugo: events go through Centrifugo's server API, with secret
	// as its API key.
	centrifugo bool
	// issued is, per channel, the highest sequence number put in a
	// request so far, stored before its first attempt is sent: a
	// connection that subscribed when issued was X can expect every
	// acknowledged event above X (see conn).
	issued []atomic.Int64
	// acked and failed count acknowledged events and failed requests, for
	// the progress lines.
	acked, failed atomic.Int64
	// resent are the events sent again after a failed request.
	resent *resentSet
}

// resentSet is, per channel, the sequence numbers sent again after a
// request that failed (a 5xx, a timeout, a broken connection). The failed
// request may have been stored all the same (the API answers 503 when it
// cannot tell), so a second delivery of such an event is the producer's
// own duplicate: the server promises once for an event it answered 200,
// and the first answer was not that. Receivers count those apart
// (FanoutStats.DuplicatesResent); every other duplicate is the server's.
type resentSet struct {
	mu   sync.Mutex
	seqs map[resentKey]struct{}
}

type resentKey struct {
	ch  int
	seq int64
}

func newResentSet() *resentSet { return &resentSet{seqs: map[resentKey]struct{}{}} }

func (s *resentSet) add(ch int, seq int64) {
	s.mu.Lock()
	s.seqs[resentKey{ch, seq}] = struct{}{}
	s.mu.Unlock()
}

// has reports whether event seq of channel ch was sent again; s may be
// nil (a shard that only receives knows of no resends).
func (s *resentSet) has(ch int, seq int64) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.seqs[resentKey{ch, seq}]
	return ok
}

func newTrigger(t target, cfg *Config, names []string, issued []atomic.Int64, tlsConfig *tls.Config) *trigger {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * cfg.Inflight,
		MaxIdleConnsPerHost: 2 * cfg.Inflight,
		MaxConnsPerHost:     cfg.Inflight,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		TLSClientConfig:     tlsConfig,
	}
	return &trigger{
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		base:   t.httpBase, prefix: t.prefix, appID: cfg.AppID, key: cfg.Key, secret: cfg.Secret,
		names: names, batch: cfg.Batch, fails: map[string]int64{}, issued: issued, resent: newResentSet(),
		pad:        bytes.Repeat([]byte("x"), cfg.Payload),
		centrifugo: cfg.Protocol == ProtocolCentrifugo,
	}
}

func (t *trigger) fail(kind string) {
	t.failed.Add(1)
	t.mu.Lock()
	t.fails[kind]++
	t.mu.Unlock()
}

// appendData appends the event's data: a JSON string holding
// {"seq":N,"ts":T}, or {"seq":N,"ts":T,"pad":"xxx…"} with -payload.
func (t *trigger) appendData(dst []byte, seq, ts int64) []byte {
	dst = append(dst, `"{\"seq\":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,\"ts\":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	if len(t.pad) > 0 {
		dst = append(dst, `,\"pad\":\"`...)
		dst = append(dst, t.pad...)
		dst = append(dst, `\"`...)
	}
	return append(dst, `}"`...)
}

// body builds one request for the events (channel, seq) in evs.
func (t *trigger) body(dst []byte, evs []pendingEvent, ts int64) (path string, b []byte) {
	if t.centrifugo {
		return t.centrifugoBody(dst, evs, ts)
	}
	if len(evs) == 1 && t.batch == 1 {
		dst = append(dst, `{"name":"lg","channels":[`...)
		dst = protocol.AppendString(dst, t.names[evs[0].ch])
		dst = append(dst, `],"data":`...)
		dst = t.appendData(dst, evs[0].seq, ts)
		return "/apps/" + t.appID + "/events", append(dst, '}')
	}
	dst = append(dst, `{"batch":[`...)
	for i, e := range evs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"name":"lg","channel":`...)
		dst = protocol.AppendString(dst, t.names[e.ch])
		dst = append(dst, `,"data":`...)
		dst = t.appendData(dst, e.seq, ts)
		dst = append(dst, '}')
	}
	return "/apps/" + t.appID + "/batch_events", append(dst, "]}"...)
}

type pendingEvent struct {
	ch  int
	seq int64
}

var errFatalStatus = errors.New("request refused")

// post sends one request (Pusher-signed, or with Centrifugo's API key)
// and reads the whole answer: on lc when it is not nil (a sending lane's
// own connection), else with the shared client.
func (t *trigger) post(ctx context.Context, lc *laneConn, path string, body []byte) error {
	var req *http.Request
	var err error
	if t.centrifugo {
		req, err = t.centrifugoRequest(ctx, path, body)
	} else {
		q := signedQuery(t.key, t.secret, http.MethodPost, path, body, time.Now().Unix(), nil)
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, t.base+t.prefix+path+"?"+q.Encode(), bytes.NewReader(body))
	}
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	var resp *http.Response
	if lc != nil {
		resp, err = lc.do(req)
	} else {
		resp, err = t.client.Do(req)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isTimeout(err) {
			t.fail("timeout")
		} else {
			t.fail("network")
		}
		return err
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if lc != nil {
		lc.drain(resp)
	} else {
		_ = resp.Body.Close()
	}
	if resp.StatusCode == http.StatusOK {
		if t.centrifugo {
			return t.centrifugoResult(msg)
		}
		return nil
	}
	t.fail("status_" + strconv.Itoa(resp.StatusCode))
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
		t.fatalMu.Do(func() {
			t.fatal = "HTTP API answered " + resp.Status + ": " + string(msg)
		})
		return errFatalStatus
	}
	return errors.New(resp.Status)
}

// lane sends the events of some channels, one request at a time, so that
// each channel's events are accepted in sequence order.
type lane struct {
	chans []int
	rate  float64 // events per second (0: as fast as possible)
	// phase is where in its period the lane's events fall, as a fraction
	// of 1/rate. Lanes of the same rate spread over the period, so that
	// the sum of their events is evenly paced. Lanes started together
	// with the same phase send in bursts (64 requests at once, every
	// 64 ms at 1,000 events/s), and the time a request then waits behind
	// the others of its burst, at any server, was most of its latency.
	phase    float64
	limit    int64   // events at most (0: no limit, -1: none)
	sent     []int64 // acknowledged events per channel (index as chans)
	events   int64
	requests int64
	hist     Hist // request latency
}

// run sends until end, the limit, or ctx.
func (l *lane) run(ctx context.Context, t *trigger, end time.Time, stop func()) {
	l.sent = make([]int64, len(l.chans))
	if l.limit < 0 {
		return
	}
	start := time.Now()
	rr := 0
	var buf []byte
	lc := newLaneConn(t.base, t.client.Timeout)
	if lc != nil {
		defer lc.close()
	}
	evs := make([]pendingEvent, 0, t.batch)
	count := make([]int64, len(l.chans))
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) || (l.limit > 0 && l.events >= l.limit) {
			return
		}
		n := int64(t.batch)
		if l.rate > 0 {
			due := l.dueBy(now.Sub(start))
			if due <= l.events {
				next := start.Add(l.dueAt(l.events))
				sleep(ctx, min(time.Until(next), time.Until(end)))
				continue
			}
			n = min(n, due-l.events)
		}
		if l.limit > 0 {
			n = min(n, l.limit-l.events)
		}
		evs = evs[:0]
		clear(count)
		for j := int64(0); j < n; j++ {
			i := (rr + int(j)) % len(l.chans)
			count[i]++
			evs = append(evs, pendingEvent{ch: l.chans[i], seq: l.sent[i] + count[i]})
		}
		for _, e := range evs {
			// Before the first attempt, so that a subscription seen
			// before this store is in place before the request goes out.
			t.issued[e.ch].Store(e.seq)
		}
		backoff := 10 * time.Millisecond
		for {
			ts := time.Now()
			path, body := t.body(buf[:0], evs, ts.UnixNano())
			buf = body
			err := t.post(ctx, lc, path, body)
			l.hist.Record(int64(time.Since(ts)))
			if err == nil {
				break
			}
			if err == errFatalStatus {
				stop()
				return
			}
			if ctx.Err() != nil || !time.Now().Add(backoff).Before(end) {
				return
			}
			for _, e := range evs {
				t.resent.add(e.ch, e.seq)
			}
			sleep(ctx, backoff)
			backoff = min(2*backoff, time.Second)
		}
		l.requests++
		l.events += n
		t.acked.Add(n)
		for i := range count {
			l.sent[i] += count[i]
		}
		rr = (rr + int(n)) % len(l.chans)
	}
}

// dueAt is when the lane's event k (from 0) is due, after its start:
// (k+phase)/rate.
func (l *lane) dueAt(k int64) time.Duration {
	return time.Duration((float64(k) + l.phase) / l.rate * float64(time.Second))
}

// dueBy is how many of the lane's events are due elapsed after its start.
func (l *lane) dueBy(elapsed time.Duration) int64 {
	x := l.rate*elapsed.Seconds() - l.phase
	if x < 0 {
		return 0
	}
	return int64(x) + 1
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// endEvent is the event a triggering shard sends on each of its channels
// after the last acknowledged load event; its data is {"sent":N}. Shards
// that only receive (ShardConns) take a channel's count from it. Per-channel
// order puts it after every load event of the channel.
const endEvent = "lg-end"

// sendEnd triggers endEvent with each channel's count (sent, by channel
// index) on the channels chans, retrying until end.
func (t *trigger) sendEnd(ctx context.Context, chans []int, sent []int64, end time.Time) error {
	var buf []byte
	for _, ch := range chans {
		buf = append(buf[:0], `{"name":"`+endEvent+`","channels":[`...)
		buf = protocol.AppendString(buf, t.names[ch])
		buf = append(buf, `],"data":"{\"sent\":`...)
		buf = strconv.AppendInt(buf, sent[ch], 10)
		buf = append(buf, `}"}`...)
		for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
			err := t.post(ctx, nil, "/apps/"+t.appID+"/events", buf)
			if err == nil {
				break
			}
			if err == errFatalStatus || ctx.Err() != nil || !time.Now().Add(backoff).Before(end) {
				return fmt.Errorf("sending %s on %s: %v", endEvent, t.names[ch], err)
			}
			sleep(ctx, backoff)
		}
	}
	return nil
}

// subscriptionCounts asks the server how many connections, over the whole
// cluster, are subscribed to each channel whose name starts with prefix
// (GET /channels?filter_by_prefix=…&info=subscription_count).
func (t *trigger) subscriptionCounts(ctx context.Context, prefix string) (map[string]int64, error) {
	path := "/apps/" + t.appID + "/channels"
	q := signedQuery(t.key, t.secret, http.MethodGet, path, nil, time.Now().Unix(),
		url.Values{"filter_by_prefix": {prefix}, "info": {"subscription_count"}})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base+t.prefix+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s %s", path, resp.Status, b)
	}
	var body struct {
		Channels map[string]struct {
			SubscriptionCount int64 `json:"subscription_count"`
		} `json:"channels"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, fmt.Errorf("GET %s: %v", path, err)
	}
	out := make(map[string]int64, len(body.Channels))
	for name, c := range body.Channels {
		out[name] = c.SubscriptionCount
	}
	return out, nil
}

// Broadcaster sends the events of a channel that a harness triggers
// rather than a load generator (the all channel of Config.All), numbered
// 1, 2, 3… in the format the load generator counts, one request each.
type Broadcaster struct {
	t   *trigger
	seq int64
}

// NewBroadcaster triggers on channel through the HTTP API at url
// (http://host:port[/prefix]).
func NewBroadcaster(url, appID, key, secret, channel string) (*Broadcaster, error) {
	tg, err := parseTarget(url, key, ProtocolPusher)
	if err != nil {
		return nil, err
	}
	cfg := &Config{AppID: appID, Key: key, Secret: secret, Inflight: 1, Batch: 1}
	return &Broadcaster{t: newTrigger(tg, cfg, []string{channel}, make([]atomic.Int64, 1), nil)}, nil
}

// Send triggers the next event and returns its number. It does not retry:
// a request that failed may still have been stored, and sending the number
// again would be a duplicate to every subscriber, so a failure is the
// caller's to report. The event's latency counts from the call.
func (b *Broadcaster) Send(ctx context.Context) (int64, error) {
	seq := b.seq + 1
	path, body := b.t.body(nil, []pendingEvent{{ch: 0, seq: seq}}, time.Now().UnixNano())
	b.seq = seq // taken, whatever the answer
	if err := b.t.post(ctx, nil, path, body); err != nil {
		return seq, err
	}
	return seq, nil
}
