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
type handshake struct {
	srv  *Server
	nc   net.Conn
	head headLimiter
	br   *bufio.Reader
	up   ws.Upgrader

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

func (s *Server) newHandshake() *handshake {
	h := &handshake{srv: s}
	h.br = bufio.NewReaderSize(&h.head, 2048)
	h.up = ws.Upgrader{OnRequest: h.onRequest, OnHeader: h.onHeader, OnBeforeUpgrade: h.onBeforeUpgrade}
	return h
}

// run takes the socket through its handshake, on a goroutine of its own.
func (h *handshake) run() {
	s := h.srv
	h.counted, h.pooled = true, true
	defer h.finish()
	_ = h.nc.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	h.head = headLimiter{r: h.nc, left: s.opts.MaxRequestHead}
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
	// Still counted as a handshake: a refused upgrade (an unknown key, a
	// bad origin, a full quota) lingers up to 2 s on this goroutine.
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
		h.br.Reset(&h.head)
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
		refuse(nc, protocol.CodeAppNotFound, "Application does not exist")
		return
	}
	if len(app.AllowedOrigins) > 0 && !protocol.OriginAllowed(string(h.origin), app.AllowedOrigins) {
		// Reverb sends 4009 but leaves the socket open; Resound closes it.
		s.errorSent(app, nil, protocol.CodeUnauthorized, "Origin not allowed", "")
		refuse(nc, protocol.CodeUnauthorized, "Origin not allowed")
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
			refuse(nc, protocol.CodeOverQuota, "Application is over connection quota")
			return
		case err != nil:
			// The count could not be read or written (NATS away, a key
			// too contended): not the client's quota, so not 4004, which
			// tells pusher-js never to retry. 4100 tells it to back off
			// and come back.
			s.log.Warn().Err(err).Msg("counting connections")
			s.errorSent(app, nil, protocol.CodeOverCapacity, "Server is busy, try again", "")
			refuse(nc, protocol.CodeOverCapacity, "Server is busy, try again")
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
