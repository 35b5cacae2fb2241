package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/protocol"
)

var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// header encodes h with gobwas/ws, the way a client library would.
func header(t *testing.T, h ws.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := ws.WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseFrameHeaderLengths(t *testing.T) {
	cases := []struct {
		length int64
		size   int
	}{
		{0, 6},
		{1, 6},
		{125, 6},
		{126, 8},
		{1000, 8},
		{65535, 8},
		{65536, 14},
		{1 << 20, 14},
		{1 << 40, 14},
		{1 << 62, 14},
	}
	for _, tc := range cases {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary, ws.OpContinuation} {
			for _, fin := range []bool{true, false} {
				t.Run(fmt.Sprintf("%d/op%d/fin=%v", tc.length, op, fin), func(t *testing.T) {
					b := header(t, ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: testMask, Length: tc.length})
					// Bytes after the header (the payload, the next frame)
					// do not change the result.
					for _, in := range [][]byte{b, append(append([]byte(nil), b...), "trailing"...)} {
						h, err := parseFrameHeader(in)
						if err != nil {
							t.Fatalf("parseFrameHeader(% x): %v", in, err)
						}
						want := frameHeader{fin: fin, opcode: byte(op), mask: testMask, length: tc.length, size: tc.size}
						if h != want {
							t.Fatalf("got %+v, want %+v", h, want)
						}
					}
				})
			}
		}
	}
}

func TestParseFrameHeaderControlFrames(t *testing.T) {
	cases := []struct {
		name string
		h    ws.Header
		ok   bool
	}{
		{"ping empty", ws.Header{Fin: true, OpCode: ws.OpPing}, true},
		{"ping 125", ws.Header{Fin: true, OpCode: ws.OpPing, Length: 125}, true},
		{"pong 125", ws.Header{Fin: true, OpCode: ws.OpPong, Length: 125}, true},
		{"close 2", ws.Header{Fin: true, OpCode: ws.OpClose, Length: 2}, true},
		{"ping 126", ws.Header{Fin: true, OpCode: ws.OpPing, Length: 126}, false},
		{"close 126", ws.Header{Fin: true, OpCode: ws.OpClose, Length: 126}, false},
		{"pong 70000", ws.Header{Fin: true, OpCode: ws.OpPong, Length: 70000}, false},
		{"fragmented ping", ws.Header{OpCode: ws.OpPing, Length: 2}, false},
		{"fragmented pong", ws.Header{OpCode: ws.OpPong}, false},
		{"fragmented close", ws.Header{OpCode: ws.OpClose, Length: 2}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.h.Masked, tc.h.Mask = true, testMask
			h, err := parseFrameHeader(header(t, tc.h))
			switch {
			case tc.ok && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.ok && (h.opcode != byte(tc.h.OpCode) || h.length != tc.h.Length || h.size != 6):
				t.Fatalf("got %+v", h)
			case !tc.ok && !errors.Is(err, errProtocol):
				t.Fatalf("got %+v %v, want errProtocol", h, err)
			}
		})
	}
}

func TestParseFrameHeaderProtocolErrors(t *testing.T) {
	type tcase struct {
		name string
		b    []byte
	}
	var cases []tcase
	for _, length := range []int64{0, 5, 300, 70000} {
		cases = append(cases, tcase{fmt.Sprintf("unmasked text %d", length),
			header(t, ws.Header{Fin: true, OpCode: ws.OpText, Length: length})})
	}
	cases = append(cases,
		tcase{"unmasked close", header(t, ws.Header{Fin: true, OpCode: ws.OpClose, Length: 2})},
		tcase{"unmasked ping", header(t, ws.Header{Fin: true, OpCode: ws.OpPing})},
	)
	for i, rsv := range []byte{ws.Rsv(true, false, false), ws.Rsv(false, true, false), ws.Rsv(false, false, true), ws.Rsv(true, true, true)} {
		cases = append(cases, tcase{fmt.Sprintf("rsv %d", i),
			header(t, ws.Header{Fin: true, Rsv: rsv, OpCode: ws.OpText, Masked: true, Mask: testMask, Length: 3})})
	}
	for _, op := range []byte{0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		cases = append(cases, tcase{fmt.Sprintf("opcode %#x", op),
			header(t, ws.Header{Fin: true, OpCode: ws.OpCode(op), Masked: true, Mask: testMask, Length: 1})})
	}
	// RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
	msb := header(t, ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Mask: testMask, Length: 1 << 40})
	msb[2] |= 0x80
	cases = append(cases, tcase{"64-bit length with MSB set", msb})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if h, err := parseFrameHeader(tc.b); !errors.Is(err, errProtocol) {
				t.Fatalf("parseFrameHeader(% x) = %+v, %v; want errProtocol", tc.b, h, err)
			}
		})
	}
}

func TestParseFrameHeaderNeedsMore(t *testing.T) {
	for _, length := range []int64{0, 125, 126, 65535, 65536, 1 << 33} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpContinuation, ws.OpPing} {
			if op == ws.OpPing && length > 125 {
				continue
			}
			b := header(t, ws.Header{Fin: true, OpCode: op, Masked: true, Mask: testMask, Length: length})
			for n := 0; n < len(b); n++ {
				if _, err := parseFrameHeader(b[:n]); !errors.Is(err, errNeedMore) {
					t.Errorf("length %d op %d: %d of %d header bytes gave %v, want errNeedMore", length, op, n, len(b), err)
				}
			}
			if _, err := parseFrameHeader(b); err != nil {
				t.Errorf("length %d op %d: whole header gave %v", length, op, err)
			}
		}
	}
	if _, err := parseFrameHeader(nil); !errors.Is(err, errNeedMore) {
		t.Errorf("nil gave %v", err)
	}
}

func TestUnmaskRoundTrip(t *testing.T) {
	masks := [][4]byte{testMask, {0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff}, {1, 2, 3, 4}}
	for _, mask := range masks {
		for n := 0; n <= 70; n++ {
			// An odd offset into a larger buffer: the word-at-a-time
			// cipher must not depend on alignment.
			buf := make([]byte, n+3)
			payload := buf[3:]
			want := make([]byte, n)
			for i := range want {
				want[i] = byte(i*31 + 7)
			}
			for i := range payload {
				payload[i] = want[i] ^ mask[i%4] // RFC 6455 §5.3, byte by byte
			}
			unmask(payload, mask)
			if !bytes.Equal(payload, want) {
				t.Fatalf("mask % x, %d bytes: unmasked to % x, want % x", mask, n, payload, want)
			}
			if buf[0] != 0 || buf[1] != 0 || buf[2] != 0 {
				t.Fatalf("unmask wrote outside the payload")
			}
		}
	}
}

func TestParseAndUnmaskClientFrames(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 200000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			payload := bytes.Repeat([]byte("pusher:"), n/7+1)[:n]
			f := ws.MaskFrameInPlace(ws.NewTextFrame(append([]byte(nil), payload...)))
			var buf bytes.Buffer
			if err := ws.WriteFrame(&buf, f); err != nil {
				t.Fatal(err)
			}
			b := buf.Bytes()
			h, err := parseFrameHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			if !h.fin || h.opcode != protocol.OpText || h.length != int64(n) || h.size+n != len(b) || h.mask != f.Header.Mask {
				t.Fatalf("got %+v for a %d-byte frame", h, len(b))
			}
			got := b[h.size:]
			unmask(got, h.mask)
			if !bytes.Equal(got, payload) {
				t.Fatal("payload did not survive mask and unmask")
			}
		})
	}
}

func TestParseSocketID(t *testing.T) {
	cases := []struct {
		in   string
		a, b uint64
		ok   bool
	}{
		{"1.2", 1, 2, true},
		{"123456789.987654321", 123456789, 987654321, true},
		{"1000000000.1000000000", 1000000000, 1000000000, true},
		{"0.0", 0, 0, true},
		{"", 0, 0, false},
		{"1", 0, 0, false},
		{"1.", 0, 0, false},
		{".1", 0, 0, false},
		{".", 0, 0, false},
		{"1.2.3", 0, 0, false},
		{"1..2", 0, 0, false},
		{"a.1", 0, 0, false},
		{"1.a", 0, 0, false},
		{"1.2 ", 0, 0, false},
		{"-1.2", 0, 0, false},
		{"1,2", 0, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			a, b, ok := parseSocketID([]byte(tc.in))
			if ok != tc.ok || (ok && (a != tc.a || b != tc.b)) {
				t.Fatalf("parseSocketID(%q) = %d, %d, %v; want %d, %d, %v", tc.in, a, b, ok, tc.a, tc.b, tc.ok)
			}
		})
	}
}

// Regression: parseSocketID used to accumulate digits without an overflow check, so a
// socket id whose numbers do not fit in uint64 wraps around and names
// another connection: "18446744073709551617.5" (2^64+1) parses as 1.5.
// protocol.ValidSocketID puts no bound on the digits, so the HTTP API
// accepts such a socket_id, and the gateway then leaves out the connection
// whose id is 1.5 (ids are drawn from 1..1e9, so 1.5 can exist).
// Expected: ok == false for a number that overflows uint64.
func TestParseSocketIDOverflow(t *testing.T) {
	for _, in := range []string{"18446744073709551617.5", "5.18446744073709551617", "99999999999999999999999.1"} {
		if a, b, ok := parseSocketID([]byte(in)); ok {
			t.Errorf("parseSocketID(%q) = %d, %d, true; want ok == false", in, a, b)
		}
	}
}

func TestIsWebSocketPath(t *testing.T) {
	cases := []struct {
		line   string
		prefix string
		want   bool
	}{
		{"GET /app/key?protocol=7&client=js HTTP/1.1\r", "/app/", true},
		{"GET /app/key HTTP/1.1", "/app/", true},
		{"GET /apps/123/channels HTTP/1.1\r", "/app/", false},
		{"POST /app/key HTTP/1.1\r", "/app/", false},
		{"get /app/key HTTP/1.1\r", "/app/", false},
		{"GET /up HTTP/1.1\r", "/app/", false},
		{"GET /reverb/app/key HTTP/1.1\r", "/app/", false},
		{"GET /reverb/app/key?protocol=7 HTTP/1.1\r", "/reverb/app/", true},
		{"GET /app/key HTTP/1.1\r", "/reverb/app/", false},
		{"GET /reverb/apps/1/events HTTP/1.1\r", "/reverb/app/", false},
		{"GET /reverb/up HTTP/1.1\r", "/reverb/app/", false},
		{"", "/app/", false},
		{"GET", "/app/", false},
	}
	for _, tc := range cases {
		t.Run(tc.prefix+" "+tc.line, func(t *testing.T) {
			if got := isWebSocketPath([]byte(tc.line), tc.prefix); got != tc.want {
				t.Fatalf("isWebSocketPath(%q, %q) = %v, want %v", tc.line, tc.prefix, got, tc.want)
			}
		})
	}
}

const wsRequest = "GET /app/app-key?protocol=7&client=js&version=8.4.0 HTTP/1.1\r\n" +
	"Host: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// pipe returns the server end of a net.Pipe whose client end writes the
// given chunks, one Write each, and stays open until the test ends, as a
// browser waiting for the upgrade response does. The server end has a
// generous read deadline, so that a peekLine that waits for bytes that
// never come fails the test instead of hanging it.
func pipe(t *testing.T, chunks ...string) net.Conn {
	t.Helper()
	server, client := net.Pipe()
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = server.Close()
		_ = client.Close()
		<-done
	})
	go func() {
		defer close(done)
		for _, c := range chunks {
			if _, err := client.Write([]byte(c)); err != nil {
				return
			}
		}
	}()
	if err := server.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return server
}

func TestPeekLine(t *testing.T) {
	wantLine := strings.SplitN(wsRequest, "\n", 2)[0]
	cases := []struct {
		name   string
		chunks []string
	}{
		// The regression: the whole request is buffered by the first read
		// and nothing more will come until the server answers.
		{"whole request in one write", []string{wsRequest}},
		{"request line split", []string{"GE", "T /app/app-key?protocol=7&client=js", "&version=8.4.0 HTTP/1.1\r", "\n" + wsRequest[len(wantLine)+1:]}},
		{"request line then headers", []string{wantLine + "\n", wsRequest[len(wantLine)+1:]}},
		{"byte by byte", strings.Split(wsRequest, "")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(pipe(t, tc.chunks...), 2048)
			line, err := peekLine(br)
			if err != nil {
				t.Fatalf("peekLine: %v", err)
			}
			if string(line) != wantLine {
				t.Fatalf("peekLine = %q, want %q", line, wantLine)
			}
			// Peeking consumed nothing: the whole request is still there
			// for the upgrader or net/http.
			req, err := http.ReadRequest(br)
			if err != nil {
				t.Fatalf("reading the request after peekLine: %v", err)
			}
			if req.URL.Path != "/app/app-key" || req.Header.Get("Upgrade") != "websocket" {
				t.Fatalf("request after peekLine: %s %s", req.Method, req.URL)
			}
		})
	}
}

func TestPeekLineFromBufferedReader(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader(wsRequest), 2048)
	line, err := peekLine(br)
	if err != nil || string(line) != strings.SplitN(wsRequest, "\n", 2)[0] {
		t.Fatalf("peekLine = %q, %v", line, err)
	}
	if br.Buffered() != len(wsRequest) {
		t.Fatalf("%d bytes buffered, want the whole request (%d)", br.Buffered(), len(wsRequest))
	}
}

func TestPeekLineErrors(t *testing.T) {
	cases := []struct {
		name string
		r    io.Reader
	}{
		{"empty", strings.NewReader("")},
		{"no newline before EOF", strings.NewReader("GET /app/key HTTP/1.1")},
		{"line longer than the buffer", strings.NewReader(strings.Repeat("x", 5000) + "\n")},
		// The client keeps the connection open but never ends the line.
		{"line longer than the buffer, open connection", pipe(t, "GET /"+strings.Repeat("a", 3000))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			line, err := peekLine(bufio.NewReaderSize(tc.r, 2048))
			if err == nil {
				t.Fatalf("peekLine = %q, want an error", line)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("peekLine waited for more input instead of giving up: %v", err)
			}
		})
	}
}

// A drain spreads its closes over the window; a small gateway is done in
// a few ticks, and no window closes everything at once.
func TestDrainBatch(t *testing.T) {
	cases := []struct {
		n      int
		window time.Duration
		want   int
	}{
		{0, 10 * time.Second, 1},
		{1, 10 * time.Second, 1},
		{200, 2 * time.Second, 10},        // 20 ticks of 10
		{15000, 10 * time.Second, 150},    // 100 ticks of 150
		{15001, 10 * time.Second, 151},    // rounded up: done within the window
		{200, 0, 200},                     // no window: all at once
		{200, 50 * time.Millisecond, 200}, // shorter than a tick
	}
	for _, tc := range cases {
		if got := drainBatch(tc.n, tc.window); got != tc.want {
			t.Errorf("drainBatch(%d, %v) = %d, want %d", tc.n, tc.window, got, tc.want)
		}
	}
}
