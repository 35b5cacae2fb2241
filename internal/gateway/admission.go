package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resoundhq/resound/internal/config"
)

// What a socket may cost before it is a WebSocket or an HTTP API
// connection: the bounds on handshakes, which anyone who can reach the
// port can start.

// headLimiter reads the request head off a new socket and fails once more
// than its budget has been read: a header line without end must not grow
// a buffer without end (gobwas's reader appends a long line's pieces until
// it sees a newline). The budget is lifted once the head is read.
type headLimiter struct {
	r    io.Reader
	left int // bytes still allowed; -1 is unlimited
}

// errHeadTooLarge is a request head past RESOUND_MAX_REQUEST_HEAD.
var errHeadTooLarge = errors.New("request head too large")

func (l *headLimiter) Read(p []byte) (int, error) {
	if l.left < 0 {
		return l.r.Read(p)
	}
	if l.left == 0 {
		return 0, errHeadTooLarge
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

// Responses for sockets refused before or during the handshake. Each
// closes the connection: the client has shown it cannot be served now.
var (
	response414 = []byte("HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	response431 = []byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	response429 = []byte("HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
	response503 = []byte("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
	response400 = []byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
)

// maxRejecting bounds the refused sockets being finished politely at
// once. Past it a refused socket is simply closed: under a flood,
// politeness is the first thing to go.
const maxRejecting = 256

// rejectLinger is how long a refused socket is read and discarded for, so
// that the client reads the response instead of a reset.
const rejectLinger = time.Second

// reject answers a refused socket with an HTTP error response and closes
// it, reading what the client still sends for a moment so that the
// response is not lost to a reset. unread is true when nothing of the
// request has been read yet (refused at accept): the answer then waits a
// moment for it, so that a client that writes before it reads gets the
// response. Under a flood there is no room to spare: the socket is
// answered and closed at once.
func (s *Server) reject(nc net.Conn, response []byte, unread bool) {
	if s.opts.TLS != nil && !isTLS(nc) {
		// A TLS port's client speaks TLS: plain HTTP would reach it as a
		// broken handshake, which says no more than a close.
		_ = nc.Close()
		return
	}
	s.finishRefused(nc, response, unread)
}

// refusal is a refused socket being finished: wait for the request (when
// unread), answer, half-close, and read until the client closes, up to
// rejectLinger and 64 KiB. It waits in the reactor's Readiness, like a
// handshake's head, so that a storm's refused sockets (a reconnect storm
// past RESOUND_MAX_HANDSHAKES refuses hundreds) run no goroutine each: the
// runtime keeps every goroutine it ever ran.
type refusal struct {
	s        *Server
	nc       net.Conn
	response []byte
	answered bool
	left     int
	deadline time.Time
	buf      [512]byte
}

// finishRefused answers a refused socket with response (nil: it has been
// answered already) and closes it, politely within maxRejecting.
func (s *Server) finishRefused(nc net.Conn, response []byte, unread bool) {
	select {
	case s.rejecting <- struct{}{}:
	default:
		_ = nc.SetWriteDeadline(time.Now().Add(rejectLinger))
		_, _ = nc.Write(response)
		_ = nc.Close()
		return
	}
	r := &refusal{s: s, nc: nc, response: response, left: 64 << 10, deadline: time.Now().Add(rejectLinger)}
	if !unread && !r.answer() {
		return
	}
	s.heads.Read(nc, r.buf[:], r.deadline, r)
}

// answer writes the response and half-closes. It reports whether the
// socket is still open to linger on.
func (r *refusal) answer() bool {
	r.answered = true
	_ = r.nc.SetWriteDeadline(r.deadline)
	_, _ = r.nc.Write(r.response)
	// *net.TCPConn, and *tls.Conn, which sends its close_notify first.
	if cw, ok := r.nc.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return true
	}
	r.close()
	return false
}

func (r *refusal) close() {
	_ = r.nc.Close()
	<-r.s.rejecting
}

// ReadDone takes the request a refusal waited for, or what the client
// sent after the answer. It runs on the Readiness's goroutine: nothing
// here waits (a write of a few hundred bytes to a socket nothing else was
// written to does not).
func (r *refusal) ReadDone(n int, err error) {
	r.left -= n
	if !r.answered {
		if !r.answer() {
			return
		}
		r.left = 64 << 10
	}
	if err != nil || r.left <= 0 {
		r.close()
		return
	}
	r.s.heads.Read(r.nc, r.buf[:], r.deadline, r)
}

// ipLimiter counts open connections per client address, for
// RESOUND_MAX_CONNECTIONS_PER_IP.
type ipLimiter struct {
	max  int
	mu   sync.Mutex
	byIP map[netip.Addr]*ipSlot
}

// ipSlot is one address's count. A connection holds a pointer to it and
// gives it back when it ends.
type ipSlot struct {
	addr netip.Addr
	n    int // guarded by ipLimiter.mu
}

func newIPLimiter(max int) *ipLimiter {
	if max <= 0 {
		return nil
	}
	return &ipLimiter{max: max, byIP: make(map[netip.Addr]*ipSlot)}
}

// acquire counts one more connection from addr, or returns nil when addr
// is at the cap. A nil limiter (no cap) hands out nil slots, which release
// ignores.
func (l *ipLimiter) acquire(addr netip.Addr) (*ipSlot, bool) {
	if l == nil {
		return nil, true
	}
	addr = addr.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.byIP[addr]
	if s == nil {
		s = &ipSlot{addr: addr}
		l.byIP[addr] = s
	}
	if s.n >= l.max {
		return nil, false
	}
	s.n++
	return s, true
}

func (l *ipLimiter) release(s *ipSlot) {
	if l == nil || s == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s.n--
	if s.n <= 0 {
		delete(l.byIP, s.addr)
	}
}

// peerAddr is the address of the socket's other end.
func peerAddr(nc net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// forwardedClient reads the client's address from an X-Forwarded-For value
// a trusted proxy sent: the rightmost address that is not itself a trusted
// proxy, since each proxy appends the address it got the request from and
// only the trusted ones' appends can be believed. ok is false when the
// header names no usable address.
func forwardedClient(xff []byte, trusted config.CIDRs) (netip.Addr, bool) {
	var last netip.Addr
	for len(xff) > 0 {
		i := bytes.LastIndexByte(xff, ',')
		part := bytes.TrimSpace(xff[i+1:])
		if i < 0 {
			xff = nil
		} else {
			xff = xff[:i]
		}
		a, err := netip.ParseAddr(string(part))
		if err != nil {
			return last, last.IsValid()
		}
		a = a.Unmap()
		if !trusted.Contains(a) {
			return a, true
		}
		last = a
	}
	return last, last.IsValid()
}

// httpConn is a plain HTTP connection handed to net/http: it gives back
// its places (the HTTP connection count, its address's count) once, when
// net/http closes it.
type httpConn struct {
	net.Conn
	r       io.Reader // the bytes read while routing it, then the socket
	closed  atomic.Bool
	release func()
}

func (c *httpConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *httpConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.release()
	}
	return c.Conn.Close()
}
