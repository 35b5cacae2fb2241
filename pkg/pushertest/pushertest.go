// Package pushertest is a small, strict Pusher client for Go tests: a raw
// WebSocket connection whose frames the test reads one by one, and a
// signer for HTTP API requests. The end-to-end suite uses the real npm
// clients; this package is for tests that must see exact frames and close
// codes.
package pushertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/protocol"
)

// Client is one raw connection.
type Client struct {
	t        testing.TB
	conn     net.Conn
	br       *bufio.Reader
	SocketID string
}

// Message is a decoded Pusher message. Data is unwrapped when the server
// sent it as a JSON string holding JSON.
type Message struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	UserID  string          `json:"user_id"`
	// Position is an event's position, on apps with recovery.
	Position string `json:"position"`
	Raw      []byte `json:"-"`
}

// DataString returns data as the string the server sent.
func (m Message) DataString() string {
	var s string
	if json.Unmarshal(m.Data, &s) == nil {
		return s
	}
	return string(m.Data)
}

// DataObject decodes data (unwrapping a JSON string) into v.
func (m Message) DataObject(v any) error {
	var s string
	if json.Unmarshal(m.Data, &s) == nil {
		return json.Unmarshal([]byte(s), v)
	}
	return json.Unmarshal(m.Data, v)
}

// Dial connects to ws://addr/app/key without reading anything.
func Dial(t testing.TB, addr, path string) *Client {
	t.Helper()
	return DialWith(t, addr, path, nil)
}

// DialWith is Dial with extra handshake headers (an Origin, say).
func DialWith(t testing.TB, addr, path string, header ws.HandshakeHeader) *Client {
	t.Helper()
	return dial(t, "ws://"+addr+path, header, nil)
}

// DialTLS connects to wss://addr/path, verifying the server with cfg.
func DialTLS(t testing.TB, addr, path string, cfg *tls.Config) *Client {
	t.Helper()
	return dial(t, "wss://"+addr+path, nil, cfg)
}

func dial(t testing.TB, u string, header ws.HandshakeHeader, cfg *tls.Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dialer{Header: header, TLSConfig: cfg}.Dial(ctx, u)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	c := &Client{t: t, conn: conn, br: br}
	t.Cleanup(func() { _ = conn.Close() })
	return c
}

// Connect dials and reads pusher:connection_established.
func Connect(t testing.TB, addr, key string) *Client {
	t.Helper()
	return established(Dial(t, addr, "/app/"+key+"?protocol=7&client=go&version=test"))
}

// ConnectTLS is Connect over wss://, verifying the server with cfg.
func ConnectTLS(t testing.TB, addr, key string, cfg *tls.Config) *Client {
	t.Helper()
	return established(DialTLS(t, addr, "/app/"+key+"?protocol=7&client=go&version=test", cfg))
}

// established reads pusher:connection_established and keeps the socket id.
func established(c *Client) *Client {
	t := c.t
	t.Helper()
	m := c.Expect(protocol.EventConnectionEstablished)
	var d struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	if err := m.DataObject(&d); err != nil || !protocol.ValidSocketID(d.SocketID) || d.ActivityTimeout <= 0 {
		t.Fatalf("bad connection_established %s (%v)", m.Raw, err)
	}
	c.SocketID = d.SocketID
	return c
}

// Frame is a raw frame from the server.
type Frame struct {
	OpCode  ws.OpCode
	Payload []byte
}

// ReadFrame reads the next frame, failing the test after timeout.
func (c *Client) ReadFrame(timeout time.Duration) (Frame, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		return Frame{}, err
	}
	if h.Length > 16<<20 {
		return Frame{}, fmt.Errorf("frame of %d bytes", h.Length)
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return Frame{}, err
	}
	if h.Masked {
		ws.Cipher(payload, h.Mask, 0)
	}
	return Frame{OpCode: h.OpCode, Payload: payload}, nil
}

// Read reads the next Pusher message, skipping nothing.
func (c *Client) Read(timeout time.Duration) (Message, error) {
	f, err := c.ReadFrame(timeout)
	if err != nil {
		return Message{}, err
	}
	if f.OpCode != ws.OpText {
		return Message{}, fmt.Errorf("got %v frame (payload %q), want text", f.OpCode, f.Payload)
	}
	var m Message
	if err := json.Unmarshal(f.Payload, &m); err != nil {
		return Message{}, fmt.Errorf("bad JSON %q: %v", f.Payload, err)
	}
	m.Raw = f.Payload
	return m, nil
}

// Expect reads the next message and fails unless it is event.
func (c *Client) Expect(event string) Message {
	c.t.Helper()
	m, err := c.Read(10 * time.Second)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", event, err)
	}
	if m.Event != event {
		c.t.Fatalf("got %s, want %s", m.Raw, event)
	}
	return m
}

// ExpectError reads a pusher:error and checks its code.
func (c *Client) ExpectError(code int) Message {
	c.t.Helper()
	m := c.Expect(protocol.EventError)
	var d struct {
		Code int `json:"code"`
	}
	if err := m.DataObject(&d); err != nil || d.Code != code {
		c.t.Fatalf("got %s, want code %d", m.Raw, code)
	}
	return m
}

// ExpectClose reads frames until a close frame and checks its code.
func (c *Client) ExpectClose(code int) {
	c.t.Helper()
	for {
		f, err := c.ReadFrame(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for close %d: %v", code, err)
		}
		if f.OpCode != ws.OpClose {
			continue
		}
		if len(f.Payload) < 2 || int(binary.BigEndian.Uint16(f.Payload)) != code {
			c.t.Fatalf("close frame %q, want code %d", f.Payload, code)
		}
		return
	}
}

// ExpectSilence fails if a message arrives within d.
func (c *Client) ExpectSilence(d time.Duration) {
	c.t.Helper()
	if m, err := c.Read(d); err == nil {
		c.t.Fatalf("unexpected message %s", m.Raw)
	}
}

// Send writes a masked text frame.
func (c *Client) Send(payload []byte) {
	c.t.Helper()
	if err := ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewTextFrame(payload))); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// SendFrame writes an arbitrary masked frame.
func (c *Client) SendFrame(f ws.Frame) {
	c.t.Helper()
	if err := ws.WriteFrame(c.conn, ws.MaskFrame(f)); err != nil {
		c.t.Fatalf("send frame: %v", err)
	}
}

// SendJSON sends v as JSON.
func (c *Client) SendJSON(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.Send(b)
}

// Subscribe subscribes to a public channel and waits for success.
func (c *Client) Subscribe(channel string) {
	c.t.Helper()
	c.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{"channel": channel}})
	m := c.Expect(protocol.EventSubscriptionSucceeded)
	if m.Channel != channel {
		c.t.Fatalf("subscribed to %s, want %s", m.Channel, channel)
	}
}

// Close closes the TCP connection.
func (c *Client) Close() { _ = c.conn.Close() }

// API signs and sends HTTP API requests.
type API struct {
	BaseURL string
	AppID   string
	Key     string
	Secret  string
	// Now is the clock signatures use; nil means time.Now.
	Now    func() time.Time
	Client *http.Client
}

// Response is an HTTP API answer.
type Response struct {
	Status int
	Body   []byte
}

// Do sends a signed request. path is relative to /apps/{id}.
func (a *API) Do(method, path string, body []byte, extra url.Values) Response {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	full := "/apps/" + a.AppID + path
	q := url.Values{}
	for k, v := range extra {
		q[k] = v
	}
	q.Set("auth_key", a.Key)
	q.Set("auth_timestamp", strconv.FormatInt(now().Unix(), 10))
	q.Set("auth_version", "1.0")
	if len(body) > 0 {
		q.Set("body_md5", protocol.BodyMD5(body))
	}
	q.Set("auth_signature", protocol.SignRequest(a.Secret, method, full, q))
	req, err := http.NewRequest(method, a.BaseURL+full+"?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	hc := a.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Response{Status: -1, Body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Body: b}
}

// Trigger posts one event.
func (a *API) Trigger(channels []string, name, data, socketID string) Response {
	body := map[string]any{"name": name, "data": data, "channels": channels}
	if socketID != "" {
		body["socket_id"] = socketID
	}
	b, _ := json.Marshal(body)
	return a.Do(http.MethodPost, "/events", b, nil)
}
