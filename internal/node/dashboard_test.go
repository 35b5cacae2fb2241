package node

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/dashboard"
	"github.com/resoundhq/resound/internal/dashboard/dashboardtest"
	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/pkg/pushertest"
)

var appDash = config.App{ID: "333", Key: "key-dash", Secret: "secret-dash"}

func dashboardOn(s *config.Settings) {
	s.Dashboard, s.DashboardPath, s.DashboardToken = true, "/dashboard", "dash-token"
}

// dashLogin logs a browser in to a gateway's dashboard with body.
func dashLogin(t *testing.T, base, body string) *http.Client {
	t.Helper()
	return dashboardtest.Login(t, base+"/dashboard", body)
}

var (
	openEvents = dashboardtest.Events
	awaitEvent = dashboardtest.Await
)

// The figures a dashboard shows are the whole cluster's: both gateways'
// connections and subscriptions, and each channel once however many
// gateways it is on.
func TestDashboardStatsAcrossGateways(t *testing.T) {
	tc := startClusterWith(t, dashboardOn, appDash, app1)
	a, b := tc.a.Addr().String(), tc.b.Addr().String()
	a1 := pushertest.Connect(t, a, appDash.Key)
	a1.Subscribe("chat")
	a1.Subscribe("news")
	a2 := pushertest.Connect(t, a, appDash.Key)
	a2.Subscribe("chat")
	b1 := pushertest.Connect(t, b, appDash.Key)
	b1.Subscribe("chat")
	joinPresence(t, b1, appDash, "presence-room", "7")
	// Another app's connection counts for that app only.
	other := pushertest.Connect(t, b, app1.Key)
	other.Subscribe("chat")
	c := dashLogin(t, "http://"+a, `{"app_key":"key-dash","app_secret":"secret-dash"}`)
	events := openEvents(t, c, "http://"+a+"/dashboard/api/stats?app=333")
	want := dashboard.Stats{App: "333", Gateways: 2, Connections: 3, Channels: 3, Subscriptions: 5, PresenceMembers: 1}
	var last dashboard.Stats
	awaitEvent(t, events, "the cluster's figures", func(ev dashboardtest.Event) bool {
		if ev.Name != "stats" || json.Unmarshal([]byte(ev.Data), &last) != nil {
			t.Fatalf("event %+v", ev)
		}
		got := last
		got.TimeMS, got.MessagesInPerS, got.DeliveriesPerS, got.ErrorsPerS, got.Webhooks = 0, 0, 0, 0, dashboard.Hooks{}
		return got == want
	})
	// Events through either gateway's API show up as messages in and,
	// written to the subscribers, deliveries out.
	awaitEvent(t, events, "messages and deliveries per second", func(ev dashboardtest.Event) bool {
		if r := tc.apiB.Trigger([]string{"chat"}, "tick", `{}`, ""); r.Status != 200 {
			t.Fatalf("trigger: %d %s", r.Status, r.Body)
		}
		var s dashboard.Stats
		_ = json.Unmarshal([]byte(ev.Data), &s)
		return s.MessagesInPerS > 0 && s.DeliveriesPerS > 0
	})
}

// An API trigger and a client event, made on the other gateway, reach a
// dashboard's debug console.
func TestDashboardConsole(t *testing.T) {
	tc := startClusterWith(t, dashboardOn, app1)
	a, b := tc.a.Addr().String(), tc.b.Addr().String()
	c := dashLogin(t, "http://"+a, `{"token":"dash-token"}`)
	events := openEvents(t, c, "http://"+a+"/dashboard/api/console?app="+app1.ID)
	// Every process takes the lease; from then on it publishes.
	deadline := time.Now().Add(10 * time.Second)
	for !tc.a.Console().Watching(app1.ID) || !tc.b.Console().Watching(app1.ID) {
		if time.Now().After(deadline) {
			t.Fatal("the gateways did not take the console's lease")
		}
		time.Sleep(5 * time.Millisecond)
	}
	sender := pushertest.Connect(t, b, app1.Key)
	subscribeAuth(t, sender, app1.Key, app1.Secret, "private-chat", "")
	listener := pushertest.Connect(t, a, app1.Key)
	subscribeAuth(t, listener, app1.Key, app1.Secret, "private-chat", "")
	if r := tc.apiB.Trigger([]string{"private-orders", "news"}, "OrderShipped", `{"order":42}`, ""); r.Status != 200 {
		t.Fatalf("trigger: %d %s", r.Status, r.Body)
	}
	sender.SendJSON(map[string]any{"event": "client-typing", "channel": "private-chat", "data": map[string]any{"who": "ann"}})
	listener.Expect("client-typing")
	seen := map[string]wire.ConsoleEntry{}
	awaitEvent(t, events, "the API message and the client event", func(ev dashboardtest.Event) bool {
		var e wire.ConsoleEntry
		if ev.Name != "entry" || json.Unmarshal([]byte(ev.Data), &e) != nil {
			return false
		}
		seen[e.Kind] = e
		_, api := seen[wire.ConsoleAPIMessage]
		_, client := seen[wire.ConsoleClientEvent]
		return api && client
	})
	if e := seen[wire.ConsoleAPIMessage]; e.Event != "OrderShipped" || e.Channel != "private-orders, news" || e.Detail != `{"order":42}` {
		t.Errorf("api_message: %+v", e)
	}
	if e := seen[wire.ConsoleClientEvent]; e.Event != "client-typing" || e.Channel != "private-chat" || e.SocketID != sender.SocketID ||
		e.Detail != `{"who":"ann"}` || e.Process == "" {
		t.Errorf("client_event: %+v", e)
	}
	// An error a gateway sent is among its recent errors.
	sender.SendJSON(map[string]any{"event": "pusher:bogus"})
	sender.ExpectError(4200)
	resp, err := c.Get("http://" + b + "/dashboard/api/recent?app=" + app1.ID)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Unsupported event pusher:bogus") {
		t.Fatalf("recent errors on the gateway that sent it: %d %s", resp.StatusCode, body)
	}
}

// Off, nothing is mounted: the path is the API's 404. On its own address,
// the dashboard is there and not on the gateway's port.
func TestDashboardMounting(t *testing.T) {
	get := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	off := startCluster(t, app1)
	if st := get("http://" + off.a.Addr().String() + "/dashboard/"); st != 404 {
		t.Fatalf("dashboard off: %d", st)
	}
	if off.a.DashboardAddr() != nil {
		t.Fatal("a listener without the dashboard")
	}
	own := startClusterWith(t, func(s *config.Settings) {
		dashboardOn(s)
		s.DashboardAddr = "127.0.0.1:0"
		s.Path = "/reverb"
	}, app1)
	if st := get("http://" + own.a.Addr().String() + "/reverb/dashboard/"); st != 404 {
		t.Fatalf("the gateway's port with RESOUND_DASHBOARD_ADDR: %d", st)
	}
	if st := get("http://" + own.a.DashboardAddr().String() + "/dashboard/"); st != 200 {
		t.Fatalf("its own address: %d", st)
	}
	// On the port, under REVERB_SERVER_PATH, beside the API.
	on := startClusterWith(t, func(s *config.Settings) { dashboardOn(s); s.Path = "/reverb" }, app1)
	base := "http://" + on.a.Addr().String()
	if st := get(base + "/reverb/dashboard/"); st != 200 {
		t.Fatalf("on the port: %d", st)
	}
	if st := get(base + "/reverb/up"); st != 200 {
		t.Fatalf("the probe beside it: %d", st)
	}
}
