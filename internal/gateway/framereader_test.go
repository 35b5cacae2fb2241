package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// recorder is a frameHandler that writes down what it is handed.
type recorder struct {
	events []string
	stop   bool // answer false to stop reading
}

func (r *recorder) onMessage(p []byte) bool {
	r.events = append(r.events, "msg:"+string(p))
	return !r.stop
}
func (r *recorder) onPing(p []byte) bool { r.events = append(r.events, "ping:"+string(p)); return true }
func (r *recorder) onPong() bool         { r.events = append(r.events, "pong"); return true }
func (r *recorder) onClose(code int) bool {
	r.events = append(r.events, fmt.Sprintf("close:%d", code))
	return false
}

// clientFrame encodes one masked frame as a client sends it.
func clientFrame(t testing.TB, fin bool, op ws.OpCode, payload []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	h := ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: testMask, Length: int64(len(payload))}
	if err := ws.WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	p := append([]byte(nil), payload...)
	ws.Cipher(p, testMask, 0)
	buf.Write(p)
	return buf.Bytes()
}

func closePayload(code int, reason string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(code))
	return append(b, reason...)
}

// feedAll feeds the stream cut into pieces of at most step bytes, and
// returns what the handler saw and the first error.
func feedAll(stream []byte, step, maxMessage int) ([]string, error) {
	var r frameReader
	rec := &recorder{}
	for len(stream) > 0 {
		n := min(step, len(stream))
		chunk := append([]byte(nil), stream[:n]...) // the poller's buffer is reused
		stream = stream[n:]
		if _, err := r.feed(chunk, maxMessage, rec); err != nil {
			return rec.events, err
		}
		if len(rec.events) > 0 && strings.HasPrefix(rec.events[len(rec.events)-1], "close:") {
			break
		}
	}
	return rec.events, nil
}

func TestFrameReaderSameWhateverTheCuts(t *testing.T) {
	big := bytes.Repeat([]byte("é"), 40000) // 80,000 bytes, 2-byte runes that cuts split
	var stream []byte
	stream = append(stream, clientFrame(t, true, ws.OpText, []byte(`{"event":"pusher:ping"}`))...)
	stream = append(stream, clientFrame(t, true, ws.OpPing, []byte("hi"))...)
	stream = append(stream, clientFrame(t, false, ws.OpText, big[:33333])...)
	stream = append(stream, clientFrame(t, true, ws.OpPong, nil)...) // control frames may sit between fragments
	stream = append(stream, clientFrame(t, true, ws.OpContinuation, big[33333:])...)
	stream = append(stream, clientFrame(t, true, ws.OpBinary, []byte("bin"))...)
	stream = append(stream, clientFrame(t, true, ws.OpText, nil)...)
	stream = append(stream, clientFrame(t, true, ws.OpClose, closePayload(4000, "bye"))...)
	want := []string{`msg:{"event":"pusher:ping"}`, "ping:hi", "pong", "msg:" + string(big), "msg:bin", "msg:", "close:4000"}
	for _, step := range []int{1, 2, 3, 7, 13, 14, 100, 4096, 65536, len(stream)} {
		got, err := feedAll(stream, step, 100000)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: got %d events %.80q, want %d", step, len(got), got, len(want))
		}
	}
}

// A frame that trickles in a byte at a time costs one buffer, not one per
// read: reassembly is linear in its size, not quadratic.
func TestFrameReaderTrickleAllocatesOnce(t *testing.T) {
	frame := clientFrame(t, true, ws.OpText, bytes.Repeat([]byte("a"), 60000))
	var r frameReader
	rec := &recorder{}
	trickle := func() {
		rec.events = rec.events[:0]
		for i := range frame {
			if _, err := r.feed(frame[i:i+1], 100000, rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	// AllocsPerRun counts the whole process's allocations, and goroutines
	// other tests left behind (the portable reactor's readers winding
	// down) can allocate meanwhile: they only add, so the least of a few
	// measurements is the frame reader's.
	allocs := testing.AllocsPerRun(3, trickle)
	for range 4 {
		allocs = min(allocs, testing.AllocsPerRun(3, trickle))
	}
	if len(rec.events) != 1 {
		t.Fatalf("events: %d", len(rec.events))
	}
	// The header's buffer, the frame's buffer and the recorder's string.
	if allocs > 4 {
		t.Fatalf("%v allocations to reassemble a trickled frame, want at most 4", allocs)
	}
}

func TestFrameReaderErrors(t *testing.T) {
	huge := []byte{0x81, 0xFF, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4} // text, masked, length 2^62
	cases := []struct {
		name   string
		stream []byte
		want   *readError
	}{
		{"continuation without a start", clientFrame(t, true, ws.OpContinuation, []byte("x")), errFrameProtocol},
		{"text inside a fragmented message", append(clientFrame(t, false, ws.OpText, []byte("a")), clientFrame(t, true, ws.OpText, []byte("b"))...), errFrameProtocol},
		{"invalid UTF-8", clientFrame(t, true, ws.OpText, []byte{'{', 0xFF, 0xFE, '}'}), errFrameUTF8},
		{"invalid UTF-8 in a binary frame", clientFrame(t, true, ws.OpBinary, []byte{0xC0}), errFrameUTF8},
		{"invalid UTF-8 across fragments", append(clientFrame(t, false, ws.OpText, []byte{0xE2, 0x82}), clientFrame(t, true, ws.OpContinuation, []byte{'x'})...), errFrameUTF8},
		{"too big", clientFrame(t, true, ws.OpText, bytes.Repeat([]byte("a"), 101)), errFrameTooBig},
		{"fragments too big", append(clientFrame(t, false, ws.OpText, bytes.Repeat([]byte("a"), 60)), clientFrame(t, true, ws.OpContinuation, bytes.Repeat([]byte("a"), 41))...), errFrameTooBig},
		{"announced 2^62 bytes", huge, errFrameTooBig},
		{"one-byte close", clientFrame(t, true, ws.OpClose, []byte{3}), errFrameProtocol},
		{"close 1005", clientFrame(t, true, ws.OpClose, closePayload(1005, "")), errFrameProtocol},
		{"close 1006", clientFrame(t, true, ws.OpClose, closePayload(1006, "")), errFrameProtocol},
		{"close 1015", clientFrame(t, true, ws.OpClose, closePayload(1015, "")), errFrameProtocol},
		{"close 999", clientFrame(t, true, ws.OpClose, closePayload(999, "")), errFrameProtocol},
		{"close 2999", clientFrame(t, true, ws.OpClose, closePayload(2999, "")), errFrameProtocol},
		{"close 5000", clientFrame(t, true, ws.OpClose, closePayload(5000, "")), errFrameProtocol},
		{"close reason not UTF-8", clientFrame(t, true, ws.OpClose, closePayload(1000, "\xff")), errFrameUTF8},
		{"unmasked", []byte{0x81, 0x01, 'a'}, errFrameProtocol},
		{"reserved opcode", []byte{0x83, 0x80, 1, 2, 3, 4}, errFrameProtocol},
	}
	for _, tc := range cases {
		for _, step := range []int{1, len(tc.stream)} {
			t.Run(fmt.Sprintf("%s/step%d", tc.name, step), func(t *testing.T) {
				var r frameReader
				_, err := feedAll(tc.stream, step, 100)
				if err != tc.want {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if r.partial != nil || r.frag != nil {
					t.Fatal("reader holds bytes after an error")
				}
			})
		}
	}
}

func TestFrameReaderCloseCodes(t *testing.T) {
	for _, tc := range []struct {
		payload []byte
		want    string
	}{
		{nil, "close:1000"},
		{closePayload(1000, "bye"), "close:1000"},
		{closePayload(1001, ""), "close:1001"},
		{closePayload(4200, "é"), "close:4200"},
		{closePayload(3000, ""), "close:3000"},
	} {
		got, err := feedAll(clientFrame(t, true, ws.OpClose, tc.payload), 1000, 100)
		if err != nil || len(got) != 1 || got[0] != tc.want {
			t.Errorf("payload % x: got %v %v, want %s", tc.payload, got, err, tc.want)
		}
	}
}

// A handler that stops reading (the connection closes) drops the rest.
func TestFrameReaderStopsWhenTheHandlerDoes(t *testing.T) {
	stream := append(clientFrame(t, true, ws.OpText, []byte("a")), clientFrame(t, true, ws.OpText, []byte("b"))...)
	var r frameReader
	rec := &recorder{stop: true}
	n, err := r.feed(stream, 100, rec)
	if err != nil || n != 1 || len(rec.events) != 1 || r.partial != nil {
		t.Fatalf("n=%d err=%v events=%v partial=%v", n, err, rec.events, r.partial)
	}
}

// FuzzFrameReader feeds arbitrary bytes cut at an arbitrary step: the
// reader never panics, never holds more than one frame of the size limit,
// and sees the same frames however the bytes are cut.
func FuzzFrameReader(f *testing.F) {
	f.Add(clientFrame(f, true, ws.OpText, []byte(`{"event":"pusher:subscribe","data":{"channel":"a"}}`)), uint8(1))
	f.Add(append(clientFrame(f, false, ws.OpText, []byte("ab")), clientFrame(f, true, ws.OpContinuation, []byte("cd"))...), uint8(3))
	f.Add(clientFrame(f, true, ws.OpClose, closePayload(1000, "x")), uint8(2))
	f.Add(clientFrame(f, true, ws.OpPing, []byte("p")), uint8(5))
	f.Add([]byte{0x81, 0xFE, 0x00, 0x7E, 1, 2, 3, 4}, uint8(4))
	f.Add([]byte{0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0x01, 0, 1, 2, 3, 4}, uint8(7))
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		const maxMessage = 512
		whole, errWhole := feedAll(stream, len(stream)+1, maxMessage)
		cut, errCut := feedAll(stream, int(step)+1, maxMessage)
		if errWhole != errCut || !reflect.DeepEqual(whole, cut) {
			t.Fatalf("whole: %q %v; cut by %d: %q %v", whole, errWhole, int(step)+1, cut, errCut)
		}
		var r frameReader
		for len(stream) > 0 {
			n := min(int(step)+1, len(stream))
			if _, err := r.feed(append([]byte(nil), stream[:n]...), maxMessage, &recorder{}); err != nil {
				break
			}
			stream = stream[n:]
			if cap(r.partial) > maxFrameHeader+maxMessage {
				t.Fatalf("holds %d bytes", cap(r.partial))
			}
		}
	})
}
