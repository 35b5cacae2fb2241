package reactor

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

type readResult struct {
	n   int
	err error
}

type readChan chan readResult

func (c readChan) ReadDone(n int, err error) { c <- readResult{n, err} }

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	return client, server
}

func wait(t *testing.T, c readChan) readResult {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
		return readResult{}
	}
}

// A Readiness read waits for bytes (sent before or after it starts), for
// the peer's close, or for its deadline; many wait at once.
func TestReadiness(t *testing.T) {
	for _, kind := range []string{Epoll, Portable} {
		t.Run(kind, func(t *testing.T) {
			r, err := NewReadiness(kind)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if kind == Epoll && r.native == nil {
				t.Skip("no epoll here")
			}
			const n = 50
			clients := make([]net.Conn, n)
			done := make([]readChan, n)
			bufs := make([][]byte, n)
			for i := range n {
				c, s := tcpPair(t)
				clients[i], done[i], bufs[i] = c, make(readChan, 1), make([]byte, 16)
				if i%2 == 0 {
					_, _ = c.Write([]byte("early"))
					time.Sleep(time.Millisecond) // let it arrive
				}
				r.Read(s, bufs[i], time.Now().Add(time.Minute), done[i])
			}
			for i := range n {
				if i%2 == 1 {
					_, _ = clients[i].Write([]byte("late"))
				}
			}
			for i := range n {
				res := wait(t, done[i])
				want := map[bool]string{true: "early", false: "late"}[i%2 == 0]
				if res.err != nil || string(bufs[i][:res.n]) != want {
					t.Fatalf("socket %d read %q, %v; want %q", i, bufs[i][:res.n], res.err, want)
				}
			}

			c, s := tcpPair(t)
			eof := make(readChan, 1)
			r.Read(s, make([]byte, 4), time.Now().Add(time.Minute), eof)
			_ = c.Close()
			if res := wait(t, eof); !errors.Is(res.err, io.EOF) {
				t.Fatalf("after the peer closed: %d, %v; want EOF", res.n, res.err)
			}

			_, s = tcpPair(t)
			_ = s.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			late := make(readChan, 1)
			r.Read(s, make([]byte, 4), time.Now().Add(200*time.Millisecond), late)
			if res := wait(t, late); !errors.Is(res.err, os.ErrDeadlineExceeded) {
				t.Fatalf("past the deadline: %d, %v; want a timeout", res.n, res.err)
			}
		})
	}
}
