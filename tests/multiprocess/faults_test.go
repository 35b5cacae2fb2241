package multiprocess

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// The fault tests: each runs a real nats-server, three gateway processes
// and two worker processes, drives them with cmd/loadgen (its WebSockets
// spread over the three gateways, so every channel has subscribers on
// each), injects one fault in the middle of the load, and checks loadgen's
// counts exactly: every expected delivery made, none missing, duplicated
// or out of order.

func joinPresence(t *testing.T, c *pushertest.Client, channel, userID string) {
	t.Helper()
	cd := fmt.Sprintf(`{"user_id":%q,"user_info":{}}`, userID)
	c.SendJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{
		"channel": channel, "channel_data": cd,
		"auth": appKey + ":" + protocol.Sign(secret, c.SocketID+":"+channel+":"+cd)}})
	c.Expect(protocol.EventSubscriptionSucceeded)
}

// A worker killed with SIGKILL under load: the other worker takes its
// partitions (the registry notices within the TTL, JetStream's pin lapses,
// and the dead worker's unacked jobs come first), and every event reaches
// every subscriber exactly once, in order per channel.
func TestWorkerKilledUnderLoad(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	c := startCluster(t, clusterSpec{gateways: 3, workers: 2, workerEnv: []string{"RESOUND_GATEWAY_TTL=3"}})
	const conns, channels, events = 24, 8, 1200
	lg := startLoadgen(t, c, c.gateways[0], "wkill", "-conns", strconv.Itoa(conns), "-channels", strconv.Itoa(channels),
		"-rate", "200", "-events", strconv.Itoa(events))
	lg.waitSent(t, events/3)
	c.workers[0].kill(t)
	if p := lg.progress(); p.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before the worker was killed", p.EventsSent)
	}
	s := lg.summary(t)
	expectExact(t, s, conns, events, conns/channels)
	if s.Fanout.Expected != events*conns/channels || s.Conns.Dropped != 0 || len(s.Conns.Failures) != 0 || len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("expected %d, want %d; dropped %d, failures %v, request failures %v",
			s.Fanout.Expected, events*conns/channels, s.Conns.Dropped, s.Conns.Failures, s.Fanout.RequestFailures)
	}
	if c.workers[1].exited() {
		t.Fatal("the surviving worker exited")
	}
}

// A gateway killed with SIGKILL under load: loadgen's connections on it
// reconnect to the next gateway and every event sent after they are back
// reaches them, exactly once, as it does the others'; the survivors remove
// the dead gateway's presence members cluster-wide with member_removed,
// within twice the gateway TTL; and the connection quota it held heals.
func TestGatewayKilledUnderLoad(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	// The quota is tested on an app of its own, capped at 2 connections,
	// so that loadgen's reconnections are not refused by it.
	apps := filepath.Join(t.TempDir(), "apps.json")
	const quotaID, quotaKey, quotaSecret = "654321", "quota-key", "quota-secret"
	if err := os.WriteFile(apps, []byte(`{"apps":[{"app_id":"`+quotaID+`","key":"`+quotaKey+`","secret":"`+quotaSecret+`","max_connections":2}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"RESOUND_GATEWAY_TTL=3", "RESOUND_APPS_FILE=" + apps}
	c := startCluster(t, clusterSpec{gateways: 3, workers: 2, workerEnv: env,
		gatewayEnv: func(int) []string { return env }})
	a, dead := c.gateways[0], c.gateways[2]

	ca := pushertest.Connect(t, a.addr, appKey)
	cb := pushertest.Connect(t, dead.addr, appKey)
	joinPresence(t, ca, "presence-room", "1")
	joinPresence(t, cb, "presence-room", "2")
	ca.Expect(protocol.EventMemberAdded)
	pushertest.Connect(t, a.addr, quotaKey)
	pushertest.Connect(t, dead.addr, quotaKey)
	third := pushertest.Dial(t, a.addr, "/app/"+quotaKey)
	third.ExpectError(protocol.CodeOverQuota)

	// 30 connections over 6 channels: 10 on each gateway, 5 subscribers a
	// channel on all three.
	const conns, channels, events = 30, 6, 900
	lg := startLoadgen(t, c, a, "gkill", "-reconnect", "-conns", strconv.Itoa(conns), "-channels", strconv.Itoa(channels),
		"-rate", "150", "-events", strconv.Itoa(events))
	lg.waitSent(t, events/3)
	dead.kill(t)
	if p := lg.progress(); p.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before the gateway was killed", p.EventsSent)
	}

	// Presence: member 2 was on the dead gateway. The sweep takes up to
	// twice the TTL.
	m, err := ca.Read(30 * time.Second)
	if err != nil {
		t.Fatalf("no member_removed: %v", err)
	}
	if m.Event != protocol.EventMemberRemoved || !strings.Contains(m.DataString(), `"2"`) {
		t.Fatalf("got %s, want member_removed of user 2", m.Raw)
	}
	if r := a.api.Do(http.MethodGet, "/channels/presence-room/users", nil, nil); r.Status != 200 || string(r.Body) != `{"users":[{"id":"1"}]}` {
		t.Fatalf("users after the sweep: %d %s", r.Status, r.Body)
	}

	s := lg.summary(t)
	expectExact(t, s, conns, events, conns/channels)
	// The dead gateway's 10 connections, and only they, were lost once
	// each (end of file or reset, as the kernel closed them) and came back.
	lost := int64(0)
	for kind, n := range s.Conns.Failures {
		if kind != "eof_subscribed" && kind != "reset" {
			t.Errorf("failure %s ×%d", kind, n)
		}
		lost += n
	}
	if s.Conns.Dropped != conns/3 || s.Conns.Reconnects != conns/3 || lost != conns/3 || len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("dropped %d, reconnects %d, failures %v, request failures %v; want %d lost and back",
			s.Conns.Dropped, s.Conns.Reconnects, s.Conns.Failures, s.Fanout.RequestFailures, conns/3)
	}
	t.Logf("gap: %d events sent while connections were away, %d of them arrived anyway", s.Fanout.Gap, s.Fanout.GapReceived)

	// The dead gateway's quota slot was given back by the same sweep, just
	// after the presence members.
	deadline := time.Now().Add(10 * time.Second)
	for {
		again := pushertest.Dial(t, a.addr, "/app/"+quotaKey)
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
// 200, and loadgen retries; gateways and workers reconnect by themselves,
// no client connection is lost, and every event the API acknowledged
// reaches every subscriber exactly once, in order.
func TestNATSRestartedUnderLoad(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	n := startRestartableNATS(t)
	c := startCluster(t, clusterSpec{gateways: 3, workers: 2, natsURL: n.url()})
	const conns, channels, events = 24, 8, 800
	lg := startLoadgen(t, c, c.gateways[0], "natsrestart", "-conns", strconv.Itoa(conns), "-channels", strconv.Itoa(channels),
		"-rate", "100", "-events", strconv.Itoa(events))
	lg.waitSent(t, events/4)
	n.p.stop(t)
	// Keep it down until the API has refused a request.
	waitFor(t, lg.proc, lgSendBound, "a request refused while NATS is down", func() bool {
		return lg.progress().RequestFailures > 0
	})
	n.start(t)

	s := lg.summary(t)
	expectExact(t, s, conns, events, conns/channels)
	f := s.Fanout
	if f.Expected != events*conns/channels || s.Conns.Dropped != 0 || len(s.Conns.Failures) != 0 {
		t.Errorf("expected %d, want %d; dropped %d, failures %v", f.Expected, events*conns/channels, s.Conns.Dropped, s.Conns.Failures)
	}
	for kind, k := range f.RequestFailures {
		if kind != "status_503" {
			t.Errorf("request failure %s ×%d; while NATS is down the API must answer 503", kind, k)
		}
	}
	if f.RequestFailures["status_503"] == 0 {
		t.Error("no request was refused while NATS was down")
	}
	t.Logf("%d requests refused while NATS was down, then retried", f.RequestFailures["status_503"])
}

// A client that stops reading: once its waiting output passes
// RESOUND_MAX_OUTBOUND its gateway cuts it off, while loadgen's
// subscribers of the same channel, on every gateway, receive every event
// exactly once, in order. What the slow client did get is the channel's
// events from the first, with no gap: a gateway never drops frames for a
// client it keeps.
func TestSlowConsumerIsCutOff(t *testing.T) {
	alone(t) // 30 MB/s through race-built gateways: CPU, not waiting (see "Running side by side" in procs_test.go)
	c := startCluster(t, clusterSpec{gateways: 3, workers: 2,
		gatewayEnv: func(int) []string { return []string{"RESOUND_MAX_OUTBOUND=4194304"} }})
	const run = "slow"
	slow := pushertest.Connect(t, c.gateways[1].addr, appKey)
	slow.Subscribe("lg-" + run + "-0")

	// 30 MB of events: far more than the kernel's socket buffers and the
	// 4 MiB the gateway may hold for the slow client, while a client that
	// reads, even on a loaded machine, stays well inside at about 5 MB/s.
	const conns, events = 6, 3000
	lg := startLoadgen(t, c, c.gateways[0], run, "-conns", strconv.Itoa(conns), "-channels", "1",
		"-payload", "10000", "-batch", "10", "-rate", "500", "-events", strconv.Itoa(events))
	s := lg.summary(t)
	expectExact(t, s, conns, events, conns)
	if s.Fanout.Expected != events*conns || s.Conns.Dropped != 0 || len(s.Conns.Failures) != 0 {
		t.Errorf("expected %d, want %d; dropped %d, failures %v", s.Fanout.Expected, events*conns, s.Conns.Dropped, s.Conns.Failures)
	}

	// Now read what the kernel still holds for the slow client: every
	// event from the first, in order, then the end of the connection.
	next := int64(1)
	for {
		f, err := slow.ReadFrame(10 * time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("after %d events the slow client is neither sent more nor closed: the gateway kept it and dropped its frames", next-1)
			}
			// The end of the stream (EOF, or a frame cut short, or a
			// reset): no close frame can get through output that does not
			// drain, so the gateway drops what waits and shuts the socket;
			// the client sees 1006 and pusher-js reconnects after its
			// back-off. Had the gateway sent a close frame, it would have
			// to be 4100 (Pusher's "over capacity": back off, then
			// reconnect), checked below.
			break
		}
		if f.OpCode == ws.OpClose {
			if len(f.Payload) < 2 || int(binary.BigEndian.Uint16(f.Payload)) != protocol.CodeOverCapacity {
				t.Fatalf("the slow client was closed with %q, want 4100 or no close frame", f.Payload)
			}
			break
		}
		var m struct {
			Event   string `json:"event"`
			Channel string `json:"channel"`
			Data    string `json:"data"`
		}
		var d struct {
			Seq int64 `json:"seq"`
		}
		if f.OpCode == ws.OpText && json.Unmarshal(f.Payload, &m) == nil && m.Event == protocol.EventPing {
			continue // it has been silent a while: the server may ask
		}
		if f.OpCode != ws.OpText || json.Unmarshal(f.Payload, &m) != nil || json.Unmarshal([]byte(m.Data), &d) != nil ||
			m.Event != "lg" || m.Channel != "lg-"+run+"-0" {
			t.Fatalf("after %d events the slow client got %v frame %.200q", next-1, f.OpCode, f.Payload)
		}
		if d.Seq != next {
			t.Fatalf("the slow client got event %d after %d: frames were dropped while it was kept", d.Seq, next-1)
		}
		next++
	}
	if next-1 >= events {
		t.Fatalf("the slow client got all %d events; it should have been cut off", events)
	}
	// And its gateway cut it off for its output, not for something else.
	if out := c.gateways[1].output(); !strings.Contains(out, `"limit":"outbound"`) {
		t.Errorf("gateway-1 did not log the outbound limit; its log:\n%s", c.gateways[1].tail(20))
	}
	t.Logf("the slow client got events 1 to %d, then was cut off", next-1)
}

// A gateway drained with SIGTERM under load: each of its clients gets 4200
// ("reconnect now") and a close, spread over RESOUND_DRAIN_WINDOW; all of
// them reconnect to the next gateway at about the same time, and every
// event sent after each is back reaches it exactly once, as it does the
// clients that never moved.
func TestReconnectStormAfterDrain(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	c := startCluster(t, clusterSpec{gateways: 3, workers: 2, gatewayEnv: func(i int) []string {
		if i == 0 {
			return []string{"RESOUND_DRAIN_WINDOW=2"}
		}
		return nil
	}})
	drained := c.gateways[0]
	// 300 connections over 10 channels: 100 on each gateway. 10 s of load:
	// the drain (2 s, then the exit of a race-detector build on a busy
	// machine) must end inside it.
	const conns, channels, events = 300, 10, 1500
	lg := startLoadgen(t, c, c.gateways[1], "storm", "-reconnect", "-conns", strconv.Itoa(conns), "-channels", strconv.Itoa(channels),
		"-rate", "150", "-events", strconv.Itoa(events))
	lg.waitSent(t, events/4)
	if code := drained.stop(t); code != 0 {
		t.Fatalf("drained gateway exited %d", code)
	}
	if p := lg.progress(); p.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before the drain ended", p.EventsSent)
	}

	s := lg.summary(t)
	expectExact(t, s, conns, events, conns/channels)
	want := map[string]int64{"pusher_error_4200": conns / 3, "server_close_4200": conns / 3}
	if s.Conns.Dropped != conns/3 || s.Conns.Reconnects != conns/3 || !sameCounts(s.Conns.Failures, want) || len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("dropped %d, reconnects %d, failures %v, request failures %v; want %d told to reconnect (%v), and back",
			s.Conns.Dropped, s.Conns.Reconnects, s.Conns.Failures, s.Fanout.RequestFailures, conns/3, want)
	}
	t.Logf("gap: %d events sent while connections were away, %d of them arrived anyway", s.Fanout.Gap, s.Fanout.GapReceived)
}

func sameCounts(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
