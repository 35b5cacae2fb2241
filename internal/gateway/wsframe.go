package gateway

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/protocol"
)

// frameHeader is a parsed client frame header (RFC 6455 §5.2).
type frameHeader struct {
	fin    bool
	opcode byte
	mask   [4]byte
	length int64
	size   int // bytes the header itself takes
}

var (
	errNeedMore = errors.New("need more bytes")
	// errProtocol is a frame that breaks RFC 6455: the connection is
	// closed with 1002.
	errProtocol error = errFrameProtocol
)

// parseFrameHeader reads a client frame header from b. It parses from a
// byte slice, not a reader, because the reactor reads whatever the socket
// holds into one shared buffer and frames can straddle reads.
func parseFrameHeader(b []byte) (frameHeader, error) {
	if len(b) < 2 {
		return frameHeader{}, errNeedMore
	}
	h := frameHeader{fin: b[0]&0x80 != 0, opcode: b[0] & 0x0F}
	if b[0]&0x70 != 0 {
		return h, errProtocol // no extension was negotiated, so RSV must be 0
	}
	if b[1]&0x80 == 0 {
		return h, errProtocol // clients must mask (§5.1)
	}
	switch h.opcode {
	case protocol.OpContinuation, protocol.OpText, protocol.OpBinary:
	case protocol.OpClose, protocol.OpPing, protocol.OpPong:
		if !h.fin || b[1]&0x7F > 125 {
			return h, errProtocol // control frames are short and whole (§5.5)
		}
	default:
		return h, errProtocol
	}
	n := int64(b[1] & 0x7F)
	off := 2
	switch n {
	case 126:
		if len(b) < 4 {
			return h, errNeedMore
		}
		n = int64(binary.BigEndian.Uint16(b[2:4]))
		off = 4
	case 127:
		if len(b) < 10 {
			return h, errNeedMore
		}
		u := binary.BigEndian.Uint64(b[2:10])
		if u > 1<<62 {
			return h, errProtocol
		}
		n = int64(u)
		off = 10
	}
	if len(b) < off+4 {
		return h, errNeedMore
	}
	copy(h.mask[:], b[off:off+4])
	h.length = n
	h.size = off + 4
	return h, nil
}

// unmask XORs payload with the frame's mask in place, with gobwas's
// word-at-a-time cipher.
func unmask(payload []byte, mask [4]byte) { ws.Cipher(payload, mask, 0) }
