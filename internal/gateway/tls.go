package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Native TLS (Options.TLS): the port serves wss:// and https:// instead of
// ws:// and http://, as Reverb does when its options.tls name a
// certificate.
//
// TLS ends at the handshake: a new socket's TLS handshake runs on its
// handshake goroutine, before the request line is read, under the same
// bounds as the rest of the handshake (RESOUND_HANDSHAKE_TIMEOUT from
// accept, RESOUND_MAX_HANDSHAKES, the per-address cap), so a client that
// opens sockets and never finishes the TLS handshake costs what one that
// never sends its request line costs. What follows reads and writes the
// *tls.Conn: net/http serves the API over it as over any net.Conn, and a
// WebSocket goes to the transport that serves a net.Conn, since crypto/tls
// cannot run on a raw descriptor the reactor polls.

// responseNotTLS answers a plain HTTP request on a TLS port, as net/http's
// own TLS server does, so that curl or a browser shows why instead of a
// reset.
var responseNotTLS = []byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 55\r\n\r\nThis port speaks TLS: use https:// or wss:// to reach it\n")

// startTLS runs the TLS handshake on the handshake's socket and, when it
// succeeds, makes the TLS connection the one the request is read from. It
// reports whether the handshake goes on; when it does not, the socket is
// answered or closed.
func (h *handshake) startTLS() bool {
	s := h.srv
	raw := h.nc
	var under net.Conn = raw
	if n := h.br.Buffered(); n > 0 {
		// Read along with a PROXY header: the start of the ClientHello.
		b, _ := h.br.Peek(n)
		under = &prefixedConn{Conn: raw, r: io.MultiReader(bytes.NewReader(bytes.Clone(b)), raw)}
	}
	tc := tls.Server(under, s.opts.TLS)
	if err := tc.Handshake(); err != nil {
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_ = raw.SetDeadline(time.Now().Add(rejectLinger))
			_, _ = raw.Write(responseNotTLS)
			lingerClose(raw)
			return false
		}
		s.log.Debug().Err(err).Str("remote", raw.RemoteAddr().String()).Msg("TLS handshake failed")
		s.handshakeFailed(raw, err)
		return false
	}
	h.nc = tc
	h.head.r = tc
	h.br.Reset(&h.head)
	return true
}

// looksLikeHTTP reports whether a socket's first five bytes, read as a
// TLS record header, are the start of a plain HTTP request (the test
// net/http's TLS server makes).
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH":
		return true
	}
	return false
}

// isTLS reports whether nc is a connection whose TLS the gateway ended.
func isTLS(nc net.Conn) bool {
	_, ok := nc.(*tls.Conn)
	return ok
}

// prefixedConn reads bytes already read off a socket before the socket.
type prefixedConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tlsReactor is the reactor of a gateway that serves TLS: the portable
// one, whose connections are net.Conns, since crypto/tls cannot run on a
// descriptor the epoll or kqueue reactor polls. Every WebSocket on a TLS
// port is a TLS one (a plain request gets 400), so no connection loses the
// fast path it could have had; a gateway without TLS keeps it.
func tlsReactor(requested string) (string, error) {
	switch requested {
	case "", ReactorAuto, ReactorPortable:
		return ReactorPortable, nil
	default:
		return "", fmt.Errorf("gateway: reactor %q cannot serve TLS (RESOUND_TLS_CERT); TLS connections run on the %q reactor", requested, ReactorPortable)
	}
}
