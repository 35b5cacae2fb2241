package browser

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/resoundhq/resound/internal/wire"
)

// TestDashboardPage drives the page against fakeDashboard: sign-in (refused,
// by token, by app key and secret), the app picker, the overview, and the
// debug console's rows, filters, pause, dropped notice, cap and clear; a
// session that ends sends the page back to the sign-in form. The page must
// report no script error and no Content-Security-Policy violation.
func TestDashboardPage(t *testing.T) {
	const token = "page-test-token"
	orders := fakeApp{ID: "100001", Key: "orders-key", Secret: "orders-secret"}
	chat := fakeApp{ID: "100002", Key: "chat-key", Secret: "chat-secret"}
	// Under a REVERB_SERVER_PATH-like prefix: every URL in the page must
	// be relative.
	f := newFakeDashboard(t, "/reverb/dashboard", token, orders, chat)
	p := newPage(t)
	shots := t.ArtifactDir()

	// The path without its slash redirects to the page.
	p.do("opening the dashboard", chromedp.Navigate(f.srv.URL+f.prefix))
	p.waitJS("the sign-in form", "!document.getElementById('view-signin').hidden")
	p.screenshot(shots, "page-signin")

	// A wrong token is refused, with the server's words.
	p.do("signing in with a wrong token",
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
		chromedp.Click(chromedp.CSS("#signin-submit")))
	p.waitJS("the refusal", "!document.getElementById('signin-error').hidden")
	if got := p.text("#signin-error"); !strings.Contains(got, "Wrong token") {
		t.Errorf("sign-in error %q, want the server's message", got)
	}

	// An app's key and secret open that app alone, straight away.
	p.do("signing in with an app's key and secret",
		chromedp.Click(chromedp.CSS("label[for=method-app]")),
		chromedp.SendKeys(chromedp.CSS("#app-key"), chat.Key),
		chromedp.SendKeys(chromedp.CSS("#app-secret"), chat.Secret),
		chromedp.Click(chromedp.CSS("#signin-submit")))
	p.waitJS("the chat app's overview", "location.hash === '#/apps/100002' && !document.getElementById('view-app').hidden")
	p.waitJS("its figures", "document.getElementById('t-connections').textContent !== '–'")
	p.do("signing out", chromedp.Click(chromedp.CSS("#signout")))
	p.waitJS("the sign-in form again", "!document.getElementById('view-signin').hidden")

	// The token opens every app: the picker lists both.
	p.do("signing in with the token",
		chromedp.Click(chromedp.CSS("label[for=method-token]")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#signin-submit")))
	// Signed out from the chat app's page, signed in again: back to it.
	p.waitJS("the chat app again", "location.hash === '#/apps/100002' && !document.getElementById('view-app').hidden")
	p.do("opening the app picker", chromedp.Click(chromedp.CSS(".brand")))
	p.waitJS("both apps in the picker", "document.querySelectorAll('#app-list a.app-card').length === 2")
	p.screenshot(shots, "page-apps")
	p.do("opening the orders app", chromedp.Click(chromedp.CSS(`#app-list a[href="#/apps/100001"]`)))

	// The overview: tiles, charts with three minutes in them, recent errors.
	p.waitJS("the orders app's figures", "location.hash === '#/apps/100001' && document.getElementById('t-connections').textContent !== '–'")
	p.waitJS("the charts' figures", "[...document.querySelectorAll('.chart-now')].every(e => e.textContent.includes('now'))")
	p.waitJS("the recent errors", "document.querySelectorAll('#recent-list li').length === 3")
	if got := p.text("#t-cluster"); got != "3 gateways · 2 workers" {
		t.Errorf("cluster line %q", got)
	}
	if got := p.text("#t-subscriptions"); got != "2,480" {
		t.Errorf("subscriptions tile %q, want 2,480", got)
	}
	if got := p.text("#live-text"); got != "Live" {
		t.Errorf("live indicator %q", got)
	}
	p.screenshot(shots, "page-overview")

	// The debug console: watched only while shown.
	if n := f.watching(orders.ID); n != 0 {
		t.Errorf("%d console streams open on the overview, want 0", n)
	}
	p.do("opening the debug console", chromedp.Click(chromedp.CSS("#tab-console")))
	waitGo(t, "the console stream", func() bool { return f.watching(orders.ID) == 1 })

	now := time.Now().UnixMilli()
	samples := []wire.ConsoleEntry{
		{Kind: "connection", SocketID: "1093.44210", Detail: "from 203.0.113.7, pusher-js 8.4.0"},
		{Kind: "subscribed", SocketID: "1093.44210", Channel: "orders"},
		{Kind: "subscribed", SocketID: "1093.44210", Channel: "presence-room.7", UserID: "42"},
		{Kind: "api_message", Channel: "orders", Event: "OrderShipped", Detail: `{"id":1873,"status":"shipped"}`},
		{Kind: "client_event", SocketID: "1093.44210", Channel: "presence-room.7", Event: "client-typing", UserID: "42", Detail: `{"typing":true}`},
		{Kind: "webhook", Channel: "presence-room.7", Event: "member_added", Detail: "200 in 38 ms to https://app.example.test/pusher/webhooks"},
		{Kind: "error", SocketID: "2811.99120", Detail: "4301: client event rate limit exceeded"},
		{Kind: "unsubscribed", SocketID: "1093.44210", Channel: "orders"},
		{Kind: "disconnection", SocketID: "2811.99120", Detail: "4301 closed by the server"},
	}
	for i, e := range samples {
		e.TimeMS = now - int64(len(samples)-i)*700
		e.Process = "gateway-a"
		f.entry(orders.ID, e)
	}
	rows := "document.querySelectorAll('#console-rows tr')"
	visible := "[...document.querySelectorAll('#console-rows tr')].filter(r => !r.hidden)"
	p.waitJS("nine rows", rows+".length === 9")
	if got := p.text("#console-rows tr:first-child .c-kind"); got != "Disconnection" {
		t.Errorf("newest row's kind %q, want Disconnection (newest first)", got)
	}
	if got := p.text("#console-rows tr:nth-child(5) .c-detail"); got != `user 42 · {"typing":true}` {
		t.Errorf("client event's detail %q", got)
	}

	// Filters: a kind off, then text.
	p.do("hiding connections and disconnections",
		chromedp.Click(chromedp.CSS("#kind-connection")), chromedp.Click(chromedp.CSS("#kind-disconnection")))
	p.waitJS("seven shown", visible+".length === 7")
	p.do("filtering on presence-room", chromedp.SendKeys(chromedp.CSS("#console-filter"), "presence-ROOM"))
	p.waitJS("three shown", visible+".length === 3")
	if got := p.text("#console-count"); got != "9 entries · 3 shown" {
		t.Errorf("count line %q", got)
	}
	p.do("clearing the filters",
		chromedp.SendKeys(chromedp.CSS("#console-filter"), strings.Repeat("\b", len("presence-ROOM"))),
		chromedp.Click(chromedp.CSS("#kind-connection")), chromedp.Click(chromedp.CSS("#kind-disconnection")))
	p.waitJS("all nine shown", visible+".length === 9")

	// Pause holds new entries back; resume shows them.
	p.do("pausing", chromedp.Click(chromedp.CSS("#console-pause")))
	for i := range 3 {
		f.entry(orders.ID, wire.ConsoleEntry{TimeMS: time.Now().UnixMilli(), Kind: "api_message", Process: "gateway-b",
			Channel: "orders", Event: "OrderUpdated", Detail: fmt.Sprintf(`{"id":%d}`, 1874+i)})
	}
	p.waitJS("the held count", "document.getElementById('console-pause').textContent === 'Resume (3 new)'")
	if n := evalJS[int](p, rows+".length"); n != 9 {
		t.Errorf("%d rows while paused, want 9", n)
	}
	p.do("resuming", chromedp.Click(chromedp.CSS("#console-pause")))
	p.waitJS("twelve rows", rows+".length === 12")

	// Dropped entries, from the server and from a process's rate cap.
	f.dropped(orders.ID, 250)
	f.entry(orders.ID, wire.ConsoleEntry{TimeMS: time.Now().UnixMilli(), Kind: "api_message", Process: "gateway-c",
		Channel: "orders", Event: "OrderUpdated", Detail: `{"id":1877}`, Dropped: 50})
	p.waitJS("the dropped notice", "!document.getElementById('console-dropped').hidden")
	if got := p.text("#console-dropped"); got != "300 entries dropped: the console samples under load." {
		t.Errorf("dropped notice %q", got)
	}
	p.screenshot(shots, "page-console")

	// At most 1,000 rows: the oldest go.
	base := time.Now().UnixMilli()
	for i := range 1200 {
		f.entry(orders.ID, wire.ConsoleEntry{TimeMS: base + int64(i), Kind: "api_message", Process: "gateway-a",
			Channel: "load", Event: "tick", Detail: fmt.Sprintf("%d", i)})
	}
	p.waitJS("the newest of 1,200 on top", "document.querySelector('#console-rows tr:first-child .c-detail').textContent === '1199'")
	p.waitJS("1,000 rows", rows+".length === 1000")
	if got := p.text("#console-rows tr:last-child .c-detail"); got != "200" {
		t.Errorf("oldest row kept %q, want 200", got)
	}

	// Clear empties the table and the notice.
	p.do("clearing", chromedp.Click(chromedp.CSS("#console-clear")))
	p.waitJS("an empty table", rows+".length === 0 && !document.getElementById('console-empty').hidden && document.getElementById('console-dropped').hidden")

	// A session that ends (the server forgets it and drops the streams):
	// the page goes back to the sign-in form and says why.
	f.mu.Lock()
	clear(f.sessions)
	f.mu.Unlock()
	f.srv.CloseClientConnections()
	p.waitJS("the sign-in form after the session ended", "!document.getElementById('view-signin').hidden")
	if got := p.text("#signin-error"); !strings.Contains(got, "session ended") {
		t.Errorf("sign-in message %q", got)
	}
	p.checkClean()
}

// waitGo waits for a condition the test checks in Go.
func waitGo(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(uiWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, uiWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
