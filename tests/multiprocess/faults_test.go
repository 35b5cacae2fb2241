package multiprocess

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// startGatewayWith runs a gateway with extra settings.
func startGatewayWith(t *testing.T, name, natsURL string, extra ...string) *gatewayProc {
	t.Helper()
	env := append(append(appEnv(), "NATS_URL="+natsURL), extra...)
	p, port := startListening(t, name, env, 0)
	g := &gatewayProc{proc: p, port: port, addr: "127.0.0.1:" + strconv.Itoa(port)}
	g.api = newAPI(g.addr, appID, appKey, secret)
	return g
}

func joinPresence(t *testing.T, c *pushertest.Client, channel, userID string) {
	t.Helper()
	cd := fmt.Sprintf(`{"user_id":%q,"user_info":{}}`, userID)
	c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{
		"channel": channel, "channel_data": cd,
		"auth": appKey + ":" + protocol.Sign(secret, c.SocketID+":"+channel+":"+cd)}})
	c.Expect(protocol.EventSubscriptionSucceeded)
}

// A gateway killed with SIGKILL: the survivors remove its presence members
// cluster-wide with member_removed, within twice the gateway TTL, the
// connection quota it held heals, and the other gateway's clients keep
// receiving events exactly once.
func TestGatewayKilledUnderLoad(t *testing.T) {
	nurl, _ := startNATS(t)
	extra := []string{"RESOUND_GATEWAY_TTL=3", "REVERB_APP_MAX_CONNECTIONS=2"}
	a := startGatewayWith(t, "gateway-a", nurl, extra...)
	b := startGatewayWith(t, "gateway-b", nurl, extra...)
	startWorker(t, "worker", nurl)

	ca := pushertest.Connect(t, a.addr, appKey)
	cb := pushertest.Connect(t, b.addr, appKey)
	joinPresence(t, ca, "presence-room", "1")
	joinPresence(t, cb, "presence-room", "2")
	ca.Expect(protocol.EventMemberAdded)
	ca.Subscribe("news")

	// The quota (2) is full: a third connection is refused.
	third := pushertest.Dial(t, a.addr, "/app/"+appKey)
	third.ExpectError(protocol.CodeOverQuota)

	// Events flow while gateway B dies.
	const total = 60
	go func() {
		for i := 0; i < total; i++ {
			a.api.Trigger([]string{"news"}, "tick", strconv.Itoa(i), "")
			if i == total/3 {
				b.kill(t)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	removed, next := false, 0
	deadline := time.Now().Add(20 * time.Second)
	for !removed || next < total {
		m, err := ca.Read(time.Until(deadline))
		if err != nil {
			t.Fatalf("member_removed seen: %v, events %d of %d: %v", removed, next, total, err)
		}
		switch m.Event {
		case protocol.EventMemberRemoved:
			if !strings.Contains(m.DataString(), `"2"`) {
				t.Fatalf("member_removed %s", m.Raw)
			}
			removed = true
		case "tick":
			if m.DataString() != strconv.Itoa(next) {
				t.Fatalf("tick %s, want %d", m.DataString(), next)
			}
			next++
		default:
			t.Fatalf("unexpected %s", m.Raw)
		}
	}
	r := a.api.Do(http.MethodGet, "/channels/presence-room/users", nil, nil)
	if r.Status != 200 || string(r.Body) != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the sweep: %d %s", r.Status, r.Body)
	}
	// B's slot of the quota is given back by the same sweep, just after
	// the presence members.
	deadline = time.Now().Add(10 * time.Second)
	for {
		again := pushertest.Dial(t, a.addr, "/app/"+appKey)
		m, err := again.Read(5 * time.Second)
		if err == nil && m.Event == protocol.EventConnectionEstablished {
			break
		}
		again.Close()
		if time.Now().After(deadline) {
			t.Fatalf("the dead gateway's connection slot was not given back: %s %v", m.Raw, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// natsProc is a nats-server process that can be restarted on its port and
// store.
type natsProc struct {
	p           *proc
	port, mport int
	store       string
}

func startRestartableNATS(t *testing.T) *natsProc {
	t.Helper()
	n := &natsProc{port: freePort(t), mport: freePort(t), store: t.TempDir()}
	n.start(t)
	return n
}

func (n *natsProc) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

func (n *natsProc) start(t *testing.T) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	n.p = startProc(t, "nats-server", "nats-server", nil,
		"-js", "-sd", n.store, "-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.mport))
	if err := poll(n.p, startTimeout, "healthy nats-server", func() bool {
		resp, err := hc.Get("http://127.0.0.1:" + strconv.Itoa(n.mport) + "/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		t.Fatal(err)
	}
}

// NATS restarted under load: while it is down the API answers 503, never
// 200; gateways and workers reconnect by themselves; every event the API
// acknowledged reaches the connected client exactly once, in order.
func TestNATSRestartedUnderLoad(t *testing.T) {
	n := startRestartableNATS(t)
	g := startGatewayWith(t, "gateway", n.url())
	startWorker(t, "worker", n.url())
	c := pushertest.Connect(t, g.addr, appKey)
	c.Subscribe("news")

	var acked []int
	refused := 0
	trigger := func(i int) {
		r := g.api.Trigger([]string{"news"}, "tick", strconv.Itoa(i), "")
		switch r.Status {
		case 200:
			acked = append(acked, i)
		case 503:
			refused++
		default:
			t.Fatalf("trigger %d: %d %s", i, r.Status, r.Body)
		}
	}
	i := 0
	for ; i < 20; i++ {
		trigger(i)
	}
	n.p.stop(t)
	for ; i < 23; i++ {
		trigger(i) // each waits out the publish timeout: 503
	}
	n.start(t)
	// Give the gateway and worker a moment to reconnect, as operators'
	// producers retry; then everything acknowledged must arrive.
	deadline := time.Now().Add(30 * time.Second)
	for ; i < 60; i++ {
		trigger(i)
		time.Sleep(20 * time.Millisecond)
	}
	if refused == 0 {
		t.Fatal("no trigger was refused while NATS was down")
	}
	for k, want := range acked {
		m, err := c.Read(time.Until(deadline))
		if err != nil {
			t.Fatalf("after %d of %d acknowledged events: %v", k, len(acked), err)
		}
		if m.Event != "tick" || m.DataString() != strconv.Itoa(want) {
			t.Fatalf("event %d: got %s, want tick %d", k, m.Raw, want)
		}
	}
	c.ExpectSilence(time.Second)
}

// A client that stops reading: once its waiting output passes
// RESOUND_MAX_OUTBOUND the gateway cuts it off, and the other subscriber
// of the channel receives every event, exactly once, in order.
func TestSlowConsumerIsCutOff(t *testing.T) {
	nurl, _ := startNATS(t)
	g := startGatewayWith(t, "gateway", nurl, "RESOUND_MAX_OUTBOUND=4194304")
	startWorker(t, "worker", nurl)
	slow := pushertest.Connect(t, g.addr, appKey)
	slow.Subscribe("firehose")
	fast := pushertest.Connect(t, g.addr, appKey)
	fast.Subscribe("firehose")

	// 30 MB of events: far more than the kernel's socket buffers and the
	// 4 MiB the gateway may hold for the slow client, while the fast
	// client, reading along even on a loaded machine, stays well inside.
	const batches, perBatch = 300, 10
	payload := strings.Repeat("x", 10000)
	done := make(chan error, 1)
	go func() {
		for b := 0; b < batches; b++ {
			var items []string
			for e := 0; e < perBatch; e++ {
				items = append(items, fmt.Sprintf(`{"name":"tick","channel":"firehose","data":"%d %s"}`, b*perBatch+e, payload))
			}
			if r := g.api.Do(http.MethodPost, "/batch_events", []byte(`{"batch":[`+strings.Join(items, ",")+`]}`), nil); r.Status != 200 {
				done <- fmt.Errorf("batch %d: %d %s", b, r.Status, r.Body)
				return
			}
			// About 5 MB/s: a client that reads keeps up even on a loaded
			// machine; one that never reads fills up within seconds.
			time.Sleep(20 * time.Millisecond)
		}
		done <- nil
	}()
	for i := 0; i < batches*perBatch; i++ {
		m, err := fast.Read(30 * time.Second)
		if err != nil {
			t.Fatalf("fast client after %d events: %v", i, err)
		}
		n, _, _ := strings.Cut(m.DataString(), " ")
		if m.Event != "tick" || n != strconv.Itoa(i) {
			t.Fatalf("fast client: event %d is %.60s", i, m.Raw)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The slow client was cut off: reading what the kernel still holds
	// ends in a closed connection long before all events.
	got := 0
	for {
		if _, err := slow.Read(10 * time.Second); err != nil {
			break
		}
		got++
	}
	if got >= batches*perBatch {
		t.Fatalf("the slow client got all %d events; it should have been cut off", got)
	}
}

// A gateway drained with SIGTERM: each of its clients gets 4200 ("reconnect
// now") and a close (spread over RESOUND_DRAIN_WINDOW); they reconnect to
// the other gateway, where every one of them receives the next event
// exactly once.
func TestReconnectStormAfterDrain(t *testing.T) {
	nurl, _ := startNATS(t)
	a := startGatewayWith(t, "gateway-a", nurl, "RESOUND_DRAIN_WINDOW=2")
	b := startGatewayWith(t, "gateway-b", nurl)
	startWorker(t, "worker", nurl)

	const clients = 200
	conns := make([]*pushertest.Client, clients)
	for i := range conns {
		conns[i] = pushertest.Connect(t, a.addr, appKey)
		conns[i].Subscribe("storm")
	}
	stopped := make(chan int, 1)
	go func() { stopped <- a.stop(t) }()

	// Every client sees 4200 then a close with 4200, and reconnects to B.
	// How the closes spread over the window is drainBatch's, unit-tested in
	// pkg/gateway; here every client must be told, and come back.
	closes := make(chan int, clients)
	for i, c := range conns {
		go func() {
			for {
				m, err := c.Read(20 * time.Second)
				if err != nil {
					return
				}
				if m.Event == protocol.EventError && strings.Contains(m.DataString(), "4200") {
					closes <- i
					return
				}
			}
		}()
	}
	for n := 0; n < clients; n++ {
		select {
		case i := <-closes:
			conns[i].ExpectClose(protocol.CodeReconnect)
			conns[i] = pushertest.Connect(t, b.addr, appKey)
			conns[i].Subscribe("storm")
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d clients were told to reconnect", n, clients)
		}
	}
	if code := <-stopped; code != 0 {
		t.Fatalf("drained gateway exited %d", code)
	}
	mustOK(t, b.api.Trigger([]string{"storm"}, "after", "1", ""))
	for i, c := range conns {
		m := c.Expect("after")
		if m.Channel != "storm" {
			t.Fatalf("client %d: %s", i, m.Raw)
		}
	}
	// No duplicate trails behind: sample a few clients.
	for _, c := range conns[:5] {
		c.ExpectSilence(200 * time.Millisecond)
	}
}
