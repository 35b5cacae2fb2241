package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// The live test's gateway: two apps from an apps file, under a
// REVERB_SERVER_PATH prefix, with the dashboard on and a token.
const (
	liveToken  = "browser-test-token"
	livePrefix = "/reverb"
	liveAppID  = "200001"
	liveKey    = "live-key"
	liveSecret = "live-secret"
)

// TestDashboardLive is the browser test: a real all-in-one gateway
// process (built with the race detector) serves the dashboard; headless
// Chromium signs in through the form, opens an app, watches its overview
// while events go through, then opens the debug console, where an event
// triggered through the HTTP API (signed as Pusher) and a WebSocket
// client's connection and subscription must appear. The time from the
// API call to the row on screen is logged, not asserted. A screenshot of
// each page goes to RESOUND_SCREENSHOTS (docs/img makes the README's) or
// the test's artifact directory.
func TestDashboardLive(t *testing.T) {
	chromium(t) // skip or wait before building anything
	shots := screenshotDir(t)
	g := startLiveGateway(t)
	base := "http://" + g.addr + livePrefix
	api := &pushertest.API{BaseURL: base, AppID: liveAppID, Key: liveKey, Secret: liveSecret,
		Client: &http.Client{Timeout: 10 * time.Second}}

	// The page is there (a clearer failure than a page that never shows).
	resp, err := http.Get(base + "/dashboard/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET %s/dashboard/: %d %s, want the page", base, resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	p := newPage(t)
	p.do("opening the dashboard", chromedp.Navigate(base+"/dashboard"))
	p.waitJS("the sign-in form", "!document.getElementById('view-signin').hidden")
	p.screenshot(shots, "dashboard-signin")

	p.typeIn("#token", "wrong-"+liveToken)
	p.click("#signin-submit")
	p.waitJS("the refusal of a wrong token", "!document.getElementById('signin-error').hidden")

	p.do("signing in with the token",
		chromedp.SendKeys(chromedp.CSS("#token"), strings.Repeat("\b", len("wrong-"+liveToken))+liveToken),
		chromedp.Click(chromedp.CSS("#signin-submit")))
	p.waitJS("the app picker", "document.querySelectorAll('#app-list a.app-card').length === 2")
	p.click(`#app-list a[href="#/apps/` + liveAppID + `"]`)
	p.waitJS("the app's figures", "document.getElementById('t-cluster').textContent.includes('gateway')")

	// Some traffic for the overview: subscribers on a few channels, and
	// events at a rate that changes, for longer when the screenshots are
	// the README's.
	channels := []string{"orders", "orders.1873", "chat.lobby"}
	for i := range 6 {
		c := connect(t, g.addr, liveKey)
		c.Subscribe(channels[i%len(channels)])
	}
	traffic := 6 * time.Second
	if os.Getenv("RESOUND_SCREENSHOTS") != "" {
		traffic = 25 * time.Second
	}
	t.Logf("sending events for %v", traffic)
	start := time.Now()
	for i := 0; time.Since(start) < traffic; i++ {
		sec := int(time.Since(start).Seconds())
		burst := 1 + (sec*7)%5
		for j := range burst {
			ch := channels[(i+j)%len(channels)]
			if r := api.Trigger([]string{ch}, "OrderUpdated", fmt.Sprintf(`{"id":%d,"status":"packed"}`, i*10+j), ""); r.Status != http.StatusOK {
				t.Fatalf("trigger: %d %s", r.Status, r.Body)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	p.waitJS("messages in the overview", "/peak [1-9]/.test(document.querySelector('#chart-in .chart-now').textContent)")
	p.waitJS("deliveries in the overview", "/peak [1-9]/.test(document.querySelector('#chart-out .chart-now').textContent)")
	p.screenshot(shots, "dashboard-overview")

	// The debug console.
	p.click("#tab-console")
	p.waitJS("the console's stream", "document.getElementById('console-state').textContent === 'Live'")

	// An event through the HTTP API. The console's watch may take a
	// moment to reach every process after the stream opens, so an event
	// that does not show is sent again, under a new name, a few times.
	var latency time.Duration
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("BrowserTest%d", attempt)
		watchFor(p, "api", fmt.Sprintf(`r => r.dataset.kind === 'api_message' && r.querySelector('.c-event').textContent === %q`, name))
		sent := time.Now()
		if r := api.Trigger([]string{"orders"}, name, `{"from":"the browser test"}`, ""); r.Status != http.StatusOK {
			t.Fatalf("trigger: %d %s", r.Status, r.Body)
		}
		if seen, ok := seenAt(p, "api", 10*time.Second); ok {
			latency = seen.Sub(sent)
			t.Logf("the event triggered through the API was on screen %v after the call (attempt %d)", latency.Round(time.Millisecond), attempt)
			break
		}
		if attempt == 3 {
			t.Fatalf("no event triggered through the API appeared in the debug console (3 attempts, 10 s each)")
		}
		t.Logf("attempt %d: %s not on screen after 10 s; sending another", attempt, name)
	}

	// A WebSocket client's connection and subscription. The console has
	// had no connection yet (the subscribers above came before it opened).
	watchFor(p, "conn", `r => r.dataset.kind === 'connection'`)
	sent := time.Now()
	c := connect(t, g.addr, liveKey)
	seen, ok := seenAt(p, "conn", uiWait)
	if !ok {
		t.Fatalf("the connection of socket %s did not appear in the debug console within %v", c.SocketID, uiWait)
	}
	t.Logf("a WebSocket connection was on screen %v after the dial began", seen.Sub(sent).Round(time.Millisecond))
	p.waitJS("the connection's socket id", fmt.Sprintf(`[...document.querySelectorAll('#console-rows tr')].some(r => r.dataset.kind === 'connection' && r.querySelector('.c-socket').textContent === %q)`, c.SocketID))
	watchFor(p, "sub", fmt.Sprintf(`r => r.dataset.kind === 'subscribed' && r.querySelector('.c-socket').textContent === %q && r.querySelector('.c-channel').textContent === 'chat.lobby'`, c.SocketID))
	c.Subscribe("chat.lobby")
	if _, ok := seenAt(p, "sub", uiWait); !ok {
		t.Fatalf("the subscription of socket %s to chat.lobby did not appear in the debug console within %v", c.SocketID, uiWait)
	}
	// A few more, for the picture.
	for i, ch := range channels {
		api.Trigger([]string{ch}, "OrderShipped", fmt.Sprintf(`{"id":%d,"carrier":"DHL"}`, 1900+i), "")
	}
	c.Close()
	p.waitJS("the disconnection", fmt.Sprintf(`[...document.querySelectorAll('#console-rows tr')].some(r => r.dataset.kind === 'disconnection' && r.querySelector('.c-socket').textContent === %q)`, c.SocketID))
	p.screenshot(shots, "dashboard-console")
	p.checkClean()
}

// watchFor makes the page note, under key, the time (Date.now()) when a
// console row matching the JavaScript predicate is first on screen: a
// MutationObserver sees it as it is inserted, so the time does not depend
// on how often the test polls.
func watchFor(p *page, key, predicate string) {
	p.t.Helper()
	js := fmt.Sprintf(`(() => {
		window.__seen = window.__seen || {};
		delete window.__seen[%[1]q];
		const match = %[2]s;
		const tbody = document.getElementById('console-rows');
		const check = () => {
			if (window.__seen[%[1]q]) return true;
			for (const r of tbody.rows) if (match(r)) { window.__seen[%[1]q] = Date.now(); return true; }
			return false;
		};
		if (check()) return;
		const mo = new MutationObserver(() => { if (check()) mo.disconnect(); });
		mo.observe(tbody, { childList: true });
	})()`, key, predicate)
	evalJS[chromedp.Void](p, js)
}

// seenAt waits for the time watchFor noted under key.
func seenAt(p *page, key string, timeout time.Duration) (time.Time, bool) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ms := evalJS[float64](p, fmt.Sprintf("(window.__seen && window.__seen[%q]) || 0", key))
		if ms > 0 {
			return time.UnixMilli(int64(ms)), true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connect opens a Pusher WebSocket under the prefix and reads
// connection_established.
func connect(t *testing.T, addr, key string) *pushertest.Client {
	t.Helper()
	c := pushertest.Dial(t, addr, livePrefix+"/app/"+key+"?protocol=7&client=go&version=browser-test")
	m := c.Expect(protocol.EventConnectionEstablished)
	var d struct {
		SocketID string `json:"socket_id"`
	}
	if err := m.DataObject(&d); err != nil || d.SocketID == "" {
		t.Fatalf("bad connection_established %s (%v)", m.Raw, err)
	}
	c.SocketID = d.SocketID
	return c
}

// liveGateway is an all-in-one gateway process.
type liveGateway struct {
	cmd  *exec.Cmd
	addr string
	log  string
	done chan struct{}
}

// raceWarning starts every report of the race detector.
const raceWarning = "WARNING: DATA RACE"

// startLiveGateway builds cmd/gateway with the race detector (as the
// multi-process tests do, so the build cache serves both), starts it with
// the dashboard on, and waits until its readiness probe answers 200. It is
// stopped when the test ends; a race it reported fails the test.
func startLiveGateway(t *testing.T) *liveGateway {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "gateway")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-race", "-o", bin, "./cmd/gateway")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -race ./cmd/gateway: %v\n%s", err, out)
	}

	apps := filepath.Join(dir, "apps.json")
	if err := os.WriteFile(apps, []byte(`{"apps": [
		{"app_id": "`+liveAppID+`", "key": "`+liveKey+`", "secret": "`+liveSecret+`"},
		{"app_id": "200002", "key": "other-key", "secret": "other-secret"}
	]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()

	g := &liveGateway{addr: "127.0.0.1:" + strconv.Itoa(port), log: filepath.Join(dir, "gateway.log"), done: make(chan struct{})}
	f, err := os.Create(g.log)
	if err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(bin)
	g.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"RESOUND_APPS_FILE=" + apps,
		"REVERB_SERVER_HOST=127.0.0.1", "REVERB_SERVER_PORT=" + strconv.Itoa(port), "REVERB_SERVER_PATH=" + livePrefix,
		"RESOUND_DATA_DIR=" + filepath.Join(dir, "data"), "RESOUND_LOG_FORMAT=json",
		"RESOUND_DASHBOARD=true", "RESOUND_DASHBOARD_TOKEN=" + liveToken,
		"RESOUND_DRAIN_WINDOW=1",
	}
	if r := os.Getenv("RESOUND_REACTOR"); r != "" {
		g.cmd.Env = append(g.cmd.Env, "RESOUND_REACTOR="+r)
	}
	g.cmd.Dir = dir
	g.cmd.Stdout, g.cmd.Stderr = f, f
	err = g.cmd.Start()
	_ = f.Close()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = g.cmd.Wait()
		close(g.done)
	}()
	t.Cleanup(func() {
		g.stop(t)
		out, _ := os.ReadFile(g.log)
		if _, report, ok := strings.Cut(string(out), raceWarning); ok {
			t.Errorf("the gateway reported a data race:\n%s%s", raceWarning, report)
		}
		if t.Failed() {
			t.Logf("--- the gateway's log (%s) ---\n%s", g.log, tail(string(out), 40))
		}
	})

	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-g.done:
			t.Fatalf("the gateway exited (%v) while starting", g.cmd.ProcessState)
		default:
		}
		if resp, err := hc.Get("http://" + g.addr + livePrefix + "/up"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var body map[string]string
			if resp.StatusCode == http.StatusOK && json.Unmarshal(b, &body) == nil && body["health"] == "OK" {
				return g
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway's /up did not answer 200 within 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM, then SIGKILL if the gateway outlives its drain.
func (g *liveGateway) stop(t *testing.T) {
	select {
	case <-g.done:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(30 * time.Second):
		t.Errorf("the gateway did not exit within 30 s of SIGTERM; killing it")
		_ = g.cmd.Process.Kill()
		<-g.done
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
