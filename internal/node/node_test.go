package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

const (
	appID  = "123456"
	appKey = "reverb-key"
	secret = "reverb-secret"
)

// startNode runs a whole all-in-one node (embedded JetStream, workers,
// gateway) on a free loopback port with its own data directory.
func startNode(t *testing.T, tweak func(*config.Settings)) (*Node, *pushertest.API) {
	t.Helper()
	s := baseSettings(t)
	s.AppID, s.AppKey, s.AppSecret = appID, appKey, secret
	if tweak != nil {
		tweak(&s)
	}
	apps, err := config.NewApps([]config.App{{ID: s.AppID, Key: s.AppKey, Secret: s.AppSecret,
		PingInterval: s.PingInterval, ActivityTimeout: s.ActivityTimeout, MaxMessageSize: s.MaxMessageSize}})
	if err != nil {
		t.Fatal(err)
	}
	n := startOn(t, &config.Config{Settings: s, Apps: apps}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	api := &pushertest.API{BaseURL: "http://" + n.Addr().String(), AppID: appID, Key: appKey, Secret: secret}
	return n, api
}

func mustOK(t *testing.T, r pushertest.Response) {
	t.Helper()
	if r.Status != http.StatusOK || string(r.Body) != "{}" {
		t.Fatalf("got %d %s, want 200 {}", r.Status, r.Body)
	}
}

func TestTriggerReachesSubscriber(t *testing.T) {
	n, api := startNode(t, nil)
	c := pushertest.Connect(t, n.Addr().String(), appKey)
	c.Subscribe("orders.1")
	mustOK(t, api.Trigger([]string{"orders.1"}, "App\\Events\\OrderShipped", `{"id":1,"note":"<b>&"}`, ""))
	m := c.Expect("App\\Events\\OrderShipped")
	if m.Channel != "orders.1" || m.DataString() != `{"id":1,"note":"<b>&"}` {
		t.Fatalf("got %s", m.Raw)
	}
}

func TestEventsOnOneChannelArriveInOrder(t *testing.T) {
	n, api := startNode(t, nil)
	a := pushertest.Connect(t, n.Addr().String(), appKey)
	b := pushertest.Connect(t, n.Addr().String(), appKey)
	a.Subscribe("seq")
	b.Subscribe("seq")
	const total = 300
	for i := 0; i < total; i++ {
		// A batch of three, then singles: both keep order.
		if i%50 == 0 && i+3 <= total {
			var batch []map[string]any
			for j := 0; j < 3; j++ {
				batch = append(batch, map[string]any{"name": "tick", "channel": "seq", "data": fmt.Sprint(i + j)})
			}
			body, _ := json.Marshal(map[string]any{"batch": batch})
			mustOK(t, api.Do(http.MethodPost, "/batch_events", body, nil))
			i += 2
			continue
		}
		mustOK(t, api.Trigger([]string{"seq"}, "tick", fmt.Sprint(i), ""))
	}
	for _, c := range []*pushertest.Client{a, b} {
		for i := 0; i < total; i++ {
			m := c.Expect("tick")
			if m.DataString() != fmt.Sprint(i) {
				t.Fatalf("event %d carried %s", i, m.DataString())
			}
		}
	}
}

func TestSocketIDIsExcluded(t *testing.T) {
	n, api := startNode(t, nil)
	a := pushertest.Connect(t, n.Addr().String(), appKey)
	b := pushertest.Connect(t, n.Addr().String(), appKey)
	a.Subscribe("room")
	b.Subscribe("room")
	mustOK(t, api.Trigger([]string{"room"}, "first", "1", a.SocketID))
	mustOK(t, api.Trigger([]string{"room"}, "second", "2", ""))
	b.Expect("first")
	b.Expect("second")
	a.Expect("second") // "first" would have come before it
}

func TestMultiChannelTriggerAndUnsubscribe(t *testing.T) {
	n, api := startNode(t, nil)
	c := pushertest.Connect(t, n.Addr().String(), appKey)
	c.Subscribe("a")
	c.Subscribe("b")
	mustOK(t, api.Trigger([]string{"a", "b", "nobody"}, "ev", "x", ""))
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		got[c.Expect("ev").Channel] = true
	}
	if !got["a"] || !got["b"] {
		t.Fatalf("got %v", got)
	}
	c.SendJSON(map[string]any{"event": "pusher:unsubscribe", "data": map[string]any{"channel": "a"}})
	// Ping to be sure the unsubscribe was handled before triggering.
	c.SendJSON(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	c.Expect(protocol.EventPong)
	mustOK(t, api.Trigger([]string{"a"}, "gone", "x", ""))
	mustOK(t, api.Trigger([]string{"b"}, "here", "x", ""))
	c.Expect("here")
	// The channel's NATS subscription is released off the poller, just
	// after the unsubscribe.
	for deadline := time.Now().Add(5 * time.Second); n.Gateway().Channels() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gateway holds %d channels, want 1", n.Gateway().Channels())
		}
	}
}

func TestUnknownAppKeyGets4001(t *testing.T) {
	n, _ := startNode(t, nil)
	c := pushertest.Dial(t, n.Addr().String(), "/app/no-such-key?protocol=7")
	c.ExpectError(protocol.CodeAppNotFound)
	c.ExpectClose(protocol.CodeAppNotFound)
}

func TestPingPongAndBadInput(t *testing.T) {
	n, _ := startNode(t, nil)
	c := pushertest.Connect(t, n.Addr().String(), appKey)

	c.Send([]byte(`{"event":"pusher:ping","data":{}}`))
	c.Expect(protocol.EventPong)

	for _, bad := range []string{`Hi`, `{"event":[]}`, `[]`, `{"event":"pusher:subscribe","data":"sfsfsfs"}`,
		`{"event":"pusher:subscribe","data":{"channel":[]}}`, `{"event":"pusher:nonsense"}`} {
		c.Send([]byte(bad))
		c.ExpectError(protocol.CodeInvalidMessage)
	}
	// Unknown non-pusher events are ignored, as Reverb does.
	c.Send([]byte(`{"event":"something","channel":"x"}`))
	// A WebSocket ping is answered with a pong carrying its payload.
	c.SendFrame(ws.NewPingFrame([]byte("hb")))
	f, err := c.ReadFrame(5 * time.Second)
	if err != nil || f.OpCode != ws.OpPong || string(f.Payload) != "hb" {
		t.Fatalf("got %v %q %v, want pong hb", f.OpCode, f.Payload, err)
	}
	// Fragmented messages are reassembled.
	msg := []byte(`{"event":"pusher:ping","data":{}}`)
	c.SendFrame(ws.NewFrame(ws.OpText, false, msg[:10]))
	c.SendFrame(ws.NewFrame(ws.OpContinuation, false, msg[10:20]))
	c.SendFrame(ws.NewFrame(ws.OpContinuation, true, msg[20:]))
	c.Expect(protocol.EventPong)
	// The connection survived all of it.
	c.Subscribe("still-here")
}

func TestInvalidChannelNames(t *testing.T) {
	n, _ := startNode(t, nil)
	c := pushertest.Connect(t, n.Addr().String(), appKey)
	for _, name := range []string{"", strings.Repeat("x", 165), "bad channel", "#server-to-user-1"} {
		c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": name}})
		m := c.Expect(protocol.EventSubscriptionError)
		if m.Channel != name {
			t.Fatalf("subscription_error for %q names %q", name, m.Channel)
		}
		c.ExpectError(protocol.CodeUnauthorized)
	}
	c.Subscribe(strings.Repeat("x", 164))
}

func TestPrivateChannelAuth(t *testing.T) {
	n, api := startNode(t, nil)
	c := pushertest.Connect(t, n.Addr().String(), appKey)
	sig := protocol.Sign(secret, c.SocketID+":private-orders")
	c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": "private-orders", "auth": "wrong-key:" + sig}})
	c.Expect(protocol.EventSubscriptionError)
	c.ExpectError(protocol.CodeUnauthorized)
	c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": "private-orders", "auth": appKey + ":" + sig}})
	c.Expect(protocol.EventSubscriptionSucceeded)
	mustOK(t, api.Trigger([]string{"private-orders"}, "secret", "s", ""))
	c.Expect("secret")
}

func TestOversizedMessageIsClosedWith1009(t *testing.T) {
	n, _ := startNode(t, func(s *config.Settings) { s.MaxMessageSize = 100 })
	c := pushertest.Connect(t, n.Addr().String(), appKey)
	c.Send([]byte(`{"event":"pusher:ping","data":"` + strings.Repeat("x", 200) + `"}`))
	c.ExpectClose(protocol.CloseMessageTooBig)
}

func TestSilentClientIsPingedThenClosedWith4201(t *testing.T) {
	n, _ := startNode(t, func(s *config.Settings) {
		s.PingInterval = config.Seconds(time.Second)
		s.PongTimeout = config.Seconds(time.Second)
	})
	c := pushertest.Connect(t, n.Addr().String(), appKey)
	c.Expect(protocol.EventPing)
	c.ExpectError(protocol.CodePongTimeout)
	c.ExpectClose(protocol.CodePongTimeout)

	// A client that answers stays.
	d := pushertest.Connect(t, n.Addr().String(), appKey)
	d.Expect(protocol.EventPing)
	d.SendJSON(map[string]any{"event": "pusher:pong", "data": map[string]any{}})
	d.Expect(protocol.EventPing)
}

func TestHTTPAPIRejectsBadRequests(t *testing.T) {
	n, api := startNode(t, nil)
	base := *api
	trigger := []byte(`{"name":"e","data":"d","channels":["c"]}`)
	cases := []struct {
		name   string
		api    pushertest.API
		body   []byte
		status int
	}{
		{"wrong secret", withSecret(base, "nope"), trigger, 401},
		{"another app's key", withKey(base, "other-key"), trigger, 401},
		{"stale timestamp", withClock(base, -11*time.Minute), trigger, 401},
		{"future timestamp", withClock(base, 11*time.Minute), trigger, 401},
		{"unknown app", withApp(base, "999"), trigger, 404},
		{"reserved event name", base, []byte(`{"name":"pusher:x","data":"d","channels":["c"]}`), 400},
		{"data not a string", base, []byte(`{"name":"e","data":{"a":1},"channels":["c"]}`), 400},
		{"data too large", base, []byte(`{"name":"e","data":"` + strings.Repeat("x", 10241) + `","channels":["c"]}`), 413},
		{"101 channels", base, []byte(`{"name":"e","data":"d","channels":[` + strings.TrimSuffix(strings.Repeat(`"c",`, 101), ",") + `]}`), 400},
		{"bad socket id", base, []byte(`{"name":"e","data":"d","channels":["c"],"socket_id":"x"}`), 400},
		{"not JSON", base, []byte(`{nope`), 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.api.Do(http.MethodPost, "/events", tc.body, nil)
			var e struct {
				Error string `json:"error"`
			}
			if r.Status != tc.status || json.Unmarshal(r.Body, &e) != nil || e.Error == "" {
				t.Fatalf("got %d %s, want %d with a JSON error", r.Status, r.Body, tc.status)
			}
		})
	}
	// A body that does not match body_md5 is refused even with a valid
	// signature over the query.
	q := url.Values{"auth_key": {appKey}, "auth_timestamp": {fmt.Sprint(time.Now().Unix())}, "auth_version": {"1.0"},
		"body_md5": {protocol.BodyMD5([]byte("other"))}}
	q.Set("auth_signature", protocol.SignRequest(secret, "POST", "/apps/"+appID+"/events", q))
	resp, err := http.Post("http://"+n.Addr().String()+"/apps/"+appID+"/events?"+q.Encode(), "application/json", strings.NewReader(string(trigger)))
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("body_md5 mismatch: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}

func withSecret(a pushertest.API, s string) pushertest.API { a.Secret = s; return a }
func withKey(a pushertest.API, k string) pushertest.API    { a.Key = k; return a }
func withApp(a pushertest.API, id string) pushertest.API   { a.AppID = id; return a }
func withClock(a pushertest.API, skew time.Duration) pushertest.API {
	a.Now = func() time.Time { return time.Now().Add(skew) }
	return a
}

func TestHealthCheck(t *testing.T) {
	n, _ := startNode(t, nil)
	resp, err := http.Get("http://" + n.Addr().String() + "/up")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&body) != nil || body["health"] != "OK" {
		t.Fatalf("got %d %v", resp.StatusCode, body)
	}
}

func TestJetStreamDownGets503(t *testing.T) {
	n, api := startNode(t, nil)
	mustOK(t, api.Trigger([]string{"c"}, "before", "x", ""))
	n.embedded.Shutdown()
	r := api.Trigger([]string{"c"}, "after", "x", "")
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("got %d %s, want 503", r.Status, r.Body)
	}
}
