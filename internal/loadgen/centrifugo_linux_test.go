package loadgen

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// centrifugoStandIn speaks the few frames of Centrifugo's JSON protocol
// and server API that the load generator uses, as Centrifugo writes them:
// replies to connect and subscribe, a ping, publications as pushes, and
// several replies in one WebSocket message, one per line. The real
// Centrifugo is a peer install and stays out of the test suite; this
// checks the adapter's wiring through the poller and the trigger.
type centrifugoStandIn struct {
	apiKey string
	mu     sync.Mutex
	subs   map[string][]*standInConn
	pongs  int
}

type standInConn struct {
	mu sync.Mutex // one writer at a time
	ws *websocket.Conn
}

func (c *standInConn) write(lines ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.ws.WriteMessage(websocket.TextMessage, []byte(strings.Join(lines, "\n")))
}

func (s *centrifugoStandIn) routes() http.Handler {
	mux := http.NewServeMux()
	up := websocket.Upgrader{}
	mux.HandleFunc("GET /connection/websocket", func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := &standInConn{ws: ws}
		go func() {
			defer func() { _ = ws.Close() }()
			for {
				_, msg, err := ws.ReadMessage()
				if err != nil {
					return
				}
				for _, line := range strings.Split(string(msg), "\n") {
					var cmd struct {
						ID        int `json:"id"`
						Connect   any `json:"connect"`
						Subscribe *struct {
							Channel string `json:"channel"`
						} `json:"subscribe"`
					}
					if err := json.Unmarshal([]byte(line), &cmd); err != nil {
						return
					}
					switch {
					case cmd.ID == 0:
						s.mu.Lock()
						s.pongs++
						s.mu.Unlock()
					case cmd.Connect != nil:
						// The connect result and, in the same message, a ping.
						c.write(`{"id":1,"connect":{"client":"c","version":"6.9.1","ping":25,"pong":true}}`, `{}`)
					case cmd.Subscribe != nil:
						s.mu.Lock()
						s.subs[cmd.Subscribe.Channel] = append(s.subs[cmd.Subscribe.Channel], c)
						s.mu.Unlock()
						c.write(`{"id":2,"subscribe":{}}`)
					}
				}
			}
		}()
	})
	mux.HandleFunc("POST /api/{method}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-Key") != s.apiKey {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		type publish struct {
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}
		var pubs []publish
		switch r.PathValue("method") {
		case "publish":
			var p publish
			_ = json.Unmarshal(body, &p)
			pubs = append(pubs, p)
		case "batch":
			var b struct {
				Commands []struct {
					Publish publish `json:"publish"`
				} `json:"commands"`
			}
			_ = json.Unmarshal(body, &b)
			for _, c := range b.Commands {
				pubs = append(pubs, c.Publish)
			}
		}
		// All of a request's publications to a connection go out in one
		// message, one per line.
		out := map[*standInConn][]string{}
		var order []*standInConn
		s.mu.Lock()
		for _, p := range pubs {
			if p.Channel == "" {
				_, _ = io.WriteString(w, `{"error":{"code":107,"message":"bad request"}}`)
				s.mu.Unlock()
				return
			}
			for _, c := range s.subs[p.Channel] {
				if out[c] == nil {
					order = append(order, c)
				}
				out[c] = append(out[c], `{"push":{"channel":"`+p.Channel+`","pub":{"data":`+string(p.Data)+`,"offset":1}}}`)
			}
		}
		s.mu.Unlock()
		for _, c := range order {
			c.write(out[c]...)
		}
		if r.PathValue("method") == "batch" {
			_, _ = io.WriteString(w, `{"replies":[`+strings.TrimSuffix(strings.Repeat(`{"publish":{}},`, len(pubs)), ",")+`]}`)
			return
		}
		_, _ = io.WriteString(w, `{"result":{}}`)
	})
	return mux
}

func TestCentrifugoAgainstStandIn(t *testing.T) {
	s := &centrifugoStandIn{apiKey: "api-key", subs: map[string][]*standInConn{}}
	ts := httptest.NewServer(s.routes())
	t.Cleanup(ts.Close)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)

	for _, batch := range []int{1, 10} {
		cfg := Config{Mode: ModeFanout, Protocol: ProtocolCentrifugo, URL: ts.URL, Secret: "api-key",
			Conns: 12, Channels: 3, Events: 60, Batch: batch, Duration: 10 * time.Second, Run: "cf" + strconv.Itoa(batch)}
		sum, err := Run(context.Background(), cfg, log)
		if err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		c, f := sum.Conns, sum.Fanout
		if c.Subscribed != 12 || c.Failed != 0 || c.Dropped != 0 || c.PingsAnswered != 12 || len(c.Failures) != 0 {
			t.Fatalf("batch %d: conns %+v", batch, c)
		}
		if f.EventsSent != 60 || f.Expected != 60*4 || f.Deliveries != 60*4 || f.Missing != 0 || f.Duplicates != 0 ||
			f.OutOfOrder != 0 || f.Malformed != 0 || len(f.RequestFailures) != 0 || sum.LatencyMs.Count != 240 {
			t.Fatalf("batch %d: fanout %+v latency %+v", batch, *f, sum.LatencyMs)
		}
	}

	// Each connection answered its ping before closing, and the stand-in
	// read everything before it saw the close.
	s.mu.Lock()
	pongs := s.pongs
	s.mu.Unlock()
	if pongs != 24 {
		t.Fatalf("%d pongs, want 24", pongs)
	}

	// A wrong API key stops the run with the status.
	sum, err := Run(context.Background(), Config{Mode: ModeFanout, Protocol: ProtocolCentrifugo, URL: ts.URL, Secret: "wrong",
		Conns: 1, Channels: 1, Events: 3, Duration: 5 * time.Second, Run: "cfbad"}, log)
	if err == nil || sum.Fanout.RequestFailures["status_401"] != 1 {
		t.Fatalf("wrong key: %v %+v", err, sum.Fanout)
	}
}
