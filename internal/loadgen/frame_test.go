package loadgen

import (
	"bytes"
	"io"
	"testing"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/protocol"
)

func TestParseFrameWholeAndCut(t *testing.T) {
	payloads := [][]byte{nil, []byte("x"), bytes.Repeat([]byte("a"), 125), bytes.Repeat([]byte("b"), 126),
		bytes.Repeat([]byte("c"), 65535), bytes.Repeat([]byte("d"), 65536)}
	var stream []byte
	for _, p := range payloads {
		stream = protocol.AppendTextFrame(stream, p)
	}
	stream = protocol.AppendFrame(stream, protocol.OpPing, []byte("hi"))
	stream = protocol.AppendCloseFrame(stream, 4200, "bye")

	// Parse the stream fed in pieces of every size, carrying the rest over
	// as the poller does.
	for _, step := range []int{1, 2, 3, 7, 100, 4096, len(stream)} {
		var got []frame
		var pending []byte
		for off := 0; off < len(stream); off += step {
			pending = append(pending, stream[off:min(off+step, len(stream))]...)
			for {
				f, n, err := parseFrame(pending)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if n == 0 {
					if fl := frameLen(pending); fl != 0 && fl <= len(pending) {
						t.Fatalf("frameLen %d but frame incomplete at %d", fl, len(pending))
					}
					break
				}
				f.payload = append([]byte(nil), f.payload...)
				got = append(got, f)
				pending = pending[n:]
			}
		}
		if len(pending) != 0 || len(got) != len(payloads)+2 {
			t.Fatalf("step %d: %d frames, %d bytes left", step, len(got), len(pending))
		}
		for i, p := range payloads {
			if got[i].op != protocol.OpText || !got[i].fin || !bytes.Equal(got[i].payload, p) {
				t.Fatalf("step %d frame %d: op %d len %d", step, i, got[i].op, len(got[i].payload))
			}
		}
		if got[len(payloads)].op != protocol.OpPing || got[len(payloads)+1].op != protocol.OpClose ||
			!bytes.Equal(got[len(payloads)+1].payload, []byte{0x10, 0x68, 'b', 'y', 'e'}) {
			t.Fatalf("control frames %+v", got[len(payloads):])
		}
	}
}

func TestParseFrameRejects(t *testing.T) {
	masked := ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte("x"))))
	tests := map[string][]byte{
		"masked":          masked,
		"reserved bit":    {0x80 | 0x40 | 0x1, 0},
		"reserved op":     {0x80 | 0x3, 0},
		"long control":    append([]byte{0x89, 126, 0, 126}, make([]byte, 126)...),
		"fragmented ping": {0x09, 0},
		"too big":         {0x81, 127, 0, 0, 0, 0, 0x7f, 0, 0, 0},
	}
	for name, b := range tests {
		if _, _, err := parseFrame(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClientFramesAreMaskedAndValid(t *testing.T) {
	for _, n := range []int{0, 10, 125, 126, 1000, 70000} {
		payload := bytes.Repeat([]byte("z"), n)
		b := appendClientFrame(nil, protocol.OpText, payload, [4]byte{1, 2, 3, 4})
		r := bytes.NewReader(b)
		h, err := ws.ReadHeader(r)
		if err != nil {
			t.Fatalf("%d: %v", n, err)
		}
		if !h.Masked || !h.Fin || h.OpCode != ws.OpText || h.Mask != [4]byte{1, 2, 3, 4} || h.Length != int64(n) {
			t.Fatalf("%d: header %+v", n, h)
		}
		got := make([]byte, h.Length)
		if _, err := io.ReadFull(r, got); err != nil || r.Len() != 0 {
			t.Fatalf("%d: payload: %v, %d left", n, err, r.Len())
		}
		ws.Cipher(got, h.Mask, 0)
		if !bytes.Equal(got, payload) {
			t.Fatalf("%d: payload differs", n)
		}
	}
}

func TestPusherFieldExtraction(t *testing.T) {
	ev := protocol.AppendChannelEvent(nil, "lg", "lg-x-3", `{"seq":42,"ts":1700000000123456789}`, "")
	if string(eventName(ev)) != "lg" {
		t.Fatalf("event %q", eventName(ev))
	}
	seq, ts, ok := loadEvent(ev)
	if !ok || seq != 42 || ts != 1700000000123456789 {
		t.Fatalf("loadEvent = %d %d %v from %s", seq, ts, ok, ev)
	}
	// Data as an object, keys in another order (other servers).
	seq, ts, ok = loadEvent([]byte(`{"data":{"ts":5,"seq":7},"event":"lg","channel":"c"}`))
	if !ok || seq != 7 || ts != 5 {
		t.Fatalf("object data: %d %d %v", seq, ts, ok)
	}
	if _, _, ok := loadEvent([]byte(`{"event":"lg","data":"{}"}`)); ok {
		t.Fatal("found fields in empty data")
	}
	if string(eventName(protocol.MessagePing)) != protocol.EventPing {
		t.Fatal("ping")
	}
	errMsg := protocol.AppendError(nil, 4004, "over quota")
	if string(eventName(errMsg)) != protocol.EventError || errorCode(errMsg) != 4004 {
		t.Fatalf("error %s: %q %d", errMsg, eventName(errMsg), errorCode(errMsg))
	}
	if errorCode([]byte(`{"event":"pusher:error","data":{"code":4201,"message":"x"}}`)) != 4201 {
		t.Fatal("object error code")
	}
}
