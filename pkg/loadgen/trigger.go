package loadgen

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/resoundhq/resound/protocol"
)

// signedQuery returns the query of a Pusher-signed API request: auth_key,
// auth_timestamp, auth_version=1.0, body_md5 (when there is a body) and
// auth_signature over "METHOD\npath\nsorted query".
func signedQuery(key, secret, method, path string, body []byte, ts int64) url.Values {
	q := url.Values{}
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
	mu      sync.Mutex
	fails   map[string]int64
	fatalMu sync.Once
	fatal   string

	// centrifugo: events go through Centrifugo's server API, with secret
	// as its API key.
	centrifugo bool
}

func newTrigger(t target, cfg *Config, names []string) *trigger {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * cfg.Inflight,
		MaxIdleConnsPerHost: 2 * cfg.Inflight,
		MaxConnsPerHost:     cfg.Inflight,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &trigger{
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		base:   t.httpBase, prefix: t.prefix, appID: cfg.AppID, key: cfg.Key, secret: cfg.Secret,
		names: names, batch: cfg.Batch, fails: map[string]int64{},
		centrifugo: cfg.Protocol == ProtocolCentrifugo,
	}
}

func (t *trigger) fail(kind string) {
	t.mu.Lock()
	t.fails[kind]++
	t.mu.Unlock()
}

// appendData appends the event's data: a JSON string holding
// {"seq":N,"ts":T}.
func appendData(dst []byte, seq, ts int64) []byte {
	dst = append(dst, `"{\"seq\":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,\"ts\":`...)
	dst = strconv.AppendInt(dst, ts, 10)
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
		dst = appendData(dst, evs[0].seq, ts)
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
		dst = appendData(dst, e.seq, ts)
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
// and reads the whole answer.
func (t *trigger) post(ctx context.Context, path string, body []byte) error {
	var req *http.Request
	var err error
	if t.centrifugo {
		req, err = t.centrifugoRequest(ctx, path, body)
	} else {
		q := signedQuery(t.key, t.secret, http.MethodPost, path, body, time.Now().Unix())
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, t.base+t.prefix+path+"?"+q.Encode(), bytes.NewReader(body))
	}
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.fail("timeout")
		} else {
			t.fail("network")
		}
		return err
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
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
	chans    []int
	rate     float64 // events per second (0: as fast as possible)
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
	evs := make([]pendingEvent, 0, t.batch)
	count := make([]int64, len(l.chans))
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) || (l.limit > 0 && l.events >= l.limit) {
			return
		}
		n := int64(t.batch)
		if l.rate > 0 {
			due := int64(l.rate*now.Sub(start).Seconds()) + 1
			if due <= l.events {
				next := start.Add(time.Duration(float64(l.events) / l.rate * float64(time.Second)))
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
		backoff := 10 * time.Millisecond
		for {
			ts := time.Now()
			path, body := t.body(buf[:0], evs, ts.UnixNano())
			buf = body
			err := t.post(ctx, path, body)
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
			sleep(ctx, backoff)
			backoff = min(2*backoff, time.Second)
		}
		l.requests++
		l.events += n
		for i := range count {
			l.sent[i] += count[i]
		}
		rr = (rr + int(n)) % len(l.chans)
	}
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
