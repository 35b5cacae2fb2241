// Package attack holds the attacks of docs/security.md as plain functions:
// each takes the gateway under attack (a Target) and options, runs over
// real sockets, and returns what the attacker's sockets saw, so that the
// adversarial tests (tests/adversarial) assert on it and a soak run can
// call the same functions in a loop. Bystander is the innocent party: a few
// clients receiving a numbered stream of events, which must lose nothing
// while an attack runs.
//
// Nothing here asserts or knows about testing.T: an attack reports, the
// caller judges. The only errors returned are the attacker's own failures
// (it could not even connect); what the server did is in the result.
package attack

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// patience bounds each wait for something the server must do (answer,
// close, read what it was sent). It is long: the wait ends as soon as the
// server acts, and on a loaded machine (CI runs packages side by side) a
// gateway may take seconds, which is not what an attack tests.
const patience = time.Minute

// Target is the gateway under attack and the app its clients use.
type Target struct {
	// Addr is the public host:port: WebSocket and HTTP API.
	Addr   string
	AppID  string
	Key    string
	Secret string
}

// ChannelAuth signs a private or presence subscription for socketID, as an
// app's auth endpoint would.
func (t Target) ChannelAuth(socketID, channel, channelData string) string {
	msg := protocol.ChannelAuthMessage(socketID, channel, channelData, channelData != "")
	return t.Key + ":" + protocol.Sign(t.Secret, msg)
}

// API returns a signer for the HTTP API whose connections come from source
// (an address of this host, "" for any). Statuses the gateway answers are
// in the Response; a request that got no answer has Status -1.
func (t Target) API(source string, keepAlive bool) *pushertest.API {
	return &pushertest.API{
		BaseURL: "http://" + t.Addr, AppID: t.AppID, Key: t.Key, Secret: t.Secret,
		Client: &http.Client{Timeout: 30 * time.Second, Transport: newTransport(source, keepAlive)},
	}
}

func newTransport(source string, keepAlive bool) *http.Transport {
	d := netDialer(DialOptions{Source: source})
	return &http.Transport{
		DialContext:         d.DialContext,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
}

// DialOptions shape an attacker's socket.
type DialOptions struct {
	// Source is the local address to connect from ("127.0.0.2"): loopback
	// has all of 127/8, so each attack can have its own client IP. Empty
	// lets the kernel choose.
	Source string
	// Header holds extra handshake headers (X-Forwarded-For, Origin).
	Header http.Header
	// Preamble is written before the HTTP request: a PROXY protocol header.
	Preamble []byte
	// ReadBuffer sets SO_RCVBUF before connecting, so that a client that
	// does not read pushes back after a few KiB rather than megabytes.
	ReadBuffer int
	// MaxSegment sets TCP_MAXSEG before connecting. Loopback's 64 KiB
	// segments make the server's kernel size its send buffer in
	// megabytes; small segments keep it small, so that output a client
	// does not read piles up in the server process, where bounds apply.
	MaxSegment int
	// Path is the request path; empty is /app/{key} with pusher-js's query.
	Path string
	// Timeout bounds connect and handshake; 0 is 10 s.
	Timeout time.Duration
}

func netDialer(o DialOptions) *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if o.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.Source)}
	}
	if o.ReadBuffer > 0 || o.MaxSegment > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = setBuffers(fd, o.ReadBuffer, o.MaxSegment) })
			return errors.Join(err, serr)
		}
	}
	return d
}

// DialTCP connects a plain socket to addr with o's source and buffers.
func DialTCP(ctx context.Context, addr string, o DialOptions) (net.Conn, error) {
	return netDialer(o).DialContext(ctx, "tcp", addr)
}

// Conn is a raw WebSocket client connection: frames are written exactly
// as given (masked, unless the caller builds the bytes) and read one by
// one, so that an attack sees every frame and close code the server sends.
type Conn struct {
	nc net.Conn
	br *bufio.Reader
	// wmu serialises writes: a reader goroutine answers pings while the
	// owner sends.
	wmu sync.Mutex
	// SocketID is set by Connect.
	SocketID string
}

// StatusError is the HTTP status of a refused WebSocket handshake.
type StatusError = ws.StatusError

// Dial opens a WebSocket to the target without reading anything after the
// handshake. A refused handshake returns a StatusError with the status.
func (t Target) Dial(ctx context.Context, o DialOptions) (*Conn, error) {
	path := o.Path
	if path == "" {
		path = "/app/" + t.Key + "?protocol=7&client=resound-attack&version=1.0"
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	d := netDialer(o)
	dialer := ws.Dialer{
		Timeout: timeout,
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil || len(o.Preamble) == 0 {
				return nc, err
			}
			if _, err := nc.Write(o.Preamble); err != nil {
				_ = nc.Close()
				return nil, err
			}
			return nc, nil
		},
	}
	if len(o.Header) > 0 {
		dialer.Header = ws.HandshakeHeaderHTTP(o.Header)
	}
	nc, br, _, err := dialer.Dial(ctx, "ws://"+t.Addr+path)
	if err != nil {
		if nc != nil {
			_ = nc.Close()
		}
		return nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(nc, 4096)
	}
	return &Conn{nc: nc, br: br}, nil
}

// Connect dials and reads pusher:connection_established.
func (t Target) Connect(ctx context.Context, o DialOptions) (*Conn, error) {
	c, err := t.Dial(ctx, o)
	if err != nil {
		return nil, err
	}
	m, err := c.ReadMessage(10 * time.Second)
	if err == nil && m.Event != protocol.EventConnectionEstablished {
		err = fmt.Errorf("got %s, want %s", m.Raw, protocol.EventConnectionEstablished)
	}
	var d struct {
		SocketID string `json:"socket_id"`
	}
	if err == nil {
		if err = m.DataObject(&d); err == nil && !protocol.ValidSocketID(d.SocketID) {
			err = fmt.Errorf("bad socket id in %s", m.Raw)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SocketID = d.SocketID
	return c, nil
}

// NetConn is the underlying socket, for attacks that write raw bytes.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the socket without a closing handshake.
func (c *Conn) Close() { _ = c.nc.Close() }

// WriteRaw writes b as is.
func (c *Conn) WriteRaw(b []byte, timeout time.Duration) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.nc.Write(b)
	return err
}

// WriteFrame masks a copy of f, as a client must, and writes it.
func (c *Conn) WriteFrame(f ws.Frame) error {
	f.Payload = append([]byte(nil), f.Payload...)
	b, err := ws.CompileFrame(ws.MaskFrameInPlace(f))
	if err != nil {
		return err
	}
	return c.WriteRaw(b, patience)
}

// SendText writes one masked text frame.
func (c *Conn) SendText(payload []byte) error { return c.WriteFrame(ws.NewTextFrame(payload)) }

// SendJSON writes v as a text frame.
func (c *Conn) SendJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.SendText(b)
}

// Subscribe sends pusher:subscribe; auth and channelData may be empty.
func (c *Conn) Subscribe(channel, auth, channelData string) error {
	d := map[string]any{"channel": channel}
	if auth != "" {
		d["auth"] = auth
	}
	if channelData != "" {
		d["channel_data"] = channelData
	}
	return c.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": d})
}

// Frame is one frame from the server.
type Frame struct {
	OpCode  ws.OpCode
	Fin     bool
	Payload []byte
}

// maxFrame is the largest frame a client here accepts from the server.
const maxFrame = 16 << 20

// ReadFrame reads the next frame.
func (c *Conn) ReadFrame(timeout time.Duration) (Frame, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		return Frame{}, err
	}
	if h.Length > maxFrame {
		return Frame{}, fmt.Errorf("server sent a frame of %d bytes", h.Length)
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return Frame{}, err
	}
	if h.Masked {
		return Frame{}, errors.New("server sent a masked frame")
	}
	return Frame{OpCode: h.OpCode, Fin: h.Fin, Payload: payload}, nil
}

// ErrInvalidUTF8 is returned for a text frame that is not UTF-8: a client
// such as a browser fails the connection on it (RFC 6455 §8.1).
var ErrInvalidUTF8 = errors.New("server sent a text frame that is not valid UTF-8")

// CloseError is a close frame from the server where a message was wanted.
type CloseError struct {
	Code   int // 0: the close frame had no code
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("closed by the server with %d %q", e.Code, e.Reason)
}

// ReadMessage reads the next Pusher message. It answers WebSocket pings,
// skips pongs, and fails on a close frame (a *CloseError), a binary frame
// or a text frame that is not UTF-8 or not JSON.
func (c *Conn) ReadMessage(timeout time.Duration) (pushertest.Message, error) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := c.ReadFrame(time.Until(deadline))
		if err != nil {
			return pushertest.Message{}, err
		}
		switch f.OpCode {
		case ws.OpPing:
			_ = c.WriteFrame(ws.NewPongFrame(f.Payload))
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			code, reason := CloseCode(f.Payload)
			return pushertest.Message{}, &CloseError{Code: code, Reason: reason}
		case ws.OpText:
		default:
			return pushertest.Message{}, fmt.Errorf("server sent a %v frame", f.OpCode)
		}
		if !f.Fin {
			return pushertest.Message{}, errors.New("server sent a fragmented message")
		}
		if !utf8.Valid(f.Payload) {
			return pushertest.Message{}, ErrInvalidUTF8
		}
		var m pushertest.Message
		if err := json.Unmarshal(f.Payload, &m); err != nil {
			return pushertest.Message{}, fmt.Errorf("bad JSON %q: %v", f.Payload, err)
		}
		m.Raw = f.Payload
		return m, nil
	}
}

// Await reads messages until one is event on channel ("" for any
// channel), returning it and how many others came first.
func (c *Conn) Await(event, channel string, timeout time.Duration) (pushertest.Message, int, error) {
	deadline := time.Now().Add(timeout)
	skipped := 0
	for {
		m, err := c.ReadMessage(time.Until(deadline))
		if err != nil {
			return m, skipped, fmt.Errorf("waiting for %s: %w", event, err)
		}
		if m.Event == event && (channel == "" || m.Channel == channel) {
			return m, skipped, nil
		}
		skipped++
	}
}

// Closed is how a connection ended, as its client saw it.
type Closed struct {
	// Code is the close frame's code: 0 when it had none, -1 when the
	// connection ended without a close frame (reset, EOF or timeout).
	Code   int
	Reason string
	// Err is the read error when there was no close frame.
	Err error
	// Texts and InvalidUTF8 count the text frames before the end, and
	// those of them that were not UTF-8.
	Texts, InvalidUTF8 int
}

// AwaitClose reads frames until the server's close frame or the end of
// the connection.
func (c *Conn) AwaitClose(timeout time.Duration) Closed {
	deadline := time.Now().Add(timeout)
	var out Closed
	for {
		f, err := c.ReadFrame(time.Until(deadline))
		if err != nil {
			out.Code, out.Err = -1, err
			return out
		}
		switch f.OpCode {
		case ws.OpClose:
			out.Code, out.Reason = CloseCode(f.Payload)
			return out
		case ws.OpText:
			out.Texts++
			if !utf8.Valid(f.Payload) {
				out.InvalidUTF8++
			}
		}
	}
}

// CloseCode decodes a close frame's payload.
func CloseCode(payload []byte) (int, string) {
	if len(payload) < 2 {
		return 0, ""
	}
	return int(binary.BigEndian.Uint16(payload)), string(payload[2:])
}

// SendableCloseCode reports whether an endpoint may send code in a close
// frame (RFC 6455 §7.4): 1000–1003, 1007–1014 and 3000–4999. 1004–1006 and
// 1015 are reserved and must never be sent; the rest is unassigned.
func SendableCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014, code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// statusLine parses "HTTP/1.1 431 ..." at the start of b; 0 if it is not one.
func statusLine(b []byte) int {
	s := string(b)
	if !strings.HasPrefix(s, "HTTP/1.") || len(s) < len("HTTP/1.1 200") {
		return 0
	}
	n, err := strconv.Atoi(s[9:12])
	if err != nil {
		return 0
	}
	return n
}

// readStatus reads from nc until it ends, and returns the HTTP status the
// first bytes carried (0 for none) and the error that ended the reading.
func readStatus(nc net.Conn) (int, error) {
	var head [64]byte
	n := 0
	buf := make([]byte, 4096)
	for {
		k, err := nc.Read(buf)
		if n < len(head) {
			n += copy(head[n:], buf[:k])
		}
		if err != nil {
			return statusLine(head[:n]), err
		}
	}
}

// isTimeout reports whether err is a deadline passing: the server had not
// closed the socket.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
