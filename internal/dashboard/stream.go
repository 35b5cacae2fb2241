package dashboard

import (
	"bytes"
	"net/http"
	"time"
)

// A Server-Sent-Events stream lives as long as the page does, on a server
// set for short API requests. What that takes, checked against net/http
// (Go 1.26) and the gateway's server (internal/gateway/server.go):
//
//   - ReadTimeout (30 s) does not cut a stream: net/http clears the read
//     deadline once a request's body is read, to watch for the client
//     going away (connReader.startBackgroundRead).
//   - Nothing bounds a write there (no WriteTimeout, so that the API's
//     slow clients are the kernel's business): a browser that stops
//     reading would hold its stream's goroutine for good. Each stream
//     therefore puts a deadline on each of its own writes
//     (http.ResponseController), and ends when one passes; the API's
//     requests keep the server's settings.
//   - Each stream holds one of the gateway's plain HTTP connections
//     (RESOUND_MAX_HTTP_CONNECTIONS, 1024) while the page is open: the
//     streams are counted, and past Options.MaxStreams refused with 503,
//     so that open dashboards cannot starve the API.
//   - The handshake bounds (RESOUND_HANDSHAKE_TIMEOUT,
//     RESOUND_MAX_REQUEST_HEAD) cover the request head only, which a
//     stream's is like any other.
//   - A stopping gateway's Shutdown waits for its handlers: the streams
//     end with Options.Context, which the node ends first.

// writeTimeout bounds one write to a browser.
const writeTimeout = 10 * time.Second

// sse is one open stream.
type sse struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

// openStream starts a stream, or answers 503 when too many are open. The
// caller defers the returned close.
func (d *Dashboard) openStream(w http.ResponseWriter) (*sse, func(), bool) {
	if d.streams.Add(1) > int64(d.opts.MaxStreams) {
		d.streams.Add(-1)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, "Too many dashboard streams are open on this server.")
		return nil, nil, false
	}
	s := &sse{w: w, rc: http.NewResponseController(w)}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	w.WriteHeader(http.StatusOK)
	// retry: how long EventSource waits before it reconnects.
	s.buf = append(s.buf[:0], "retry: 2000\n\n"...)
	_ = s.flush()
	return s, func() {
		// The connection may serve further requests: net/http sets no
		// write deadline of its own on them, so take this one away.
		_ = s.rc.SetWriteDeadline(time.Time{})
		d.streams.Add(-1)
	}, true
}

// event queues one event; data must be one line (JSON is).
func (s *sse) event(name string, data []byte) {
	if bytes.ContainsAny(data, "\r\n") {
		return // it would end the event early: not from our encoders
	}
	s.buf = append(s.buf, "event: "...)
	s.buf = append(s.buf, name...)
	s.buf = append(s.buf, "\ndata: "...)
	s.buf = append(s.buf, data...)
	s.buf = append(s.buf, "\n\n"...)
}

// heartbeat queues a comment: proxies see the stream alive, and a
// browser that went away is found by the write.
func (s *sse) heartbeat() {
	s.buf = append(s.buf, ": ping\n\n"...)
}

// flush writes what is queued, within writeTimeout. (A writer that
// cannot take deadlines, a test's, just writes.)
func (s *sse) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := s.w.Write(s.buf)
	if err == nil {
		err = s.rc.Flush()
	}
	s.buf = s.buf[:0]
	return err
}
