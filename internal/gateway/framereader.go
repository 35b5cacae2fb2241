package gateway

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/protocol"
)

// frameReader is the read half of a connection's WebSocket framing: it
// turns whatever the socket returned, however the network cut it, into
// whole messages and control frames. It knows nothing of Pusher.
//
// Its work is linear in the bytes received, however they trickle in. A
// frame that straddles reads is kept in a buffer allocated once, at the
// frame's full size, as soon as its header is known; later bytes are
// appended to it, never recopied. It holds at most one frame's header and
// payload, and at most maxMessage bytes of a fragmented message.
//
// Only the connection's poller goroutine touches it.
type frameReader struct {
	partial []byte     // an incomplete frame, header included, or nil
	frag    *fragments // the message being reassembled from fragments, or nil
}

// fragments is a fragmented message's payload so far. Few connections
// ever fragment, so it lives behind a pointer.
type fragments struct{ buf []byte }

// frameHandler receives what a frameReader finds. Each method returns
// false once the connection stops reading (it is closing): the reader then
// drops the rest.
type frameHandler interface {
	// onMessage gets a whole text or binary message, unmasked and valid
	// UTF-8. payload is only valid during the call.
	onMessage(payload []byte) bool
	// onPing gets a ping's payload (at most 125 bytes).
	onPing(payload []byte) bool
	onPong() bool
	// onClose gets a valid close code from the peer, or 1000 when its
	// close frame had none.
	onClose(code int) bool
}

// readError is why a connection must be closed: the close code to send,
// its reason, and the limit to count.
type readError struct {
	code   int
	reason string
	limit  metrics.Limit
}

func (e *readError) Error() string { return e.reason }

var (
	errFrameProtocol = &readError{protocol.CloseProtocolError, "Protocol error", metrics.LimitProtocolError}
	errFrameTooBig   = &readError{protocol.CloseMessageTooBig, protocol.CloseReasonTooBigMsg, metrics.LimitMessageSize}
	errFrameUTF8     = &readError{protocol.CloseInvalidPayload, "Invalid UTF-8", metrics.LimitInvalidUTF8}
)

// maxFrameHeader is the longest client frame header: 2 bytes, an 8-byte
// length and a 4-byte mask.
const maxFrameHeader = 14

// feed consumes data, handing every whole frame to h. It returns how many
// frames were whole, and an error when the connection must be closed;
// after an error the reader holds nothing.
func (r *frameReader) feed(data []byte, maxMessage int, h frameHandler) (frames int, err error) {
	if r.partial != nil {
		var done bool
		data, done, err = r.fill(data, maxMessage)
		if err != nil {
			r.reset()
			return 0, err
		}
		if !done {
			return 0, nil
		}
		frame := r.partial
		r.partial = nil
		hd, _ := parseFrameHeader(frame)
		frames++
		if more, err := r.handle(hd, frame[hd.size:], maxMessage, h); err != nil || !more {
			r.reset()
			return frames, err
		}
	}
	for len(data) > 0 {
		hd, err := parseFrameHeader(data)
		if err == errNeedMore {
			break
		}
		if err == nil {
			err = r.check(hd, maxMessage)
		}
		if err != nil {
			r.reset()
			return frames, err
		}
		end := int64(hd.size) + hd.length
		if int64(len(data)) < end {
			break
		}
		payload := data[hd.size:end]
		data = data[end:]
		frames++
		if more, err := r.handle(hd, payload, maxMessage, h); err != nil || !more {
			r.reset()
			return frames, err
		}
	}
	if len(data) > 0 {
		// Only a frame cut in two by the network costs a buffer, and only
		// until its rest arrives.
		r.partial = make([]byte, len(data), r.bufferSize(data))
		copy(r.partial, data)
	}
	return frames, nil
}

// fill moves bytes from data into the incomplete frame: first up to its
// header, then up to its end. It returns the bytes left over and whether
// the frame is now whole.
func (r *frameReader) fill(data []byte, maxMessage int) ([]byte, bool, error) {
	for {
		hd, err := parseFrameHeader(r.partial)
		if err == errNeedMore {
			if len(data) == 0 {
				return data, false, nil
			}
			// Never take more than the header: what follows may be
			// the next frame. Parse again after each step, so that a
			// bad header fails as soon as it would have whole.
			n := min(len(data), headerSize(r.partial)-len(r.partial))
			r.partial = append(r.partial, data[:n]...)
			data = data[n:]
			continue
		}
		if err == nil {
			err = r.check(hd, maxMessage)
		}
		if err != nil {
			return nil, false, err
		}
		end := hd.size + int(hd.length) // check bounded length by maxMessage
		if cap(r.partial) < end {
			grown := make([]byte, len(r.partial), end)
			copy(grown, r.partial)
			r.partial = grown
		}
		n := min(len(data), end-len(r.partial))
		r.partial = append(r.partial, data[:n]...)
		return data[n:], len(r.partial) == end, nil
	}
}

// bufferSize is the capacity to keep an incomplete frame in: the whole
// frame when its header is there (check has bounded it), else the most a
// header can take.
func (r *frameReader) bufferSize(data []byte) int {
	if hd, err := parseFrameHeader(data); err == nil {
		return hd.size + int(hd.length)
	}
	return maxFrameHeader
}

// headerSize is how long the header that b starts is: known from its
// second byte on, the longest possible before.
func headerSize(b []byte) int {
	if len(b) < 2 {
		return 2
	}
	switch b[1] & 0x7F {
	case 126:
		return 2 + 2 + 4
	case 127:
		return 2 + 8 + 4
	}
	return 2 + 4
}

// check bounds a data frame before any of its payload is kept: with the
// fragments before it, it must fit the message size limit.
func (r *frameReader) check(hd frameHeader, maxMessage int) error {
	switch hd.opcode {
	case protocol.OpText, protocol.OpBinary, protocol.OpContinuation:
		total := hd.length
		if hd.opcode == protocol.OpContinuation && r.frag != nil {
			total += int64(len(r.frag.buf))
		}
		if total > int64(maxMessage) {
			return errFrameTooBig
		}
	}
	return nil
}

// handle acts on one whole frame.
func (r *frameReader) handle(hd frameHeader, payload []byte, maxMessage int, h frameHandler) (bool, error) {
	unmask(payload, hd.mask)
	switch hd.opcode {
	case protocol.OpText, protocol.OpBinary:
		// Pusher says binary frames are not supported; Reverb reads them
		// as text. Reading them costs nothing and breaks no client, so
		// Resound follows Reverb, with a text frame's rules: what is
		// relayed to browsers must be UTF-8.
		if r.frag != nil {
			return false, errFrameProtocol // a new message inside a fragmented one
		}
		if !hd.fin {
			r.frag = &fragments{buf: append(make([]byte, 0, len(payload)), payload...)}
			return true, nil
		}
		if !utf8.Valid(payload) {
			return false, errFrameUTF8
		}
		return h.onMessage(payload), nil
	case protocol.OpContinuation:
		if r.frag == nil {
			return false, errFrameProtocol
		}
		r.frag.buf = append(r.frag.buf, payload...)
		if !hd.fin {
			return true, nil
		}
		msg := r.frag.buf
		r.frag = nil
		if !utf8.Valid(msg) {
			return false, errFrameUTF8
		}
		return h.onMessage(msg), nil
	case protocol.OpPing:
		return h.onPing(payload), nil
	case protocol.OpPong:
		return h.onPong(), nil
	case protocol.OpClose:
		switch {
		case len(payload) == 0:
			return h.onClose(protocol.CloseNormal), nil
		case len(payload) == 1:
			return false, errFrameProtocol
		}
		code := int(binary.BigEndian.Uint16(payload))
		if !protocol.ValidCloseCode(code) {
			return false, errFrameProtocol
		}
		if !utf8.Valid(payload[2:]) {
			return false, errFrameUTF8
		}
		return h.onClose(code), nil
	}
	return false, errFrameProtocol // parseFrameHeader lets no other opcode through
}

// reset drops whatever the reader holds.
func (r *frameReader) reset() {
	r.partial = nil
	r.frag = nil
}
