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
