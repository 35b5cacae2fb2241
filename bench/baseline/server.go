package main

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/protocol"
)

// timestampWindow is how far auth_timestamp may be from now (Pusher's).
const timestampWindow = 600 * time.Second

// writeTimeout bounds one frame write, so a dead peer frees its writer.
const writeTimeout = 10 * time.Second

type server struct {
	cfg      config
	log      zerolog.Logger
	upgrader websocket.Upgrader
	// socketPrefix and nextID make socket ids "prefix.n", unique in
	// this process.
	socketPrefix uint64
	nextID       atomic.Uint64

	mu       sync.RWMutex
	channels map[string]map[*client]struct{}
}

func newServer(cfg config, log zerolog.Logger) *server {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &server{
		cfg: cfg, log: log,
		// gorilla's chat example's buffer sizes; any origin, as a
		// benchmark target.
		upgrader: websocket.Upgrader{
			ReadBufferSize: 1024, WriteBufferSize: 1024,
			CheckOrigin: func(*http.Request) bool { return true },
		},
		socketPrefix: uint64(binary.BigEndian.Uint32(b[:])),
		channels:     map[string]map[*client]struct{}{},
	}
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /app/{key}", s.serveWS)
	mux.HandleFunc("POST /apps/{id}/events", s.serveEvents)
	mux.HandleFunc("POST /apps/{id}/batch_events", s.serveBatch)
	mux.HandleFunc("GET /up", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "OK") })
	return mux
}

// client is one WebSocket connection.
type client struct {
	srv  *server
	ws   *websocket.Conn
	id   string
	send chan []byte
	// done is closed when the connection is dropped; publishers select on
	// it rather than on a closed send channel.
	done     chan struct{}
	dropOnce sync.Once
	subs     map[string]struct{} // the reader's own
}

func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	if r.PathValue("key") != s.cfg.key {
		_ = ws.WriteMessage(websocket.TextMessage, protocol.AppendError(nil, 4001, "Application does not exist"))
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "Application does not exist"), time.Now().Add(time.Second))
		_ = ws.Close()
		return
	}
	c := &client{
		srv: s, ws: ws,
		id:   strconv.FormatUint(s.socketPrefix, 10) + "." + strconv.FormatUint(s.nextID.Add(1), 10),
		send: make(chan []byte, s.cfg.sendBuffer),
		done: make(chan struct{}),
		subs: map[string]struct{}{},
	}
	c.send <- protocol.AppendConnectionEstablished(nil, c.id, s.cfg.activityTimeout)
	go c.writeLoop()
	go c.readLoop()
}

// drop ends the connection: the writer stops and the reader's next read
// fails, and it unsubscribes.
func (c *client) drop() {
	c.dropOnce.Do(func() {
		close(c.done)
		_ = c.ws.Close()
	})
}

// enqueue queues a frame for the writer; a connection that is that far
// behind is dropped, so that it never holds the others up.
func (c *client) enqueue(frame []byte) {
	select {
	case c.send <- frame:
	case <-c.done:
	default:
		c.srv.log.Debug().Str("socket_id", c.id).Msg("send queue full, dropping the connection")
		c.drop()
	}
}

func (c *client) writeLoop() {
	ping := time.NewTicker(c.srv.cfg.pingInterval)
	defer ping.Stop()
	for {
		select {
		case frame := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
				c.drop()
				return
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
				c.drop()
				return
			}
		case <-c.done:
			return
		}
	}
}

func (c *client) readLoop() {
	defer func() {
		c.srv.unsubscribeAll(c)
		c.drop()
	}()
	cfg := &c.srv.cfg
	c.ws.SetReadLimit(cfg.maxMessageSize)
	alive := func() error { return c.ws.SetReadDeadline(time.Now().Add(cfg.pingInterval + cfg.pongTimeout)) }
	_ = alive()
	c.ws.SetPongHandler(func(string) error { return alive() })
	for {
		_, msg, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		_ = alive()
		m, err := protocol.ParseClientMessage(msg)
		if err != nil {
			c.enqueue(protocol.AppendError(nil, 4200, protocol.MessageInvalidFormat))
			continue
		}
		switch m.Event {
		case protocol.EventPing:
			c.enqueue(protocol.MessagePong)
		case protocol.EventSubscribe:
			d, err := protocol.ParseSubscribeData(m.Data)
			if err != nil {
				c.enqueue(protocol.AppendError(nil, 4200, protocol.MessageInvalidFormat))
				continue
			}
			if !protocol.ValidChannelName(d.Channel) || protocol.ClassifyChannel(d.Channel) != (protocol.ChannelKind{}) {
				c.enqueue(protocol.AppendSubscriptionError(nil, d.Channel, "AuthError", "the baseline serves plain public channels only", 403))
				continue
			}
			if _, ok := c.subs[d.Channel]; !ok {
				c.subs[d.Channel] = struct{}{}
				c.srv.subscribe(c, d.Channel)
			}
			c.enqueue(protocol.AppendSubscriptionSucceeded(nil, d.Channel))
		case protocol.EventUnsubscribe:
			if ch, err := protocol.ParseUnsubscribeData(m.Data); err == nil {
				if _, ok := c.subs[ch]; ok {
					delete(c.subs, ch)
					c.srv.unsubscribe(c, ch)
				}
			}
		}
	}
}

func (s *server) subscribe(c *client, ch string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.channels[ch]
	if set == nil {
		set = map[*client]struct{}{}
		s.channels[ch] = set
	}
	set[c] = struct{}{}
}

func (s *server) unsubscribe(c *client, ch string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(c, ch)
}

func (s *server) unsubscribeAll(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range c.subs {
		s.removeLocked(c, ch)
	}
}

func (s *server) removeLocked(c *client, ch string) {
	set := s.channels[ch]
	delete(set, c)
	if len(set) == 0 {
		delete(s.channels, ch)
	}
}

// publish encodes the event once and queues it to every subscriber of
// each channel, skipping the connection socketID names.
func (s *server) publish(t protocol.Trigger) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, ch := range t.Channels {
		set := s.channels[ch]
		if len(set) == 0 {
			continue
		}
		frame := protocol.AppendChannelEvent(nil, t.Name, ch, t.Data, "")
		for c := range set {
			if c.id != t.SocketID {
				c.enqueue(frame)
			}
		}
	}
}

func (s *server) serveEvents(w http.ResponseWriter, r *http.Request) {
	body, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	t, err := protocol.ParseTrigger(body, protocol.DefaultLimits)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	s.publish(t)
	writeJSON(w, http.StatusOK, "{}")
}

func (s *server) serveBatch(w http.ResponseWriter, r *http.Request) {
	body, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	ts, err := protocol.ParseBatch(body, protocol.DefaultLimits)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	for _, t := range ts {
		s.publish(t)
	}
	writeJSON(w, http.StatusOK, `{"batch":[]}`)
}

// authenticate checks the app id and the Pusher request signature, and
// returns the body; on failure it has answered.
func (s *server) authenticate(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.PathValue("id") != s.cfg.appID {
		writeError(w, http.StatusNotFound, "unknown app")
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.maxRequestSize))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "request too large")
		} else {
			writeError(w, http.StatusBadRequest, "cannot read the body")
		}
		return nil, false
	}
	q := r.URL.Query()
	if subtle.ConstantTimeCompare([]byte(q.Get("auth_key")), []byte(s.cfg.key)) != 1 {
		writeError(w, http.StatusUnauthorized, "auth_key does not belong to this app")
		return nil, false
	}
	ts, err := strconv.ParseInt(q.Get("auth_timestamp"), 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > timestampWindow {
		writeError(w, http.StatusUnauthorized, "auth_timestamp missing or too far from the server's time")
		return nil, false
	}
	if len(body) > 0 && subtle.ConstantTimeCompare([]byte(q.Get("body_md5")), []byte(protocol.BodyMD5(body))) != 1 {
		writeError(w, http.StatusUnauthorized, "body_md5 does not match the body")
		return nil, false
	}
	if !protocol.VerifyRequestSignature(s.cfg.secret, r.Method, r.URL.Path, q, q.Get("auth_signature")) {
		writeError(w, http.StatusUnauthorized, "invalid signature")
		return nil, false
	}
	return body, true
}

func writeRequestError(w http.ResponseWriter, err error) {
	var re *protocol.RequestError
	if errors.As(err, &re) {
		writeError(w, re.Status, re.Message)
		return
	}
	writeError(w, http.StatusBadRequest, err.Error())
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, string(protocol.AppendString([]byte(`{"error":`), msg))+"}")
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}
