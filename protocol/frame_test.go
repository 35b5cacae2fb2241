package protocol

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// readFrame parses one frame from b with gobwas/ws and returns its header
// and payload, failing if anything is left over.
func readFrame(t *testing.T, b []byte) (ws.Header, []byte) {
	t.Helper()
	r := bytes.NewReader(b)
	h, err := ws.ReadHeader(r)
	if err != nil {
		t.Fatalf("ws.ReadHeader: %v", err)
	}
	if h.Length < 0 || h.Length > int64(r.Len()) {
		t.Fatalf("header length %d, but %d bytes follow", h.Length, r.Len())
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(r, payload); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Fatalf("%d bytes left after the frame", r.Len())
	}
	return h, payload
}

func TestOpcodesMatchRFC6455(t *testing.T) {
	tests := []struct {
		ours byte
		ws   ws.OpCode
	}{
		{OpText, ws.OpText},
		{OpClose, ws.OpClose},
		{OpPing, ws.OpPing},
		{OpPong, ws.OpPong},
	}
	for _, tt := range tests {
		if ws.OpCode(tt.ours) != tt.ws {
			t.Errorf("opcode %#x, want %#x", tt.ours, tt.ws)
		}
	}
}

func TestAppendFrame(t *testing.T) {
	tests := []struct {
		n          int
		headerSize int
	}{
		{0, 2},
		{1, 2},
		{125, 2},
		{126, 4},
		{127, 4},
		{65535, 4},
		{65536, 10},
		{70000, 10},
	}
	for _, opcode := range []byte{OpText, OpPing, OpPong} {
		for _, tt := range tests {
			payload := make([]byte, tt.n)
			for i := range payload {
				payload[i] = byte(i*7 + 3)
			}
			out := AppendFrame(nil, opcode, payload)
			if len(out) != tt.headerSize+tt.n {
				t.Errorf("opcode %#x, len %d: frame is %d bytes, want %d (header %d)", opcode, tt.n, len(out), tt.headerSize+tt.n, tt.headerSize)
			}
			h, got := readFrame(t, out)
			if !h.Fin {
				t.Errorf("opcode %#x, len %d: FIN not set", opcode, tt.n)
			}
			if h.Rsv != 0 {
				t.Errorf("opcode %#x, len %d: RSV bits %#x set", opcode, tt.n, h.Rsv)
			}
			if h.OpCode != ws.OpCode(opcode) {
				t.Errorf("opcode %#x, len %d: parsed opcode %#x", opcode, tt.n, h.OpCode)
			}
			if h.Masked {
				t.Errorf("opcode %#x, len %d: frame is masked", opcode, tt.n)
			}
			if h.Length != int64(tt.n) {
				t.Errorf("opcode %#x, len %d: parsed length %d", opcode, tt.n, h.Length)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("opcode %#x, len %d: payload differs", opcode, tt.n)
			}
		}
	}
}

func TestAppendFrameKeepsDst(t *testing.T) {
	first := AppendTextFrame(nil, []byte("one"))
	both := AppendTextFrame(append([]byte(nil), first...), []byte("two"))
	if !bytes.Equal(both[:len(first)], first) {
		t.Fatalf("AppendTextFrame overwrote dst")
	}
	h, p := readFrame(t, both[len(first):])
	if h.OpCode != ws.OpText || string(p) != "two" {
		t.Fatalf("second frame = %v %q", h, p)
	}
}

func TestAppendTextFrame(t *testing.T) {
	msg := []byte(`{"event":"pusher:pong","data":"{}"}`)
	h, p := readFrame(t, AppendTextFrame(nil, msg))
	if !h.Fin || h.OpCode != ws.OpText || h.Masked || !bytes.Equal(p, msg) {
		t.Fatalf("AppendTextFrame: header %+v payload %q", h, p)
	}
	// Same bytes as ws's own encoder for an unmasked final text frame.
	var buf bytes.Buffer
	if err := ws.WriteFrame(&buf, ws.NewTextFrame(msg)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), AppendTextFrame(nil, msg)) {
		t.Fatalf("AppendTextFrame = %x, ws.WriteFrame = %x", AppendTextFrame(nil, msg), buf.Bytes())
	}
}

func TestAppendCloseFrame(t *testing.T) {
	long := strings.Repeat("r", 200)
	tests := []struct {
		name       string
		code       uint16
		reason     string
		wantReason string
	}{
		{"no reason", CloseNormal, "", ""},
		{"going away", CloseGoingAway, "bye", "bye"},
		{"too big", CloseMessageTooBig, CloseReasonTooBigMsg, CloseReasonTooBigMsg},
		{"pusher code", CodePongTimeout, "Pong reply not received in time", "Pong reply not received in time"},
		{"app code", CodeAppNotFound, "Application does not exist", "Application does not exist"},
		{"reason of 123 bytes fits", CloseNormal, long[:123], long[:123]},
		{"reason of 124 bytes is cut", CloseNormal, long[:124], long[:123]},
		{"long reason is cut", CloseInternalError, long, long[:123]},
		{"non-ascii reason that fits", CloseNormal, "café", "café"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := AppendCloseFrame(nil, tt.code, tt.reason)
			h, p := readFrame(t, out)
			if !h.Fin || h.OpCode != ws.OpClose || h.Masked {
				t.Errorf("header %+v, want FIN, close, unmasked", h)
			}
			if h.Length > 125 {
				t.Errorf("control frame payload is %d bytes, over 125", h.Length)
			}
			code, reason := ws.ParseCloseFrameData(p)
			if uint16(code) != tt.code {
				t.Errorf("code = %d, want %d", code, tt.code)
			}
			if reason != tt.wantReason {
				t.Errorf("reason = %q, want %q", reason, tt.wantReason)
			}
		})
	}
}

// Regression (fixed): AppendCloseFrame used to cut the reason at byte 123 without regard to UTF-8,
// so a long non-ASCII reason can end in half a rune. RFC 6455 §5.5.1 says the
// reason is UTF-8; receivers (browsers, gobwas/ws's CheckCloseFrameData,
// Autobahn case 7.5.1) fail the connection on an invalid one, and the client
// then reports 1006 instead of the code the server sent.
func TestAppendCloseFrameTruncatesOnRuneBoundary(t *testing.T) {
	reasons := []string{
		strings.Repeat("a", 122) + "é" + "tail",    // é spans bytes 122-123
		strings.Repeat("a", 121) + "€" + "tail",    // € spans bytes 121-123
		strings.Repeat("a", 120) + "😀" + "tail",    // 😀 spans bytes 120-123
		strings.Repeat("é", 100),                   // cut at an odd byte
		strings.Repeat("日本語", 20),                  // 3-byte runes
		strings.Repeat("a", 122) + "\u2028" + "xx", // 3-byte rune at the edge
	}
	for i, reason := range reasons {
		out := AppendCloseFrame(nil, CloseNormal, reason)
		_, p := readFrame(t, out)
		if len(p) > 125 {
			t.Errorf("case %d: payload %d bytes", i, len(p))
		}
		code, got := ws.ParseCloseFrameData(p)
		if !utf8.ValidString(got) {
			t.Errorf("case %d: close reason is not valid UTF-8: want a valid UTF-8 prefix of the %d-byte reason, at most 123 bytes, cut at a rune boundary; got %d bytes ending in %q", i, len(reason), len(got), got[len(got)-4:])
			continue
		}
		if err := ws.CheckCloseFrameData(code, got); err != nil {
			t.Errorf("case %d: ws.CheckCloseFrameData: %v", i, err)
		}
		if !strings.HasPrefix(reason, got) {
			t.Errorf("case %d: reason %q is not a prefix of %q", i, got, reason)
		}
	}
}

func TestValidCloseCode(t *testing.T) {
	for _, c := range []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4001, 4200, 4999} {
		if !ValidCloseCode(c) {
			t.Errorf("ValidCloseCode(%d) = false", c)
		}
	}
	for _, c := range []int{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535} {
		if ValidCloseCode(c) {
			t.Errorf("ValidCloseCode(%d) = true", c)
		}
	}
}

func TestAppendCloseFrameNeverSendsAForbiddenCode(t *testing.T) {
	for _, c := range []uint16{1005, 1006, 1015, 999, 0} {
		f := AppendCloseFrame(nil, c, "x")
		if got := int(f[2])<<8 | int(f[3]); got != CloseInternalError {
			t.Errorf("code %d sent as %d", c, got)
		}
	}
	f := AppendCloseFrame(nil, 4001, "bad \xff reason")
	if len(f) != 4 {
		t.Errorf("invalid UTF-8 reason kept: % x", f)
	}
}
