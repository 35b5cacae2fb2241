package adversarial

import (
	"bufio"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/attack"
)

// 40 sockets send an endless header line to the WebSocket path and 40 to
// the HTTP API for 8 s, reconnecting whenever closed: each is answered
// 431 and closed once past RESOUND_MAX_REQUEST_HEAD, and the process does
// not grow (the issue measured 4.6 GB).
func TestEndlessHeader(t *testing.T) {
	// A long handshake timeout: only the head bound may close them.
	g, b, before := setup(t, "RESOUND_MAX_REQUEST_HEAD=16384", "RESOUND_HANDSHAKE_TIMEOUT=60")
	ctx := testContext(t, 2*time.Minute)

	// Just under the bound is a normal upgrade.
	c, err := g.target.Dial(ctx, attack.DialOptions{Source: otherIP, Header: http.Header{"X-Pad": {strings.Repeat("a", 15000)}}})
	if err != nil {
		t.Fatalf("an upgrade with a 15,000-byte header was refused: %v", err)
	}
	c.Close()
	// Just over it, a head that then stops: 431.
	nc, err := attack.DialTCP(ctx, g.addr, attack.DialOptions{Source: otherIP})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = nc.Write([]byte(g.target.WebSocketHead() + "X-Pad: " + strings.Repeat("a", 16384) + "\r\n"))
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a head past 16 KiB got %v (%v), want 431", resp, err)
	}
	_ = nc.Close()

	rss := attack.WatchRSS(g.pid(), 50*time.Millisecond)
	var ws, api attack.EndlessHeaderResult
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ws = attack.EndlessHeader(ctx, g.addr, attack.EndlessHeaderOptions{
			Sockets: 40, Head: g.target.WebSocketHead(), Duration: 8 * time.Second, Reconnect: true, Source: attackerIP})
	}()
	go func() {
		defer wg.Done()
		body := []byte(`{"name":"e","channels":["c"],"data":"d"}`)
		api = attack.EndlessHeader(ctx, g.addr, attack.EndlessHeaderOptions{
			Sockets: 40, Head: g.target.APIHead(http.MethodPost, "/events", body), Duration: 8 * time.Second, Reconnect: true, Source: spooferIP})
	}()
	wg.Wait()
	rssGrowth(t, before, rss, 64*mib)

	for _, r := range []struct {
		path string
		res  attack.EndlessHeaderResult
	}{{"WebSocket", ws}, {"HTTP API", api}} {
		t.Logf("%s path: %d sockets, statuses %v, %d never closed, at most %d KiB sent by one",
			r.path, r.res.Attempts, r.res.Statuses, r.res.Unclosed, r.res.MaxSent>>10)
		if r.res.Attempts < 40 || r.res.DialErrors > 0 {
			t.Errorf("%s path: %d sockets connected, %d could not", r.path, r.res.Attempts, r.res.DialErrors)
		}
		if r.res.Unclosed > 0 {
			t.Errorf("%s path: %d of %d sockets sending an endless header were never closed", r.path, r.res.Unclosed, r.res.Attempts)
		}
		if r.res.Statuses[http.StatusRequestHeaderFieldsTooLarge] != r.res.Attempts {
			t.Errorf("%s path: statuses %v for %d sockets, want 431 for each", r.path, r.res.Statuses, r.res.Attempts)
		}
	}
	g.expectHits(t, before, "request_head", ws.Attempts+api.Attempts+1)
	finish(t, g, b, before)
}

// More sockets than RESOUND_MAX_HANDSHAKES send an upgrade's head a byte
// at a time: the excess get 503 at once, the rest are closed by
// RESOUND_HANDSHAKE_TIMEOUT, and a normal client connects afterwards. API
// requests sent as slowly are closed by the same timeout.
func TestSlowloris(t *testing.T) {
	g, b, before := setup(t, "RESOUND_MAX_HANDSHAKES=200", "RESOUND_HANDSHAKE_TIMEOUT=2")
	ctx := testContext(t, 2*time.Minute)

	res := attack.Slowloris(ctx, g.addr, attack.SlowlorisOptions{
		Sockets: 250, Head: g.target.WebSocketHead(), Interval: 300 * time.Millisecond, Timeout: 30 * time.Second, Source: attackerIP})
	t.Logf("slowloris: %d sockets, statuses %v, %d never closed", res.Opened, res.Statuses, res.Unclosed)
	if res.Opened != 250 || res.Unclosed > 0 {
		t.Errorf("%d of 250 sockets opened, %d never closed", res.Opened, res.Unclosed)
	}
	for status := range res.Statuses {
		if status != 0 && status != http.StatusServiceUnavailable && status != http.StatusRequestTimeout {
			t.Errorf("slow sockets got statuses %v; want 503 for the refused, nothing or 408 for the timed out", res.Statuses)
		}
	}
	refused, timedOut := g.hits(t, before, "handshakes"), g.hits(t, before, "handshake_timeout")
	t.Logf("limit hits: handshakes %d, handshake_timeout %d", refused, timedOut)
	if refused < 1 || timedOut < 1 || refused+timedOut < res.Opened {
		t.Errorf("limit hits handshakes %d + handshake_timeout %d; want both counted, one for each of %d sockets", refused, timedOut, res.Opened)
	}
	if res.Statuses[http.StatusServiceUnavailable] < 1 || res.Statuses[http.StatusServiceUnavailable] > refused {
		t.Errorf("%d sockets saw 503, %d were counted as refused", res.Statuses[http.StatusServiceUnavailable], refused)
	}

	// The first request on an API connection has the same time.
	api := attack.Slowloris(ctx, g.addr, attack.SlowlorisOptions{
		Sockets: 20, Head: g.target.APIHead(http.MethodGet, "/channels", nil), Interval: 300 * time.Millisecond, Timeout: 30 * time.Second, Source: attackerIP})
	t.Logf("slow API requests: %d sockets, statuses %v, %d never closed", api.Opened, api.Statuses, api.Unclosed)
	if api.Opened != 20 || api.Unclosed > 0 || api.Statuses[0]+api.Statuses[http.StatusRequestTimeout] != 20 {
		t.Errorf("%d of 20 slow API requests sent, statuses %v, %d never closed; want all closed by the timeout", api.Opened, api.Statuses, api.Unclosed)
	}
	g.expectHits(t, before, "handshake_timeout", timedOut+20)
	finish(t, g, b, before)
}

// More idle keep-alive API connections than RESOUND_MAX_HTTP_CONNECTIONS:
// the excess get 503 and are closed. The bystander, which sends each
// trigger on a new connection, is refused too while they are held, and
// goes on once some close.
func TestHTTPConnections(t *testing.T) {
	g := startGateway(t, "RESOUND_MAX_HTTP_CONNECTIONS=50")
	b := g.startBystander(t, attack.BystanderOptions{FreshConnections: true})
	before := g.level(t)
	ctx := testContext(t, 2*time.Minute)

	h, err := attack.OpenIdleHTTP(ctx, g.target, 60, attackerIP)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(-1)
	t.Logf("idle API connections: statuses %v, %d held", h.Statuses, h.Held())
	// The bystander holds a slot now and then, for one request.
	if ok := h.Statuses[http.StatusOK]; ok < 48 || ok > 50 || h.Statuses[http.StatusServiceUnavailable] != 60-ok {
		t.Errorf("60 connections got %v; want 48-50 answered 200 and the rest 503", h.Statuses)
	}
	if h.RefusedOpen > 0 {
		t.Errorf("%d connections answered 503 were left open", h.RefusedOpen)
	}
	// Held full for a while, then released in part: the stream goes on.
	time.Sleep(2 * time.Second)
	at := b.Accepted()
	h.Close(10)
	waitFor(t, g.proc, 30*time.Second, "the bystander's triggers to go through again", func() bool { return b.Accepted() >= at+20 })
	if hits := g.hits(t, before, "http_connections"); hits < h.Statuses[http.StatusServiceUnavailable] {
		t.Errorf("resound_limit_hits_total{limit=\"http_connections\"} grew by %d, but %d connections were refused", hits, h.Statuses[http.StatusServiceUnavailable])
	}
	h.Close(-1)
	finish(t, g, b, before)
}

// RESOUND_MAX_CONNECTIONS_PER_IP=20: the 21st connection from one address
// gets 429, WebSocket or HTTP, while other addresses connect;
// X-Forwarded-For from an untrusted peer changes nothing; from a trusted
// proxy, its X-Forwarded-For or PROXY header names the client that counts.
func TestConnectionsPerIP(t *testing.T) {
	t.Run("direct", func(t *testing.T) {
		g, b, before := setup(t, "RESOUND_MAX_CONNECTIONS_PER_IP=20")
		ctx := testContext(t, 2*time.Minute)
		res := attack.ConnectMany(ctx, g.target, 30, attack.DialOptions{Source: attackerIP})
		defer res.Conns.Close()
		expectCapped(t, "30 connections from one address", res, 20)
		body := []byte(`{"name":"e","channels":["x"],"data":"d"}`)
		if status, err := attack.RawRequest(ctx, g.addr, g.target.APIHead(http.MethodPost, "/events", body), body, attackerIP); status != http.StatusTooManyRequests {
			t.Errorf("an API request from the capped address got %d (%v), want 429", status, err)
		}
		other, err := g.target.Connect(ctx, attack.DialOptions{Source: otherIP})
		if err != nil {
			t.Fatalf("another address could not connect: %v", err)
		}
		other.Close()

		// Spoofed X-Forwarded-For from an untrusted peer: still one address.
		var spoofed attack.ConnectResult
		spoofed.Statuses = map[int]int{}
		for i := range 30 {
			r := attack.ConnectMany(ctx, g.target, 1, attack.DialOptions{Source: spooferIP,
				Header: http.Header{"X-Forwarded-For": {"198.51.100." + strconv.Itoa(i+1)}}})
			spoofed.Conns = append(spoofed.Conns, r.Conns...)
			for k, v := range r.Statuses {
				spoofed.Statuses[k] += v
			}
			spoofed.Errors = append(spoofed.Errors, r.Errors...)
		}
		defer spoofed.Conns.Close()
		expectCapped(t, "30 connections with spoofed X-Forwarded-For", spoofed, 20)
		g.expectHits(t, before, "connections_per_ip", 10+1+10)

		// Closed connections give their slots back.
		res.Conns.Close()
		waitFor(t, g.proc, 10*time.Second, "a connection from the capped address once it closed its others", func() bool {
			c, err := g.target.Connect(ctx, attack.DialOptions{Source: attackerIP})
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		spoofed.Conns.Close()
		finish(t, g, b, before)
	})

	t.Run("trusted X-Forwarded-For", func(t *testing.T) {
		throughProxy(t, func(client string) attack.DialOptions {
			return attack.DialOptions{Source: proxyIP, Header: http.Header{"X-Forwarded-For": {client}}}
		})
	})
	t.Run("PROXY protocol", func(t *testing.T) {
		throughProxy(t, func(client string) attack.DialOptions {
			return attack.DialOptions{Source: proxyIP, Preamble: attack.ProxyV1(client, "127.0.0.1", 40000, 8080)}
		}, "RESOUND_PROXY_PROTOCOL=true")
	})
}

// throughProxy connects 30 times from the trusted proxy on behalf of one
// client (via says how), then once for another client: the client named,
// not the proxy, is what the cap counts.
func throughProxy(t *testing.T, via func(client string) attack.DialOptions, settings ...string) {
	g, b, before := setup(t, append([]string{"RESOUND_MAX_CONNECTIONS_PER_IP=20", "RESOUND_TRUSTED_PROXIES=" + proxyIP}, settings...)...)
	ctx := testContext(t, 2*time.Minute)
	res := attack.ConnectMany(ctx, g.target, 30, via("203.0.113.7"))
	defer res.Conns.Close()
	expectCapped(t, "30 connections through the proxy for one client", res, 20)
	c, err := g.target.Connect(ctx, via("203.0.113.8"))
	if err != nil {
		t.Fatalf("another client through the same proxy could not connect: %v", err)
	}
	c.Close()
	g.expectHits(t, before, "connections_per_ip", 10)
	res.Conns.Close()
	finish(t, g, b, before)
}

func expectCapped(t *testing.T, what string, r attack.ConnectResult, capped int) {
	t.Helper()
	if len(r.Conns) != capped || r.Statuses[http.StatusTooManyRequests] != 30-capped || len(r.Errors) > 0 {
		t.Errorf("%s: %d connected, refusals %v, errors %v; want %d connected and %d refused with 429",
			what, len(r.Conns), r.Statuses, errors.Join(r.Errors...), capped, 30-capped)
	}
}
