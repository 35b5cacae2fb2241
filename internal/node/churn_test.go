package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/protocol"
)

// churnApp counts connections and subscriptions, so that churn goes
// through every bucket the gateways write.
var churnApp = config.App{ID: "777", Key: "churn-key", Secret: "churn-secret", MaxConnections: 100000, SubscriptionCount: true}

// bufferedConn reads what the dialer buffered before the socket.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// churnClient is a bare WebSocket client that returns errors instead of
// failing the test, so that many can run in goroutines.
type churnClient struct {
	conn net.Conn
	sid  string
}

func dialChurn(addr string) (*churnClient, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+addr+"/app/"+churnApp.Key+"?protocol=7")
	if err != nil {
		return nil, err
	}
	if br != nil {
		// The first frame came with the handshake's answer: read it from
		// the dialer's buffer first.
		conn = bufferedConn{Conn: conn, r: io.MultiReader(br, conn)}
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := wsutil.ReadServerText(conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	var m struct {
		Data string `json:"data"`
	}
	var d struct {
		SocketID string `json:"socket_id"`
	}
	if json.Unmarshal(b, &m) != nil || json.Unmarshal([]byte(m.Data), &d) != nil || d.SocketID == "" {
		_ = conn.Close()
		return nil, fmt.Errorf("bad connection_established %s", b)
	}
	return &churnClient{conn: conn, sid: d.SocketID}, nil
}

func (c *churnClient) send(v any) error {
	b, _ := json.Marshal(v)
	return wsutil.WriteClientText(c.conn, b)
}

func (c *churnClient) signin(user string) error {
	ud := fmt.Sprintf(`{"id":%q}`, user)
	return c.send(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": churnApp.Key + ":" + sign(churnApp.Secret, c.sid+"::user::"+ud), "user_data": ud}})
}

func (c *churnClient) subscribe(channel, channelData string) error {
	data := map[string]any{"channel": channel}
	kind := protocol.ClassifyChannel(channel)
	if kind.Auth == protocol.AuthPrivate || kind.Auth == protocol.AuthPresence {
		msg := c.sid + ":" + channel
		if channelData != "" {
			msg += ":" + channelData
			data["channel_data"] = channelData
		}
		data["auth"] = churnApp.Key + ":" + sign(churnApp.Secret, msg)
	}
	return c.send(map[string]any{"event": "pusher:subscribe", "data": data})
}

func (c *churnClient) unsubscribe(channel string) error {
	return c.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]any{"channel": channel}})
}

// readSome reads up to n messages, to let some of what was sent complete.
func (c *churnClient) readSome(n int) {
	_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := 0; i < n; i++ {
		if _, err := wsutil.ReadServerText(c.conn); err != nil {
			return
		}
	}
}

// Connections that sign in, join presence, private, public and cache
// channels, leave some, and close — abruptly or cleanly, often before
// their requests are answered — over two gateways, leave the shared state
// exactly as it was: no member, signed-in user, connection slot or
// subscription count outlives its connection. Each connection's joins and
// leaves, sign-ins and sign-outs must apply in order for this to hold.
func TestChurnLeavesSharedStateEmpty(t *testing.T) {
	tc := startCluster(t, churnApp)
	addrs := []string{tc.a.Addr().String(), tc.b.Addr().String()}
	const workers, rounds = 16, 12
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for r := 0; r < rounds; r++ {
				c, err := dialChurn(addrs[(w+r)%2])
				if err != nil {
					errs <- err
					return
				}
				user := fmt.Sprintf("u%d", w%4)
				cd := fmt.Sprintf(`{"user_id":%q,"user_info":{}}`, user)
				steps := []func() error{
					func() error { return c.signin(user) },
					func() error { return c.subscribe("presence-room", cd) },
					func() error { return c.subscribe(fmt.Sprintf("private-p%d", w%3), "") },
					func() error { return c.subscribe(fmt.Sprintf("pub%d", rng.IntN(5)), "") },
					func() error { return c.subscribe("cache-c", "") },
				}
				for _, step := range steps {
					if err := step(); err != nil {
						break
					}
				}
				if rng.IntN(2) == 0 {
					c.readSome(rng.IntN(6))
				}
				if rng.IntN(3) == 0 {
					_ = c.unsubscribe("presence-room")
					if rng.IntN(2) == 0 {
						_ = c.subscribe("presence-room", cd)
					}
				}
				if rng.IntN(2) == 0 {
					_ = ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
				}
				_ = c.conn.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	nc, err := nats.Connect(tc.a.Config().NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	var left []string
	for {
		left = left[:0]
		for _, bucket := range []string{cluster.BucketPresence, cluster.BucketUsers, cluster.BucketCounts} {
			kv, err := js.KeyValue(ctx, bucket)
			if err != nil {
				t.Fatal(err)
			}
			keys, err := kv.Keys(ctx)
			if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
				t.Fatal(err)
			}
			for _, k := range keys {
				e, err := kv.Get(ctx, k)
				if err == nil {
					left = append(left, fmt.Sprintf("%s %s = %s", bucket, k, e.Value()))
				}
			}
		}
		chans := tc.a.Gateway().Channels() + tc.b.Gateway().Channels()
		if len(left) == 0 && chans == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after churn, %d local channels and shared state left: %v", chans, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
