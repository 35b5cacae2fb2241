package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// A lane's own connection carries request after request, reads answers
// of either framing (length or chunked), and opens a new connection when
// the server closes the old one, without losing a request.
func TestLaneConnKeepsAliveAndReconnects(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		n := requests.Add(1)
		switch {
		case n%3 == 0:
			w.Header().Set("Connection", "close") // the next request needs a new connection
		case n%2 == 0:
			w.(http.Flusher).Flush() // chunked
		}
		_, _ = w.Write(b)
	}))
	srv.Start()
	defer srv.Close()
	lc := newLaneConn(srv.URL, 5*time.Second)
	if lc == nil {
		t.Fatalf("no lane connection for %s", srv.URL)
	}
	defer lc.close()
	for i := 0; i < 12; i++ {
		body := []byte{byte('a' + i)}
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, srv.URL+"/x", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := lc.do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got, _ := io.ReadAll(resp.Body)
		lc.drain(resp)
		if !bytes.Equal(got, body) {
			t.Fatalf("request %d: answer %q, want %q", i, got, body)
		}
	}
	if n := requests.Load(); n != 12 {
		t.Fatalf("server saw %d requests, want 12", n)
	}
}

// An https:// target keeps net/http's client.
func TestLaneConnOnlyForPlainHTTP(t *testing.T) {
	if newLaneConn("https://127.0.0.1:1", time.Second) != nil {
		t.Fatal("a lane connection for https")
	}
}

// A server that closes the connection after each answer without saying
// so: a request on the dead connection may fail (as with net/http's client
// for a POST), and the next one goes out on a new connection.
func TestLaneConnRecoversFromSilentClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				b, _ := io.ReadAll(req.Body)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
			}()
		}
	}()
	base := "http://" + ln.Addr().String()
	lc := newLaneConn(base, 5*time.Second)
	defer lc.close()
	failedLast := false
	ok := 0
	for i := 0; i < 6; i++ {
		body := []byte{byte('a' + i)}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, base+"/x", bytes.NewReader(body))
		resp, err := lc.do(req)
		if err != nil {
			if failedLast {
				t.Fatalf("request %d failed twice in a row: %v", i, err)
			}
			failedLast = true
			continue
		}
		failedLast = false
		got, _ := io.ReadAll(resp.Body)
		lc.drain(resp)
		if !bytes.Equal(got, body) {
			t.Fatalf("request %d: answer %q, want %q", i, got, body)
		}
		ok++
	}
	if ok < 3 {
		t.Fatalf("%d of 6 requests answered", ok)
	}
}
