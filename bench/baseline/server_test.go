package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/protocol"
)

func testServer(t *testing.T) *httptest.Server {
	t.Helper()
	cfg := config{
		appID: "1", key: "k", secret: "s", sendBuffer: 16,
		pingInterval: time.Minute, pongTimeout: time.Minute,
		activityTimeout: 30, maxMessageSize: 10000, maxRequestSize: 1 << 16,
	}
	ts := httptest.NewServer(newServer(cfg, zerolog.Nop()).routes())
	t.Cleanup(ts.Close)
	return ts
}

// dial connects and returns the connection once connection_established
// has arrived.
func dial(t *testing.T, ts *httptest.Server, key string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/app/"+key, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	// A bound on a read that never comes, so a broken server fails the
	// test instead of hanging it.
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	return ws
}

func read(t *testing.T, ws *websocket.Conn) string {
	t.Helper()
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func signedPost(t *testing.T, ts *httptest.Server, path, secret string, body []byte) *http.Response {
	t.Helper()
	q := url.Values{}
	q.Set("auth_key", "k")
	q.Set("auth_timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	q.Set("auth_version", "1.0")
	q.Set("body_md5", protocol.BodyMD5(body))
	q.Set("auth_signature", protocol.SignRequest(secret, http.MethodPost, path, q))
	resp, err := http.Post(ts.URL+path+"?"+q.Encode(), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp
}

func TestSubscribeAndTrigger(t *testing.T) {
	ts := testServer(t)
	ws := dial(t, ts, "k")
	if m := read(t, ws); !strings.Contains(m, `"pusher:connection_established"`) {
		t.Fatalf("first message %s", m)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"event":"pusher:subscribe","data":{"channel":"news"}}`)); err != nil {
		t.Fatal(err)
	}
	if m := read(t, ws); m != `{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}` {
		t.Fatalf("subscribe answer %s", m)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"event":"pusher:ping","data":{}}`)); err != nil {
		t.Fatal(err)
	}
	if m := read(t, ws); m != string(protocol.MessagePong) {
		t.Fatalf("ping answer %s", m)
	}

	if resp := signedPost(t, ts, "/apps/1/events", "s", []byte(`{"name":"e","channels":["news","other"],"data":"{\"n\":1}"}`)); resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %s", resp.Status)
	}
	if m := read(t, ws); m != `{"event":"e","channel":"news","data":"{\"n\":1}"}` {
		t.Fatalf("event %s", m)
	}
	batch := `{"batch":[{"name":"a","channel":"news","data":"1"},{"name":"b","channel":"news","data":"2"}]}`
	if resp := signedPost(t, ts, "/apps/1/batch_events", "s", []byte(batch)); resp.StatusCode != http.StatusOK {
		t.Fatalf("batch_events: %s", resp.Status)
	}
	for _, want := range []string{`{"event":"a","channel":"news","data":"1"}`, `{"event":"b","channel":"news","data":"2"}`} {
		if m := read(t, ws); m != want {
			t.Fatalf("batch event %s, want %s", m, want)
		}
	}
}

func TestRefusals(t *testing.T) {
	ts := testServer(t)
	if resp := signedPost(t, ts, "/apps/1/events", "wrong", []byte(`{"name":"e","channels":["c"],"data":"x"}`)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad signature: %s", resp.Status)
	}
	if resp := signedPost(t, ts, "/apps/2/events", "s", []byte(`{"name":"e","channels":["c"],"data":"x"}`)); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown app: %s", resp.Status)
	}

	ws := dial(t, ts, "k")
	read(t, ws)
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"event":"pusher:subscribe","data":{"channel":"private-x"}}`)); err != nil {
		t.Fatal(err)
	}
	if m := read(t, ws); !strings.Contains(m, `"pusher:subscription_error"`) {
		t.Fatalf("private subscribe answer %s", m)
	}

	bad := dial(t, ts, "nope")
	if m := read(t, bad); !strings.Contains(m, `4001`) {
		t.Fatalf("unknown key answer %s", m)
	}
	if _, _, err := bad.ReadMessage(); !websocket.IsCloseError(err, 4001) {
		t.Fatalf("unknown key: %v, want close 4001", err)
	}
}
