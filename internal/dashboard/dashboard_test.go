package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/dashboard/dashboardtest"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/wire"
)

var (
	appA = config.App{ID: "100", Key: "key-a", Secret: "secret-a"}
	appB = config.App{ID: "200", Key: "key-b", Secret: "secret-b"}
)

// fixture is a dashboard on a real NATS server, served over real HTTP.
type fixture struct {
	d   *Dashboard
	srv *httptest.Server
	nc  *nats.Conn // another process's connection
	url string     // the dashboard's URL, without a trailing slash
}

func newFixture(t *testing.T, tweak func(*Options)) *fixture {
	t.Helper()
	ns := natstest.Server(t, false)
	apps, err := config.NewApps([]config.App{appA, appB})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	opts := Options{
		Context: ctx, Apps: apps, Conn: natstest.Conn(t, ns, "dashboard"), Path: "/reverb/dashboard", Token: "the-token",
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if tweak != nil {
		tweak(&opts)
	}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d)
	t.Cleanup(func() { cancel(); srv.Close() })
	return &fixture{d: d, srv: srv, nc: natstest.Conn(t, ns, "process"), url: srv.URL + "/reverb/dashboard"}
}

// client is a browser: it keeps cookies.
func client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

func post(t *testing.T, c *http.Client, url, body string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestLogin(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		name, body string
		status     int
		want       string
	}{
		{"token", `{"token":"the-token"}`, 200, `{"apps":[{"id":"100","key":"key-a"},{"id":"200","key":"key-b"}]}`},
		{"key and secret", `{"app_key":"key-b","app_secret":"secret-b"}`, 200, `{"apps":[{"id":"200","key":"key-b"}]}`},
		{"wrong token", `{"token":"nope"}`, 401, ""},
		{"another app's secret", `{"app_key":"key-a","app_secret":"secret-b"}`, 401, ""},
		{"unknown key", `{"app_key":"key-x","app_secret":"secret-a"}`, 401, ""},
		{"empty secret", `{"app_key":"key-a","app_secret":""}`, 401, ""},
		{"nothing", `{}`, 401, ""},
	}
	for _, tc := range cases {
		c := client(t)
		resp, body := post(t, c, f.url+"/api/login", tc.body)
		if resp.StatusCode != tc.status || tc.want != "" && body != tc.want {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, body)
			continue
		}
		if tc.status != 200 {
			if !strings.Contains(body, `"error"`) || len(resp.Cookies()) != 0 {
				t.Errorf("%s: %s, cookies %v", tc.name, body, resp.Cookies())
			}
			continue
		}
		ck := resp.Cookies()
		if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Path != "/reverb/dashboard" || ck[0].MaxAge != 12*3600 {
			t.Errorf("%s: cookie %+v", tc.name, ck)
		}
		if resp, body := get(t, c, f.url+"/api/apps"); resp.StatusCode != 200 || body != tc.want {
			t.Errorf("%s: apps %d %s", tc.name, resp.StatusCode, body)
		}
		// Logging out forgets the cookie.
		if resp, _ := post(t, c, f.url+"/api/logout", ``); resp.StatusCode != 200 {
			t.Errorf("%s: logout %d", tc.name, resp.StatusCode)
		}
		if resp, _ := get(t, c, f.url+"/api/apps"); resp.StatusCode != 401 {
			t.Errorf("%s: apps after logout %d", tc.name, resp.StatusCode)
		}
	}
	// Only JSON: a form from another site cannot log anyone in.
	resp, err := http.Post(f.url+"/api/login", "application/x-www-form-urlencoded", strings.NewReader("token=the-token"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("form login: %d", resp.StatusCode)
	}
}

func TestLoginRateLimited(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.LoginBurst, o.LoginEvery = 3, time.Hour })
	c := client(t)
	// Right answers cost nothing.
	for range 5 {
		if resp, _ := post(t, c, f.url+"/api/login", `{"token":"the-token"}`); resp.StatusCode != 200 {
			t.Fatalf("login: %d", resp.StatusCode)
		}
	}
	for i := range 3 {
		if resp, _ := post(t, c, f.url+"/api/login", `{"token":"guess"}`); resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d", i, resp.StatusCode)
		}
	}
	// Past the burst even the right token is refused, unchecked.
	resp, body := post(t, c, f.url+"/api/login", `{"token":"the-token"}`)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || len(resp.Cookies()) != 0 {
		t.Fatalf("over the limit: %d %s", resp.StatusCode, body)
	}
}

func TestSessionSeesItsAppsOnly(t *testing.T) {
	f := newFixture(t, nil)
	c := client(t)
	if resp, _ := post(t, c, f.url+"/api/login", `{"app_key":"key-a","app_secret":"secret-a"}`); resp.StatusCode != 200 {
		t.Fatal("login")
	}
	for _, route := range []string{"recent", "stats", "console"} {
		for _, app := range []string{"200", "999", ""} {
			if resp, body := get(t, c, f.url+"/api/"+route+"?app="+app); resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s of app %q: %d %s", route, app, resp.StatusCode, body)
			}
		}
	}
	if resp, body := get(t, c, f.url+"/api/recent?app=100"); resp.StatusCode != 200 || body != `[]` {
		t.Errorf("recent of its app: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, client(t), f.url+"/api/recent?app=100"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a session: %d", resp.StatusCode)
	}
}

func TestSessionCookie(t *testing.T) {
	clk := time.Now()
	var now atomic.Pointer[time.Time]
	now.Store(&clk)
	tick := func(o *Options) { o.Now = func() time.Time { return *now.Load() } }
	f := newFixture(t, tick)
	c := client(t)
	resp, _ := post(t, c, f.url+"/api/login", `{"app_key":"key-a","app_secret":"secret-a"}`)
	value := resp.Cookies()[0].Value
	withCookie := func(f *fixture, v string) int {
		req, _ := http.NewRequest(http.MethodGet, f.url+"/api/apps", nil)
		req.AddCookie(&http.Cookie{Name: cookieName, Value: v})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Another gateway of the cluster, configured alike, takes it.
	other := newFixture(t, tick)
	if st := withCookie(other, value); st != 200 {
		t.Fatalf("another gateway: %d", st)
	}
	// Not one whose secrets differ, nor a forged cookie.
	rotated := newFixture(t, func(o *Options) {
		tick(o)
		a := appA
		a.Secret = "rotated"
		o.Apps, _ = config.NewApps([]config.App{a, appB})
	})
	payload, _, _ := strings.Cut(value, ".")
	forged := f.d.cookieValue(session{All: true, Exp: clk.Add(time.Hour).Unix()})
	_, forgedMAC, _ := strings.Cut(forged, ".")
	for name, st := range map[string]int{
		"rotated secret": withCookie(rotated, value),
		"forged payload": withCookie(f, strings.Split(forged, ".")[0]+"."+strings.Split(value, ".")[1]),
		"swapped MAC":    withCookie(f, payload+"."+forgedMAC),
		"garbage":        withCookie(f, "x.y"),
	} {
		if st != http.StatusUnauthorized {
			t.Errorf("%s: %d", name, st)
		}
	}
	// 12 hours later it has expired.
	later := clk.Add(12*time.Hour + time.Second)
	now.Store(&later)
	if st := withCookie(f, value); st != http.StatusUnauthorized {
		t.Fatalf("expired: %d", st)
	}
}

func TestPage(t *testing.T) {
	f := newFixture(t, nil)
	c := client(t)
	resp, _ := get(t, c, f.url)
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/reverb/dashboard/" {
		t.Fatalf("no slash: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body := get(t, c, f.url+"/")
	h := resp.Header
	if resp.StatusCode != 200 || !strings.Contains(body, "<html") || !strings.HasPrefix(h.Get("Content-Type"), "text/html") ||
		h.Get("Cache-Control") != "no-cache" || !strings.HasPrefix(h.Get("Content-Security-Policy"), "default-src 'self'") ||
		h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("page: %d %v", resp.StatusCode, h)
	}
	if resp, _ := get(t, c, f.url+"/static/style.css"); resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Fatalf("static file: %d %v", resp.StatusCode, resp.Header)
	}
	for _, p := range []string{"/static/", "/static/missing.js", "/static/../ui_placeholder.go", "/static//style.css", "/index.html", "/api/nope", "x"} {
		if resp, body := get(t, c, f.url+p); resp.StatusCode != 404 || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
	if resp, _ := post(t, c, f.url+"/", ""); resp.StatusCode != 405 {
		t.Errorf("POST to the page: %d", resp.StatusCode)
	}
	if resp, _ := get(t, c, f.url+"/api/login"); resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET login: %d", resp.StatusCode)
	}
	// Beside the dashboard, Mount leaves the rest to the next handler.
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	mounted := httptest.NewServer(f.d.Mount(next))
	defer mounted.Close()
	for p, want := range map[string]int{"/reverb/dashboard/": 200, "/reverb/dashboard": 301, "/reverb/dashboardx": 418, "/reverb/apps/1/events": 418} {
		if resp, _ := get(t, c, mounted.URL+p); resp.StatusCode != want {
			t.Errorf("mounted %s: %d, want %d", p, resp.StatusCode, want)
		}
	}
}

func login(t *testing.T, f *fixture) *http.Client {
	t.Helper()
	return dashboardtest.Login(t, f.url, `{"token":"the-token"}`)
}

type event = dashboardtest.Event

var (
	stream  = dashboardtest.Events
	waitFor = dashboardtest.Await
)

// The console stream renews the app's lease while it is open, and passes
// on what the processes publish, with what their rate caps dropped.
func TestConsoleStream(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Lease = 300 * time.Millisecond })
	watches, _ := f.nc.SubscribeSync(wire.ConsoleWatch)
	_ = f.nc.Flush()
	events := stream(t, login(t, f), f.url+"/api/console?app=100")
	// Two renewals: the lease is kept up while the stream is open.
	for range 2 {
		m, err := watches.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var req wire.ConsoleWatchRequest
		if json.Unmarshal(m.Data, &req) != nil || req.App != "100" || req.UntilMS <= time.Now().UnixMilli() {
			t.Fatalf("watch request %s", m.Data)
		}
	}
	publish(t, f.nc, "100", wire.ConsoleEntry{Kind: wire.ConsoleAPIMessage, Event: "first", Dropped: 0})
	publish(t, f.nc, "100", wire.ConsoleEntry{Kind: wire.ConsoleAPIMessage, Event: "after-drops", Dropped: 4})
	publish(t, f.nc, "200", wire.ConsoleEntry{Kind: wire.ConsoleAPIMessage, Event: "other-app"})
	var got []event
	waitFor(t, events, "the entries", func(ev event) bool {
		got = append(got, ev)
		return strings.Contains(ev.Data, "after-drops")
	})
	if len(got) != 3 || !strings.Contains(got[0].Data, `"first"`) || got[1] != (event{Name: "dropped", Data: `{"count":4}`}) {
		t.Fatalf("events: %+v", got)
	}
}

func publish(t *testing.T, nc *nats.Conn, app string, e wire.ConsoleEntry) {
	t.Helper()
	e.TimeMS = time.Now().UnixMilli()
	b, _ := json.Marshal(e)
	if err := nc.Publish(console.Subject(app), b); err != nil {
		t.Fatal(err)
	}
}

// stalledWriter is a browser that stops reading: past its first write
// (the stream's opening), every write waits until it is released.
type stalledWriter struct {
	h       http.Header
	mu      sync.Mutex
	buf     strings.Builder
	writes  int
	stalled chan struct{} // closed at the first stalled write
	release chan struct{}
}

func (w *stalledWriter) Header() http.Header { return w.h }
func (w *stalledWriter) WriteHeader(int)     {}
func (w *stalledWriter) Flush()              {}
func (w *stalledWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	n := w.writes
	w.mu.Unlock()
	if n == 2 {
		close(w.stalled)
	}
	if n >= 2 {
		<-w.release
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.WriteString(string(b))
}

// A browser that reads too slowly loses entries, and is told how many;
// it holds up neither the subscription nor the other browsers.
func TestSlowReaderDoesNotBlockTheConsole(t *testing.T) {
	// A quick heartbeat brings the count of entries dropped last.
	f := newFixture(t, func(o *Options) { o.StreamBuffer, o.Heartbeat = 8, 50*time.Millisecond })
	c := login(t, f)
	slow := &stalledWriter{h: http.Header{}, stalled: make(chan struct{}), release: make(chan struct{})}
	req := httptest.NewRequest(http.MethodGet, "/reverb/dashboard/api/console?app=100", nil)
	u, _ := url.Parse(f.url + "/api/console")
	for _, ck := range c.Jar.Cookies(u) {
		req.AddCookie(ck)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req = req.WithContext(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.d.ServeHTTP(slow, req) }()
	fast := stream(t, c, f.url+"/api/console?app=100")
	// Both streams are on the app's console once the gateway holds two.
	deadline := time.Now().Add(5 * time.Second)
	for f.d.consoleStreams("100") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the streams did not open")
		}
		time.Sleep(time.Millisecond)
	}
	const total = 200
	publish(t, f.nc, "100", wire.ConsoleEntry{Kind: wire.ConsoleConnection, SocketID: "0"})
	<-slow.stalled // the slow browser's handler is stuck writing the first entry
	for i := 1; i < total; i++ {
		publish(t, f.nc, "100", wire.ConsoleEntry{Kind: wire.ConsoleConnection, SocketID: fmt.Sprint(i)})
	}
	// The fast browser gets every entry in order, or a count of those its
	// own buffer could not hold, while the slow one is still stuck.
	seen, fastDropped, last := 0, 0, -1
	waitFor(t, fast, "every entry on the fast stream, shown or counted", func(ev event) bool {
		if ev.Name == "dropped" {
			var d struct{ Count int }
			_ = json.Unmarshal([]byte(ev.Data), &d)
			fastDropped += d.Count
			return seen+fastDropped == total
		}
		var e wire.ConsoleEntry
		_ = json.Unmarshal([]byte(ev.Data), &e)
		var i int
		fmt.Sscan(e.SocketID, &i)
		if ev.Name != "entry" || i <= last {
			t.Fatalf("fast stream after entry %d: %+v", last, ev)
		}
		seen, last = seen+1, i
		return seen+fastDropped == total
	})
	if seen+fastDropped != total {
		t.Fatalf("fast stream: %d entries and %d dropped of %d", seen, fastDropped, total)
	}
	select {
	case <-done:
		t.Fatal("the slow stream ended")
	default:
	}
	// The slow one, once it reads again, got what its buffer held and the
	// count of the rest.
	// An entry published while the handler is still writing out its full
	// buffer is dropped (and counted) like any other, so the last entry
	// is published again until one gets through.
	close(slow.release)
	lastSent := 0
	deadline = time.Now().Add(20 * time.Second)
	for next := time.Now(); !strings.Contains(slow.text(), `"socket_id":"last"`); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("slow stream: %s", slow.text())
		}
		if time.Now().After(next) {
			publish(t, f.nc, "100", wire.ConsoleEntry{Kind: wire.ConsoleConnection, SocketID: "last"})
			lastSent++
			next = time.Now().Add(200 * time.Millisecond)
		}
	}
	cancel()
	<-done
	entries, dropped := 0, 0
	for _, block := range strings.Split(slow.text(), "\n\n") {
		switch {
		case strings.HasPrefix(block, "event: entry\n"):
			entries++
		case strings.HasPrefix(block, "event: dropped\n"):
			var d struct{ Count int }
			_ = json.Unmarshal([]byte(strings.TrimPrefix(block, "event: dropped\ndata: ")), &d)
			dropped += d.Count
		}
	}
	// Every entry is either shown or counted as dropped (a "last" may
	// still be in flight when the stream is cancelled: at most one); the
	// buffer held StreamBuffer (8) of those published while stuck.
	if n := entries + dropped; n < total+lastSent-1 || n > total+lastSent || dropped == 0 || entries > 8+1+lastSent {
		t.Fatalf("slow stream: %d entries, %d dropped of %d", entries, dropped, total+lastSent)
	}
}

func (w *stalledWriter) text() string { w.mu.Lock(); defer w.mu.Unlock(); return w.buf.String() }

// consoleStreams counts the console streams open on an app.
func (d *Dashboard) consoleStreams(app string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	wt := d.watches[app]
	if wt == nil {
		return 0
	}
	wt.mu.RLock()
	defer wt.mu.RUnlock()
	return len(wt.streams)
}

func TestStreamsCapped(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxStreams = 1 })
	c := login(t, f)
	stream(t, c, f.url+"/api/console?app=100")
	resp, body := get(t, c, f.url+"/api/stats?app=100")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "Too many") {
		t.Fatalf("second stream: %d %s", resp.StatusCode, body)
	}
}

// The figures are the sums of every process's, with rates made of the
// counters' growth; a process that stops answering drops out.
func TestStatsSummed(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Interval, o.StatsWait = 100*time.Millisecond, 300*time.Millisecond })
	var messages atomic.Int64
	gateway := func(conns int) func(string) map[string]wire.AppStats {
		return func(string) map[string]wire.AppStats {
			n := messages.Add(10)
			return map[string]wire.AppStats{"100": {Connections: conns, Channels: 2, Subscriptions: conns * 2, PresenceMembers: 1, MessagesIn: n, DeliveriesOut: 3 * n}}
		}
	}
	hooks := func(string) wire.AppStats { return wire.AppStats{WebhooksSent: messages.Load(), WebhooksFailed: 1} }
	runConsole(t, f.nc, console.StatsSource{Kind: console.KindGateway, Process: "g1", Stats: gateway(3)})
	runConsole(t, f.nc, console.StatsSource{Kind: console.KindGateway, Process: "g2", Stats: gateway(4)},
		console.StatsSource{Kind: console.KindWorker, Process: "w1", Stats: console.WorkerStats([]string{"100", "200"}, hooks)})
	events := stream(t, login(t, f), f.url+"/api/stats?app=100")
	waitFor(t, events, "the summed figures with rates", func(ev event) bool {
		var s Stats
		if ev.Name != "stats" || json.Unmarshal([]byte(ev.Data), &s) != nil {
			t.Fatalf("event %+v", ev)
		}
		if s.App != "100" || s.Gateways != 2 || s.Workers != 1 || s.Connections != 7 || s.Subscriptions != 14 ||
			s.PresenceMembers != 2 || s.Channels != 4 || s.Webhooks.Failed != 1 {
			return false
		}
		return s.MessagesInPerS > 0 && s.DeliveriesPerS > s.MessagesInPerS && s.Webhooks.SentPerS > 0 && s.ErrorsPerS == 0
	})
}

// runConsole runs a process's console answering with stats, until the
// test ends.
func runConsole(t *testing.T, nc *nats.Conn, stats ...console.StatsSource) {
	t.Helper()
	c := console.New(console.Options{Conn: nc, Apps: []string{"100", "200"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx, stats...) }()
	t.Cleanup(func() { cancel(); <-done })
}

// A stream outlives the server's ReadTimeout, which is for the API's
// requests (the gateway's is 30 s).
func TestStreamOutlivesReadTimeout(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Interval, o.StatsWait = 50*time.Millisecond, 20*time.Millisecond })
	f.srv.Close()
	srv := httptest.NewUnstartedServer(f.d)
	srv.Config.ReadTimeout = 200 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close) // after the stream's end, which is registered later
	base := srv.URL + "/reverb/dashboard"
	events := stream(t, dashboardtest.Login(t, base, `{"token":"the-token"}`), base+"/api/stats?app=100")
	start := time.Now()
	waitFor(t, events, "stats for five times the ReadTimeout", func(ev event) bool {
		return time.Since(start) > 5*srv.Config.ReadTimeout
	})
}
