package loadgen

import (
	"bytes"
	"encoding/binary"
	"errors"

	"github.com/resoundhq/resound/protocol"
)

// maxFrame bounds one server frame; a bigger one is a protocol error here
// (Pusher events are at most a few KB).
const maxFrame = 4 << 20

var (
	errFrameTooBig   = errors.New("frame too big")
	errFrameMasked   = errors.New("server frame is masked")
	errFrameReserved = errors.New("reserved bits or opcode set")
	errControlFrame  = errors.New("bad control frame")
)

// frame is one parsed server frame. payload aliases the input buffer.
type frame struct {
	fin     bool
	op      byte
	payload []byte
}

// parseFrame parses one server frame at the start of b. It returns the
// number of bytes the frame takes, or 0 (and no error) when b holds only
// part of it. Server frames are never masked (RFC 6455 §5.1).
func parseFrame(b []byte) (frame, int, error) {
	if len(b) < 2 {
		return frame{}, 0, nil
	}
	b0, b1 := b[0], b[1]
	f := frame{fin: b0&0x80 != 0, op: b0 & 0x0F}
	if b0&0x70 != 0 || (f.op > protocol.OpBinary && f.op < protocol.OpClose) || f.op > protocol.OpPong {
		return frame{}, 0, errFrameReserved
	}
	if b1&0x80 != 0 {
		return frame{}, 0, errFrameMasked
	}
	n := uint64(b1 & 0x7F)
	hdr := 2
	switch n {
	case 126:
		if len(b) < 4 {
			return frame{}, 0, nil
		}
		n = uint64(binary.BigEndian.Uint16(b[2:]))
		hdr = 4
	case 127:
		if len(b) < 10 {
			return frame{}, 0, nil
		}
		n = binary.BigEndian.Uint64(b[2:])
		hdr = 10
	}
	if f.op >= protocol.OpClose && (n > 125 || !f.fin) {
		return frame{}, 0, errControlFrame
	}
	if n > maxFrame {
		return frame{}, 0, errFrameTooBig
	}
	end := hdr + int(n)
	if len(b) < end {
		return frame{}, 0, nil
	}
	f.payload = b[hdr:end]
	return f, end, nil
}

// frameLen returns the whole length of the frame starting at b, or 0 when
// the header itself is incomplete. It lets a caller size a buffer for a
// frame cut by the network.
func frameLen(b []byte) int {
	if len(b) < 2 {
		return 0
	}
	switch n := int(b[1] & 0x7F); n {
	case 126:
		if len(b) < 4 {
			return 0
		}
		return 4 + int(binary.BigEndian.Uint16(b[2:]))
	case 127:
		if len(b) < 10 {
			return 0
		}
		l := binary.BigEndian.Uint64(b[2:])
		if l > maxFrame {
			return maxFrame
		}
		return 10 + int(l)
	default:
		return 2 + n
	}
}

// appendClientFrame appends one final, masked client frame (clients must
// mask, RFC 6455 §5.3).
func appendClientFrame(dst []byte, op byte, payload []byte, mask [4]byte) []byte {
	n := len(payload)
	dst = append(dst, 0x80|op)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	for i := range payload {
		dst[start+i] ^= mask[i&3]
	}
	return dst
}

// The parts of a Pusher message the load generator looks at. It never
// decodes whole messages: it finds the event name and, for load events,
// two integers inside the data string.
var (
	keyEvent     = []byte(`"event":"`)
	keySeqEsc    = []byte(`seq\":`)
	keySeqPlain  = []byte(`"seq":`)
	keyTsEsc     = []byte(`ts\":`)
	keyTsPlain   = []byte(`"ts":`)
	keySentEsc   = []byte(`sent\":`)
	keySentPlain = []byte(`"sent":`)
	keyCode      = []byte(`code`)
	keyChannel   = []byte(`"channel":"`)
	keySocketID  = []byte(`socket_id`)
)

// onChannel reports whether the message's top-level "channel" is name
// (the first "channel" key: one inside the data string is escaped). The
// names the load generator compares need no escapes.
func onChannel(p []byte, name string) bool {
	i := bytes.Index(p, keyChannel)
	if i < 0 {
		return false
	}
	p = p[i+len(keyChannel):]
	return len(p) > len(name) && string(p[:len(name)]) == name && p[len(name)] == '"'
}

// socketIDOf returns the socket id of a pusher:connection_established
// (inside its data string, or in a data object), or "".
func socketIDOf(p []byte) string {
	i := bytes.Index(p, keySocketID)
	if i < 0 {
		return ""
	}
	p = p[i+len(keySocketID):]
	for len(p) > 0 && (p[0] == '"' || p[0] == '\\' || p[0] == ':' || p[0] == ' ') {
		p = p[1:]
	}
	j := 0
	for j < len(p) && (p[j] == '.' || (p[j] >= '0' && p[j] <= '9')) {
		j++
	}
	return string(p[:j])
}

// eventName returns the value of the message's "event" field. Event names
// the load generator cares about contain no escapes.
func eventName(p []byte) []byte {
	i := bytes.Index(p, keyEvent)
	if i < 0 {
		return nil
	}
	p = p[i+len(keyEvent):]
	j := bytes.IndexByte(p, '"')
	if j < 0 {
		return nil
	}
	return p[:j]
}

// intAfter parses the decimal integer after the first occurrence of key
// (esc, the form inside a JSON-encoded data string, or plain, for servers
// that send data as an object).
func intAfter(p, esc, plain []byte) (int64, bool) {
	i := bytes.Index(p, esc)
	if i >= 0 {
		i += len(esc)
	} else if i = bytes.Index(p, plain); i >= 0 {
		i += len(plain)
	} else {
		return 0, false
	}
	for i < len(p) && p[i] == ' ' {
		i++
	}
	var v int64
	start := i
	for i < len(p) && p[i] >= '0' && p[i] <= '9' && i-start < 19 {
		v = v*10 + int64(p[i]-'0')
		i++
	}
	return v, i > start
}

// loadEvent extracts seq and ts from a load event's payload.
func loadEvent(p []byte) (seq, ts int64, ok bool) {
	seq, ok1 := intAfter(p, keySeqEsc, keySeqPlain)
	ts, ok2 := intAfter(p, keyTsEsc, keyTsPlain)
	return seq, ts, ok1 && ok2
}

// errorCode extracts the code of a pusher:error, or 0.
func errorCode(p []byte) int {
	i := bytes.Index(p, keyCode)
	if i < 0 {
		return 0
	}
	p = p[i+len(keyCode):]
	for len(p) > 0 && (p[0] < '0' || p[0] > '9') {
		if p[0] != '"' && p[0] != '\\' && p[0] != ':' && p[0] != ' ' {
			return 0
		}
		p = p[1:]
	}
	v, _ := intAfter(p, nil, nil)
	return int(v)
}
