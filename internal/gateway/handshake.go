package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/gobwas/ws"
	"github.com/pires/go-proxyproto"

	"github.com/resoundhq/resound/internal/counts"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/protocol"
)

// handshake is one new socket on its way from accept to a WebSocket
// connection on a poller, or to net/http. It reads the request straight
// off the socket: a WebSocket upgrade on {prefix}/app/{key} is upgraded
// here with gobwas/ws; anything else goes to net/http. The whole request
// head is bounded in bytes (RESOUND_MAX_REQUEST_HEAD) and time
// (RESOUND_HANDSHAKE_TIMEOUT).
//
// Handshakes are pooled, reader, upgrader and buffers included, so that a
// connect storm, which a drained or restarted gateway causes, leaves next
// to no garbage behind: what it allocates is what the connections keep.
//
// A handshake has no goroutine of its own: the head's bytes are read as
// they come, in the reactor's Readiness (no goroutine per socket on
// epoll), into pending, and only once the whole head is in does the
// socket wait for one of the RESOUND_HANDSHAKE_WORKERS goroutines, which
// parse and answer it without waiting for the client. A connect storm's
// peak of goroutines is then the workers, not the sockets in handshake
// (the runtime keeps every goroutine it ever ran, stack and all: about
// 270 B per stormed socket before, issue 13), and a slowloris holds
// a few KiB of buffer per socket, not a worker. A TLS handshake, which
// takes round trips, still runs on a goroutine of its own (tls.go).
type handshake struct {
	srv  *Server
	nc   net.Conn
	head headLimiter
	// br parses the head; it is the server's (readers) while the
	// handshake runs, so that a socket still waiting for its head holds
	// pending only.
	br *bufio.Reader
	up ws.Upgrader
	// pending is the bytes read so far; the head is parsed from them
	// (through in, head and br) once it is all there.
	pending []byte
	in      pendingReader
	// deadline is the handshake's end, from accept: time spent waiting
	// for bytes or for a worker counts.
	deadline time.Time
	// readErr is how the last read into pending ended.
	readErr error

	// trusted: the peer is a trusted proxy, whose PROXY header or
	// X-Forwarded-For names the client.
	trusted bool
	// slot is the client address's place under the per-address cap. It
	// passes to the connection once established; a handshake that fails
	// gives it back.
	slot *ipSlot
	// counted: the handshake still counts against RESOUND_MAX_HANDSHAKES.
	counted bool
	// pooled: nothing outlives the handshake, so it can be used again.
	pooled bool

	// What the upgrade's callbacks read, in the request's own bytes.
	key, origin, forwarded []byte
}

// headBufferSize is the reader's buffer: a request line longer is 414.
// pendingSize is where pending starts; it grows for longer heads (browsers
// with cookies), up to RESOUND_MAX_REQUEST_HEAD, and a pooled handshake
// keeps at most pendingKeep of it.
const (
	headBufferSize = 2048
	pendingSize    = 1024
	pendingKeep    = 4096
)

func (s *Server) newHandshake() *handshake {
	h := &handshake{srv: s, pending: make([]byte, 0, pendingSize)}
	h.up = ws.Upgrader{OnRequest: h.onRequest, OnHeader: h.onHeader, OnBeforeUpgrade: h.onBeforeUpgrade}
	return h
}

// start begins a new socket's handshake; admit has counted it.
func (h *handshake) start(nc net.Conn, trusted bool, slot *ipSlot) {
	s := h.srv
	h.nc, h.trusted, h.slot = nc, trusted, slot
	h.counted, h.pooled = true, true
	h.deadline = time.Now().Add(s.opts.HandshakeTimeout)
	h.readErr = nil
	_ = nc.SetDeadline(h.deadline)
	if s.opts.TLS != nil {
		// The TLS handshake needs round trips: it reads and writes the
		// socket as a net.Conn, on a goroutine of its own.
		h.in = pendingReader{nc: nc, socket: true}
		go h.run()
		return
	}
	h.readMore()
}

// readMore waits, without a goroutine on epoll, for the next bytes of the
// head; ReadDone gets them.
func (h *handshake) readMore() {
	s := h.srv
	if len(h.pending) == cap(h.pending) {
		h.pending = append(h.pending, 0)[:len(h.pending)]
	}
	p := h.pending[len(h.pending):cap(h.pending)]
	if room := s.opts.MaxRequestHead - len(h.pending); len(p) > room {
		p = p[:room]
	}
	s.heads.Read(h.nc, p, h.deadline, h)
}

// ReadDone is the reactor's Readiness handing over the head's next bytes
// (or the end of the wait): the handshake goes to the queue, in which
// there is room, since every handshake in it is counted under
// RESOUND_MAX_HANDSHAKES, the queue's size.
func (h *handshake) ReadDone(n int, err error) {
	h.pending = h.pending[:len(h.pending)+n]
	h.readErr = err
	h.srv.handshakeQueue <- h
}

// step is a handshake worker's turn with the socket: wait for more bytes
// if the head is not all in, else the handshake.
func (h *handshake) step() {
	if h.readErr == nil && time.Now().Before(h.deadline) && !h.headIn() {
		h.readMore()
		return
	}
	h.in = pendingReader{b: h.pending, nc: h.nc}
	h.run()
}

// headIn reports whether pending holds what the handshake needs, without
// reading: the PROXY header if one is due, then the request head, up to
// its blank line. A head that is already too large (431), or a request
// line longer than the reader's buffer (414), counts as in: the handshake
// refuses it without waiting for the rest.
func (h *handshake) headIn() bool {
	b := h.pending
	if len(b) >= h.srv.opts.MaxRequestHead {
		return true
	}
	if h.trusted && h.srv.opts.ProxyProtocol {
		var ok bool
		if b, ok = skipProxyHeader(b); !ok {
			return false
		}
	}
	if bytes.Contains(b, []byte("\n\r\n")) || bytes.Contains(b, []byte("\n\n")) {
		return true
	}
	return len(b) >= headBufferSize && bytes.IndexByte(b[:headBufferSize], '\n') < 0
}

// proxyV2Signature starts a PROXY protocol v2 header; it has "\r\n\r\n"
// in it, so the head's end is looked for only after the header.
var proxyV2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// skipProxyHeader returns what follows a whole PROXY header (v1 or v2) at
// the start of b, or ok false if the header is not all there yet. Bytes
// that cannot start one are returned as they are: proxyproto says what
// is wrong with them.
func skipProxyHeader(b []byte) (rest []byte, ok bool) {
	switch {
	case bytes.HasPrefix(b, proxyV2Signature):
		if len(b) < 16 {
			return nil, false
		}
		n := 16 + (int(b[14])<<8 | int(b[15]))
		if len(b) < n {
			return nil, false
		}
		return b[n:], true
	case bytes.HasPrefix(b, []byte("PROXY ")):
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, len(b) >= 108 // v1's longest line: past it proxyproto refuses it
		}
		return b[i+1:], true
	case len(b) < len(proxyV2Signature) && (bytes.HasPrefix(proxyV2Signature, b) || bytes.HasPrefix([]byte("PROXY "), b)):
		return nil, false
	}
	return b, true
}

// run takes the socket through its handshake: on a handshake worker with
// the head in pending, or on a goroutine of its own for TLS.
func (h *handshake) run() {
	s := h.srv
	defer h.finish()
	switch {
	case h.readErr != nil:
		s.handshakeFailed(h.nc, h.readErr)
		return
	case !time.Now().Before(h.deadline):
		// Its time ran out waiting for a worker.
		s.handshakeFailed(h.nc, os.ErrDeadlineExceeded)
		return
	}
	h.head = headLimiter{r: &h.in, left: s.opts.MaxRequestHead}
	h.br = s.headReaders.Get().(*bufio.Reader)
	h.br.Reset(&h.head)
	if h.trusted && s.opts.ProxyProtocol && !h.readProxyHeader() {
		return
	}
	if s.opts.TLS != nil && !h.startTLS() {
		return
	}
	line, err := peekLine(h.br)
	if err != nil {
		s.handshakeFailed(h.nc, err)
		return
	}
	if !isWebSocketPath(line, s.opts.PathPrefix+"/app/") {
		h.toHTTP()
		return
	}
	h.key, h.origin, h.forwarded = h.key[:0], h.origin[:0], h.forwarded[:0]
	if _, err := h.up.Upgrade(struct {
		io.Reader
		io.Writer
	}{h.br, h.nc}); err != nil {
		s.handshakeFailed(h.nc, err)
		return
	}
	s.prom.Handshakes.Inc()
	// Still counted as a handshake while establish checks the app (an
	// app with max_connections asks NATS for a slot, on this worker).
	h.establish()
}

// finish gives back what a handshake that ended still holds, and recovers
// a panic: a handshake that goes wrong closes its own socket only.
func (h *handshake) finish() {
	s := h.srv
	if r := recover(); r != nil {
		s.recovered(metrics.PanicHandshake, r, nil)
		_ = h.nc.Close()
	}
	h.done()
	if h.slot != nil {
		s.perIP.release(h.slot)
		h.slot = nil
	}
	if h.pooled {
		h.nc = nil
		h.head.r = nil
		h.in = pendingReader{}
		if h.br != nil {
			h.br.Reset(nil)
			s.headReaders.Put(h.br)
			h.br = nil
		}
		if cap(h.pending) > pendingKeep {
			h.pending = make([]byte, 0, pendingSize)
		}
		h.pending = h.pending[:0]
		s.handshakePool.Put(h)
	}
}

// done stops counting the handshake against RESOUND_MAX_HANDSHAKES.
func (h *handshake) done() {
	if h.counted {
		h.counted = false
		h.srv.handshakes.Add(-1)
	}
}

// readProxyHeader reads a trusted proxy's PROXY header, and counts the
// client it names under the per-address cap. It reports whether the
// handshake goes on.
func (h *handshake) readProxyHeader() bool {
	s := h.srv
	hdr, err := proxyproto.Read(h.br)
	if err != nil {
		s.handshakeFailed(h.nc, err)
		return false
	}
	src, _, ok := hdr.TCPAddrs()
	if !ok {
		return true // PROXY UNKNOWN, a health check: X-Forwarded-For may still name the client
	}
	addr, _ := netip.AddrFromSlice(src.IP)
	if h.slot, ok = s.perIP.acquire(addr); !ok {
		s.limitHit(metrics.LimitConnectionsPerIP, nil)
		s.reject(h.nc, response429, false)
		return false
	}
	h.trusted = false // the client is known: X-Forwarded-For is not needed
	return true
}

// toHTTP hands a plain HTTP connection to net/http, within
// RESOUND_MAX_HTTP_CONNECTIONS. The first request's head is read here,
// within the same bounds as an upgrade's and counted the same way;
// net/http bounds the later requests of a kept-alive connection itself
// (MaxHeaderBytes, ReadHeaderTimeout).
func (h *handshake) toHTTP() {
	s := h.srv
	if s.httpOpen.Add(1) > int64(s.opts.MaxHTTPConnections) {
		s.httpOpen.Add(-1)
		s.limitHit(metrics.LimitHTTPConnections, nil)
		s.reject(h.nc, response503, false)
		return
	}
	first, err := readHead(h.br)
	if err != nil {
		s.httpOpen.Add(-1)
		s.handshakeFailed(h.nc, err)
		return
	}
	h.head.left = -1
	h.in.socket = true // the body, and the requests after
	_ = h.nc.SetDeadline(time.Time{})
	h.done()
	// net/http keeps reading through the handshake's reader, and may
	// close the connection while its background read is still in it: this
	// handshake is not used again.
	h.pooled = false
	slot := h.slot
	h.slot = nil
	s.httpConns.push(&httpConn{Conn: h.nc, r: io.MultiReader(bytes.NewReader(first), h.br), release: func() {
		s.httpOpen.Add(-1)
		s.perIP.release(slot)
	}})
}

// The upgrade's callbacks. gobwas calls them with the request's bytes,
// which are only valid during the call.

func (h *handshake) onRequest(uri []byte) error {
	path := uri
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	k := path[len(h.srv.opts.PathPrefix)+len("/app/"):]
	if len(k) == 0 || bytes.IndexByte(k, '/') >= 0 {
		return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound))
	}
	h.key = append(h.key[:0], k...)
	return nil
}

func (h *handshake) onHeader(k, v []byte) error {
	switch {
	case len(h.origin) == 0 && bytes.EqualFold(k, []byte("Origin")):
		h.origin = append(h.origin[:0], v...)
	case h.trusted && bytes.EqualFold(k, []byte("X-Forwarded-For")):
		h.forwarded = append(h.forwarded[:0], v...)
	}
	faultOnHandshakeHeader(k, v)
	return nil
}

// onBeforeUpgrade counts the client a trusted proxy's X-Forwarded-For
// names under the per-address cap, and refuses it with 429 past it.
func (h *handshake) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	if !h.trusted || len(h.forwarded) == 0 {
		return nil, nil
	}
	addr, ok := forwardedClient(h.forwarded, h.srv.opts.TrustedProxies)
	if !ok {
		return nil, nil
	}
	if h.slot, ok = h.srv.perIP.acquire(addr); !ok {
		h.srv.limitHit(metrics.LimitConnectionsPerIP, nil)
		return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusTooManyRequests))
	}
	return nil, nil
}

// establish checks an upgraded connection against its app (key, origins,
// max_connections) and hands it to a poller.
func (h *handshake) establish() {
	s, nc := h.srv, h.nc
	app, ok := s.opts.Apps.ByKeyBytes(h.key)
	if !ok {
		// pusher-js reads the code from the pusher:error, or from the
		// close frame: both say 4001, so it does not retry.
		s.refuse(nc, protocol.CodeAppNotFound, "Application does not exist")
		return
	}
	if len(app.AllowedOrigins) > 0 && !protocol.OriginAllowed(string(h.origin), app.AllowedOrigins) {
		// Reverb sends 4009 but leaves the socket open; Resound closes it.
		s.errorSent(app, nil, protocol.CodeUnauthorized, "Origin not allowed", "")
		s.refuse(nc, protocol.CodeUnauthorized, "Origin not allowed")
		return
	}
	counted := false
	if app.MaxConnections > 0 {
		ctx, cancel := context.WithTimeout(s.baseCtx, s.opts.HandshakeTimeout)
		err := s.acquireConnectionSlot(ctx, app)
		cancel()
		switch {
		case errors.Is(err, counts.ErrOverQuota):
			s.errorSent(app, nil, protocol.CodeOverQuota, "Application is over connection quota", "")
			s.refuse(nc, protocol.CodeOverQuota, "Application is over connection quota")
			return
		case err != nil:
			// The count could not be read or written (NATS away, a key
			// too contended): not the client's quota, so not 4004, which
			// tells pusher-js never to retry. 4100 tells it to back off
			// and come back.
			s.log.Warn().Err(err).Msg("counting connections")
			s.errorSent(app, nil, protocol.CodeOverCapacity, "Server is busy, try again", "")
			s.refuse(nc, protocol.CodeOverCapacity, "Server is busy, try again")
			return
		}
		counted = true
	}
	_ = nc.SetDeadline(time.Time{})
	c, err := s.attach(nc, app, h.slot)
	if err != nil {
		if counted {
			s.releaseConnectionSlot(app)
		}
		s.log.Warn().Err(err).Msg("attaching connection")
		_ = nc.Close()
		return
	}
	s.noteConnected(c, h)
	h.slot = nil // the connection holds it now
}

// pendingReader reads a handshake's pending bytes, then, for a plain HTTP
// connection (or a TLS one, whose head is read as it comes), the socket.
// An upgrade's head is all in pending: past it there is nothing to wait
// for, so a request that wants more is broken, not slow.
type pendingReader struct {
	b      []byte
	nc     net.Conn
	socket bool
}

func (r *pendingReader) Read(p []byte) (int, error) {
	if len(r.b) > 0 {
		n := copy(p, r.b)
		r.b = r.b[n:]
		return n, nil
	}
	if r.socket {
		return r.nc.Read(p)
	}
	return 0, io.ErrUnexpectedEOF
}
