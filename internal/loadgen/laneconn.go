package loadgen

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// laneConn is one sending lane's own keep-alive HTTP/1.1 connection, on
// which the lane writes each request and reads its answer itself.
//
// Why not net/http's client: its transport hands every request to the
// connection's write goroutine and every answer back from its read
// goroutine, two goroutine switches per request. The load generator
// shares the machine's cores with the server it measures, and the
// latency it reports starts before the request is built, so those
// switches (and their wake-ups, costly on a small VM) were in every
// target's trigger and delivery latency alike. Only plain http:// targets
// use it; https:// keeps net/http's client and its TLS.
type laneConn struct {
	addr    string // host:port
	timeout time.Duration
	c       net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	used    bool // a request went through c already
}

// newLaneConn returns a laneConn for base (http://host:port), or nil when
// base is not plain HTTP.
func newLaneConn(base string, timeout time.Duration) *laneConn {
	host, ok := strings.CutPrefix(base, "http://")
	if !ok || host == "" {
		return nil
	}
	return &laneConn{addr: host, timeout: timeout}
}

func (l *laneConn) close() {
	if l.c != nil {
		_ = l.c.Close()
		l.c = nil
	}
}

// do sends req and returns its answer, whose body the caller must read to
// the end and close (see drain). A request whose write fails on a
// connection used before (the server closed it while it was idle) is sent
// once more on a new one: nothing of it reached the server. One written
// whose answer never comes is not sent again (it may have been stored),
// as net/http does not for a POST: the lane counts the failure and
// retries. Lanes send every few tens of milliseconds, far inside any
// server's idle timeout, so that is rare.
func (l *laneConn) do(req *http.Request) (*http.Response, error) {
	resp, written, err := l.try(req)
	if err != nil && !written && l.usedBefore() && req.GetBody != nil {
		if req.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
		resp, _, err = l.try(req)
	}
	return resp, err
}

// usedBefore reports, after a failure closed the connection, whether
// that connection had carried a request.
func (l *laneConn) usedBefore() bool {
	u := l.used
	l.used = false
	return u
}

func (l *laneConn) try(req *http.Request) (resp *http.Response, written bool, err error) {
	ctx := req.Context()
	if l.c == nil {
		d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		c, err := d.DialContext(ctx, "tcp", l.addr)
		if err != nil {
			return nil, false, err
		}
		l.c, l.used = c, false
		if l.br == nil {
			l.br, l.bw = bufio.NewReaderSize(c, 4096), bufio.NewWriterSize(c, 4096)
		} else {
			l.br.Reset(c)
			l.bw.Reset(c)
		}
	}
	deadline := time.Now().Add(l.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = l.c.SetDeadline(deadline)
	c := l.c
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if body, ok := req.Body.(interface {
		Seek(int64, int) (int64, error)
	}); ok {
		_, _ = body.Seek(0, io.SeekStart) // a retry sends the body again
	}
	if err := req.Write(l.bw); err != nil {
		l.close()
		return nil, false, err
	}
	if err := l.bw.Flush(); err != nil {
		l.close()
		return nil, false, err
	}
	resp, err = http.ReadResponse(l.br, req)
	if err != nil {
		l.close()
		return nil, true, err
	}
	l.used = true
	return resp, true, nil
}

// drain reads the rest of resp's body and keeps the connection for the
// next request, or closes it if the body could not be read or the server
// closes it.
func (l *laneConn) drain(resp *http.Response) {
	_, err := io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil || resp.Close {
		l.close()
	}
}

// isTimeout tells a timed-out request from other network failures.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
